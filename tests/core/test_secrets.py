"""The API token in the OS keyring (``core.secrets``): a real in-memory keyring backend stands in for the
OS service (set with ``keyring.set_keyring``, as the OS's would be), and keyring's own "no backend" for a
machine without one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from keyring.backends import fail

from pacs_mask_desktop.core import secrets
from pacs_mask_desktop.core.secrets import NO_KEYRING_NOTICE, SERVICE, TokenStore
from tests.memory_keyring import MemoryKeyring, RefusingKeyring, installed

URL = "https://masks.clinic.example"


@pytest.fixture
def os_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    """The process's keyring is an in-memory one for this test; the session store starts empty."""
    monkeypatch.setattr(secrets, "_session", {})
    with installed(MemoryKeyring()) as backend:
        assert isinstance(backend, MemoryKeyring)
        yield backend


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine without any keyring backend (keyring's own stand-in, as on headless Linux)."""
    monkeypatch.setattr(secrets, "_session", {})
    with installed(fail.Keyring()):
        yield


def test_a_saved_token_lives_in_the_keyring_per_server(os_keyring: MemoryKeyring) -> None:
    store = TokenStore()
    assert store.available()
    assert "system keyring" in store.where()
    assert store.save(URL, "tok-1") is None
    assert store.save("https://other.example", "tok-2") is None
    assert os_keyring.items == {(SERVICE, URL): "tok-1", (SERVICE, "https://other.example"): "tok-2"}
    assert TokenStore().get(URL) == "tok-1"
    assert store.save(URL, "") is None  # an empty token forgets it
    assert store.get(URL) is None
    store.forget(URL)  # forgetting twice is fine


def test_without_a_keyring_the_token_is_kept_only_for_this_session(no_keyring: None) -> None:
    store = TokenStore()
    assert not store.available()
    assert store.where() == NO_KEYRING_NOTICE
    assert store.save(URL, "tok-1") == NO_KEYRING_NOTICE
    assert "only for this session" in NO_KEYRING_NOTICE
    assert "PACS_MASK_TOKEN" in NO_KEYRING_NOTICE
    assert TokenStore().get(URL) == "tok-1"  # this process still has it
    secrets._session.clear()  # what the next start sees
    assert TokenStore().get(URL) is None


def test_a_keyring_that_refuses_keeps_the_token_for_this_session_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secrets, "_session", {})
    store = TokenStore(RefusingKeyring())
    notice = store.save(URL, "tok-1")
    assert notice is not None
    assert "the keyring is locked" in notice
    assert "only for this session" in notice
    assert store.get(URL) == "tok-1"
