"""The API token in the OS keyring (``core.secrets``): a real in-memory keyring backend stands in for the
OS service (set with ``keyring.set_keyring``, as the OS's would be), and keyring's own "no backend" for a
machine without one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from keyring.backends import fail

from pacs_mask_desktop.core import secrets
from pacs_mask_desktop.core.secrets import (
    NO_KEYRING_NOTICE,
    PACS_NO_KEYRING_NOTICE,
    PACS_SERVICE,
    SERVICE,
    TokenStore,
    pacs_password_store,
)
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


def test_a_pacs_password_and_a_token_at_the_same_url_do_not_overwrite_each_other(
    os_keyring: MemoryKeyring,
) -> None:
    assert TokenStore().save(URL, "api-token") is None
    assert pacs_password_store().save(URL, "pacs-password") is None
    assert os_keyring.items == {(SERVICE, URL): "api-token", (PACS_SERVICE, URL): "pacs-password"}
    assert TokenStore().get(URL) == "api-token"
    assert pacs_password_store().get(URL) == "pacs-password"
    pacs_password_store().forget(URL)
    assert TokenStore().get(URL) == "api-token"  # forgetting the password leaves the token


def test_a_pacs_password_saved_by_an_earlier_version_is_still_found_and_copied(
    os_keyring: MemoryKeyring,
) -> None:
    pacs_url = "https://pacs.clinic.example/dicom-web"
    os_keyring.set_password(SERVICE, pacs_url, "old-password")  # where earlier versions kept it
    assert pacs_password_store().get(pacs_url) == "old-password"
    assert os_keyring.items[(PACS_SERVICE, pacs_url)] == "old-password"
    # the old entry stays: under SERVICE it could equally be the token of a server at that URL
    assert os_keyring.items[(SERVICE, pacs_url)] == "old-password"


def test_without_a_keyring_the_pacs_password_notice_names_the_password(no_keyring: None) -> None:
    store = pacs_password_store()
    assert store.save(URL, "pacs-password") == PACS_NO_KEYRING_NOTICE
    assert "PACS password" in PACS_NO_KEYRING_NOTICE
    assert "PACS_MASK_DICOMWEB_PASSWORD" in PACS_NO_KEYRING_NOTICE
    assert store.get(URL) == "pacs-password"
    assert TokenStore().get(URL) is None  # the session store keeps the two apart too
