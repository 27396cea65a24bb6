"""The HMAC key the local backend signs its URLs with, and the public URL they point at by default.

Shared by the app factory (``server.app``) and the jobs run from the command line
(``server.jobs.common``), so both sign with the same key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from server.private_files import FILE_MODE, private_folder

if TYPE_CHECKING:
    from server.settings import Settings

SIGNING_KEY_FILE = "signing.key"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8765"


def load_signing_key(settings: Settings) -> bytes:
    """The HMAC key for local signed URLs: from settings, else a random one kept in the data dir.

    Several workers sharing a data dir share the file; whoever creates it first wins (O_EXCL).
    """
    if settings.signing_key:
        return settings.signing_key.encode("utf-8")
    path: Path = settings.data_dir / SIGNING_KEY_FILE
    private_folder(path.parent, parents=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip().encode("ascii")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip().encode("ascii")
