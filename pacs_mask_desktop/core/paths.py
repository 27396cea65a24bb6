"""Where the client keeps its files, and how it finds the server and its token.

The embedded server and the client agree on one per-user data dir (``PACS_MASK_DATA_DIR`` or the
platform's user data dir for ``pacs-mask-upload``): the server writes ``admin.token`` there for the
desktop app and the CLI to read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "pacs-mask-upload"
DEFAULT_SERVER = "http://127.0.0.1:8765"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def data_dir() -> Path:
    """The per-user data dir shared with the embedded server."""
    configured = os.environ.get("PACS_MASK_DATA_DIR")
    return Path(configured) if configured else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it readable by this user only (0700).

    Patient data at rest (database, stored masks, DICOM cache, staging folders, logs) lives in such
    folders. ``mkdir``'s mode is filtered by the umask, and a folder made by an older version may be
    wider, so the mode is set explicitly (POSIX; on Windows the user's profile folders are private).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name != "nt":
        path.chmod(0o700)
    return path


def journal_path() -> Path:
    """The upload journal shared by the CLI, the watch worker, the Python API and the desktop app."""
    return data_dir() / "upload-journal.sqlite3"


def log_dir() -> Path:
    """The per-user log dir."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """A server URL and the token to use with it."""

    url: str
    token: str


class NoToken(Exception):
    """No token was given and the embedded server's token file does not exist."""


def resolve_server(url: str | None = None, token: str | None = None) -> ServerTarget:
    """Server URL and token from arguments, then ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN``, then the data dir."""
    url = url or os.environ.get("PACS_MASK_SERVER") or DEFAULT_SERVER
    token = token or os.environ.get("PACS_MASK_TOKEN")
    if not token:
        path = data_dir() / ADMIN_TOKEN_FILE
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise NoToken(
                f"No API token: pass --token, set PACS_MASK_TOKEN, or start the embedded server once so that "
                f"it writes {path}."
            ) from None
    return ServerTarget(url=url.rstrip("/"), token=token)
