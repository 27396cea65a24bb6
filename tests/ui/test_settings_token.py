"""The desktop app's token never sits in the settings file: it goes to the OS keyring (a real in-memory
keyring backend stands in for the OS service), a plain-text token of an earlier version is moved there
once, and without any keyring it is kept for this session only, with a message saying so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from keyring.backends import fail
from PySide6.QtWidgets import QLabel

from pacs_mask_desktop.core import secrets
from pacs_mask_desktop.core.embedded import EmbeddedServer
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.core.secrets import NO_KEYRING_NOTICE, SERVICE
from pacs_mask_desktop.ui.settings import (
    ServerConfig,
    SettingsDialog,
    app_settings,
    load_server_config,
    save_server_config,
)
from tests.memory_keyring import MemoryKeyring, installed

URL = "https://masks.clinic.example"
KEYS = ("server/url", "server/token", "network/give_up_after_seconds")


@pytest.fixture
def settings_file(ui_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The session's settings file (a temp dir, set up with the UI server); these keys restored after."""
    monkeypatch.delenv("PACS_MASK_SERVER", raising=False)
    monkeypatch.delenv("PACS_MASK_TOKEN", raising=False)
    monkeypatch.setattr(secrets, "_session", {})
    settings = app_settings()
    saved = {key: settings.value(key) for key in KEYS}
    yield Path(settings.fileName())
    settings = app_settings()
    for key, value in saved.items():
        if value is None:
            settings.remove(key)
        else:
            settings.setValue(key, value)
    settings.sync()


def _write_plain_token(token: str) -> None:
    """What an earlier version of the app saved."""
    settings = app_settings()
    settings.setValue("server/url", URL)
    settings.setValue("server/token", token)
    settings.sync()


def test_a_plain_text_token_is_moved_into_the_keyring_once(settings_file: Path) -> None:
    _write_plain_token("plain-secret-1")
    assert "plain-secret-1" in settings_file.read_text(encoding="utf-8")
    with installed(MemoryKeyring()) as backend:
        assert isinstance(backend, MemoryKeyring)
        config = load_server_config()
        assert (config.url, config.token, config.notice) == (URL, "plain-secret-1", "")
        assert backend.items == {(SERVICE, URL): "plain-secret-1"}
        assert "plain-secret-1" not in settings_file.read_text(encoding="utf-8")
        assert app_settings().value("server/token") is None
        again = load_server_config()  # the next start reads it from the keyring
        assert again.token == "plain-secret-1"


def test_without_a_keyring_the_old_token_leaves_the_file_and_is_kept_for_this_session(
    settings_file: Path,
) -> None:
    _write_plain_token("plain-secret-2")
    with installed(fail.Keyring()):
        config = load_server_config()
        assert config.token == "plain-secret-2"  # this session still connects
        assert config.notice == NO_KEYRING_NOTICE  # and the user is told what happens
        assert "plain-secret-2" not in settings_file.read_text(encoding="utf-8")
        secrets._session.clear()  # the next start
        assert load_server_config().token == ""


def test_the_settings_dialog_saves_the_token_to_the_keyring_and_says_where(
    qtbot: Any, settings_file: Path
) -> None:
    with installed(MemoryKeyring()) as backend:
        assert isinstance(backend, MemoryKeyring)
        dialog = SettingsDialog(ServerConfig(url=URL, token=""))
        qtbot.addWidget(dialog)
        notes = " ".join(label.text() for label in dialog.findChildren(QLabel))
        assert "system keyring" in notes
        dialog.token.setText("typed-secret")
        dialog.give_up.setValue(45)
        config = dialog.config()
        assert config.policy == RetryPolicy(45.0)
        assert save_server_config(config) is None
        assert backend.items == {(SERVICE, URL): "typed-secret"}
        assert "typed-secret" not in settings_file.read_text(encoding="utf-8")
        loaded = load_server_config()
        assert (loaded.token, loaded.policy) == ("typed-secret", RetryPolicy(45.0))
    with installed(fail.Keyring()):
        dialog = SettingsDialog(ServerConfig(url=URL, token=""))
        qtbot.addWidget(dialog)
        assert NO_KEYRING_NOTICE in " ".join(label.text() for label in dialog.findChildren(QLabel))
        assert save_server_config(ServerConfig(url=URL, token="typed-secret")) == NO_KEYRING_NOTICE
        assert "typed-secret" not in settings_file.read_text(encoding="utf-8")
