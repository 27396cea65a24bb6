"""Persistent desktop settings (QSettings, INI format) and the Settings dialog.

Kept: the server URL (an empty URL means the bundled server on this machine), how long an upload
waits for an unreachable server, the window layout, and for each upload started here the files it came
from, so an upload interrupted by a crash can be resumed with the same masks and series. The API token
is not kept here: it goes to the OS keyring (``core.secrets``); a token an earlier version wrote into
this file is moved there once and removed from the file. This workstation's PACS settings are kept
too: a URL overriding the one the server names, a user name and the DICOM cache size; the PACS
password goes to the keyring under its own service and the PACS URL (where ``pacs-mask`` finds it too).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.pacs_open import DEFAULT_CACHE_MB, PacsSettings
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.core.secrets import TokenStore, pacs_password_store

log = logging.getLogger(__name__)

ORGANIZATION = "pacs-mask-upload"
APPLICATION = "desktop"


def app_settings() -> QSettings:
    """The app's settings store (an INI file in the user's config dir on every platform)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Which server to use: ``url`` empty = start the bundled server; ``token`` empty = the data dir's.

    ``policy`` is how long uploads wait for an unreachable server; ``notice`` a message for the user
    about where the token is kept (empty when all is well).
    """

    url: str = ""
    token: str = ""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    notice: str = field(default="", compare=False)

    @property
    def embedded(self) -> bool:
        """True when the bundled server should be started."""
        return not self.url


def _saved_policy(settings: QSettings) -> RetryPolicy:
    raw = settings.value("network/give_up_after_seconds")
    try:
        return RetryPolicy(float(raw)) if raw not in (None, "") else RetryPolicy()
    except (TypeError, ValueError):
        log.warning("ignoring network/give_up_after_seconds=%r in the settings: not a positive number", raw)
        return RetryPolicy()


def _migrate_plain_token(settings: QSettings, url: str, store: TokenStore) -> str:
    """Move a token an earlier version saved in plain text into the keyring, once; returns a notice
    for the user (empty when it is in the keyring or there was none)."""
    plain = str(settings.value("server/token", "") or "").strip()
    if not plain:
        return ""
    notice = store.save(url, plain) or ""
    settings.remove("server/token")  # out of the file either way: never again in plain text
    settings.sync()
    where = "kept for this session only" if notice else "now in the keyring"
    log.info("moved the saved API token out of the settings file (%s)", where)
    return notice


def load_server_config(
    url: str | None = None, token: str | None = None, *, store: TokenStore | None = None
) -> ServerConfig:
    """Command-line values first, then ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN``, then the saved settings.

    The saved token comes from the OS keyring; one an earlier version left in the settings file is
    moved there first (see ``core.secrets`` for what happens where no keyring exists).
    """
    store = store or TokenStore()
    settings = app_settings()
    saved_url = str(settings.value("server/url", "") or "").strip().rstrip("/")
    notice = _migrate_plain_token(settings, saved_url, store)
    chosen_url = url if url is not None else (os.environ.get("PACS_MASK_SERVER") or saved_url)
    chosen_url = chosen_url.strip().rstrip("/")
    if token is not None:
        chosen_token = token
    else:  # the environment, then the token kept for the chosen server (in the keyring or this session)
        chosen_token = os.environ.get("PACS_MASK_TOKEN") or store.get(chosen_url) or ""
    return ServerConfig(
        url=chosen_url,
        token=chosen_token.strip(),
        policy=_saved_policy(settings),
        notice=notice,
    )


def save_server_config(config: ServerConfig, *, store: TokenStore | None = None) -> str | None:
    """Remember the server URL and retry budget in the settings file and the token in the OS keyring.

    Returns ``None``, or a notice for the user when the token could be kept only for this session.
    """
    store = store or TokenStore()
    settings = app_settings()
    settings.setValue("server/url", config.url)
    settings.setValue("network/give_up_after_seconds", config.policy.give_up_after)
    settings.remove("server/token")
    settings.sync()
    return store.save(config.url, config.token)


def load_pacs_settings() -> PacsSettings:
    """This workstation's PACS settings (defaults when never saved)."""
    settings = app_settings()
    try:
        cache_mb = int(str(settings.value("pacs/cache_mb", DEFAULT_CACHE_MB) or DEFAULT_CACHE_MB))
    except (TypeError, ValueError):
        cache_mb = DEFAULT_CACHE_MB
    return PacsSettings(
        url=str(settings.value("pacs/url", "") or "").strip().rstrip("/"),
        user=str(settings.value("pacs/user", "") or "").strip(),
        cache_mb=max(cache_mb, 1),
    )


def pacs_secret_key(url: str | None) -> str:
    """The keyring user name of the PACS password: the PACS URL (where ``pacs-mask`` looks for it too)."""
    return (url or "").rstrip("/")


def save_pacs_settings(
    pacs: PacsSettings, password: str = "", url: str | None = None, *, store: TokenStore | None = None
) -> str | None:
    """Remember the PACS settings in the settings file and the password in the keyring (if one was typed).

    Returns ``None`` or a notice when the password could be kept only for this session.
    """
    settings = app_settings()
    settings.setValue("pacs/url", pacs.url)
    settings.setValue("pacs/user", pacs.user)
    settings.setValue("pacs/cache_mb", pacs.cache_mb)
    settings.sync()
    if not password or not pacs.user:
        return None
    return (store or pacs_password_store()).save(pacs_secret_key(url or pacs.url), password)


def pacs_password(pacs: PacsSettings, url: str | None, *, store: TokenStore | None = None) -> str:
    """The saved PACS password for this user and PACS (empty when none)."""
    if not pacs.user:
        return ""
    return (store or pacs_password_store()).get(pacs_secret_key(url)) or ""


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


def remember_series_folder(series_uid: str, folder: str) -> None:
    """Record the local folder a series was opened from (the review queue reopens it from there)."""
    settings = app_settings()
    settings.setValue(f"series_folders/{series_uid}", folder)
    settings.sync()


def series_folder(series_uid: str) -> str | None:
    """The folder :func:`remember_series_folder` stored for ``series_uid`` (``None`` when unknown)."""
    value = app_settings().value(f"series_folders/{series_uid}")
    return str(value) if value else None


class SettingsDialog(QDialog):
    """Server URL and token; leaving the URL empty uses the bundled server."""

    def __init__(
        self, config: ServerConfig, parent: QWidget | None = None, *, pacs: PacsSettings | None = None
    ) -> None:
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
        self.give_up = QSpinBox()
        self.give_up.setObjectName("giveUpAfter")
        self.give_up.setRange(5, 3600)
        self.give_up.setSuffix(" s")
        self.give_up.setValue(round(config.policy.give_up_after))
        self.give_up.setToolTip(
            "An upload stops when the server or storage has not answered for this long; what landed is "
            "kept and the upload can be resumed."
        )
        form = QFormLayout()
        form.addRow("Server URL", self.url)
        form.addRow("API token", self.token)
        form.addRow("Give up after", self.give_up)
        self._add_pacs_rows(form, pacs or PacsSettings())
        note = QLabel(
            "With an empty URL the app starts its bundled server (SQLite and files in your user data "
            "folder). For a clinic server, enter its URL (e.g. https://pacs-masks.example.org) and the "
            "token an administrator created for you. Changes reconnect at once.\n\n" + TokenStore().where()
        )
        note.setWordWrap(True)
        note.setObjectName("hint")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def config(self) -> ServerConfig:
        """What the dialog holds now."""
        return ServerConfig(
            url=self.url.text().strip().rstrip("/"),
            token=self.token.text().strip(),
            policy=RetryPolicy(float(self.give_up.value())),
        )

    def _add_pacs_rows(self, form: QFormLayout, pacs: PacsSettings) -> None:
        self.pacs_url = QLineEdit(pacs.url)
        self.pacs_url.setObjectName("pacsUrl")
        self.pacs_url.setPlaceholderText("empty: the PACS the server names (its DICOMweb root URL)")
        self.pacs_user = QLineEdit(pacs.user)
        self.pacs_user.setObjectName("pacsUser")
        self.pacs_user.setPlaceholderText("empty: no PACS login")
        self.pacs_password = QLineEdit()
        self.pacs_password.setObjectName("pacsPassword")
        self.pacs_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.pacs_password.setPlaceholderText("unchanged (kept in the keyring, never in this file)")
        self.cache_mb = QSpinBox()
        self.cache_mb.setObjectName("pacsCacheMb")
        self.cache_mb.setRange(64, 1024 * 1024)
        self.cache_mb.setSingleStep(256)
        self.cache_mb.setSuffix(" MB")
        self.cache_mb.setValue(pacs.cache_mb)
        self.cache_mb.setToolTip(
            "Series opened from the PACS stay in a private cache on this computer for a fast second open; "
            "the least recently used series go first once it is full."
        )
        form.addRow("PACS URL", self.pacs_url)
        form.addRow("PACS user", self.pacs_user)
        form.addRow("PACS password", self.pacs_password)
        form.addRow("DICOM cache", self.cache_mb)

    def pacs(self) -> PacsSettings:
        """The PACS settings the dialog holds now (the password apart: :attr:`pacs_password`)."""
        return PacsSettings(
            url=self.pacs_url.text().strip().rstrip("/"),
            user=self.pacs_user.text().strip(),
            cache_mb=self.cache_mb.value(),
        )
