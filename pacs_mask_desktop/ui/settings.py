"""Persistent desktop settings (QSettings, INI format) and the Settings dialog.

Kept: the server URL and token (an empty URL means the bundled server on this machine), the window
layout, and for each upload started here the files it came from, so an upload interrupted by a crash
can be resumed with the same masks and series.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

ORGANIZATION = "pacs-mask-upload"
APPLICATION = "desktop"


def app_settings() -> QSettings:
    """The app's settings store (an INI file in the user's config dir on every platform)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Which server to use: ``url`` empty = start the bundled server; ``token`` empty = the data dir's."""

    url: str = ""
    token: str = ""

    @property
    def embedded(self) -> bool:
        """True when the bundled server should be started."""
        return not self.url


def load_server_config(url: str | None = None, token: str | None = None) -> ServerConfig:
    """Command-line values first, then ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN``, then the saved settings."""
    settings = app_settings()
    saved_url = str(settings.value("server/url", "") or "")
    saved_token = str(settings.value("server/token", "") or "")
    chosen_url = url if url is not None else (os.environ.get("PACS_MASK_SERVER") or saved_url)
    chosen_token = token if token is not None else (os.environ.get("PACS_MASK_TOKEN") or saved_token)
    return ServerConfig(url=chosen_url.strip().rstrip("/"), token=chosen_token.strip())


def save_server_config(config: ServerConfig) -> None:
    """Remember the server URL and token."""
    settings = app_settings()
    settings.setValue("server/url", config.url)
    settings.setValue("server/token", config.token)
    settings.sync()


def remember_upload_source(group_id: str, info: dict[str, Any]) -> None:
    """Record where an upload's masks and series are, for resuming it after a crash."""
    settings = app_settings()
    settings.setValue(f"uploads/{group_id}", json.dumps(info))
    settings.sync()


def upload_source(group_id: str) -> dict[str, Any] | None:
    """What :func:`remember_upload_source` stored for ``group_id``."""
    raw = app_settings().value(f"uploads/{group_id}")
    if not raw:
        return None
    try:
        value = json.loads(str(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def forget_upload_source(group_id: str) -> None:
    """Drop the resume record of a finished or abandoned upload."""
    settings = app_settings()
    settings.remove(f"uploads/{group_id}")
    settings.sync()


class SettingsDialog(QDialog):
    """Server URL and token; leaving the URL empty uses the bundled server."""

    def __init__(self, config: ServerConfig, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(520)
        self.url = QLineEdit(config.url)
        self.url.setObjectName("serverUrl")
        self.url.setPlaceholderText("empty: the bundled server on this computer")
        self.token = QLineEdit(config.token)
        self.token.setObjectName("serverToken")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("empty: the bundled server's admin token")
        form = QFormLayout()
        form.addRow("Server URL", self.url)
        form.addRow("API token", self.token)
        note = QLabel(
            "With an empty URL the app starts its bundled server (SQLite and files in your user data "
            "folder). For a clinic server, enter its URL (e.g. https://pacs-masks.example.org) and the "
            "token an administrator created for you. Changes reconnect at once."
        )
        note.setWordWrap(True)
        note.setObjectName("hint")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def config(self) -> ServerConfig:
        """What the dialog holds now."""
        return ServerConfig(url=self.url.text().strip().rstrip("/"), token=self.token.text().strip())
