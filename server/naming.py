"""Rules for what may be stored: filenames, content types, the storage key pattern and integer ranges.

The key pattern is the seed's ``mask/{annotation_id}/{group_id}/{filename}``. Filenames are checked
before anything is signed so that no key can climb out of its group's prefix or surprise a file system
when a group is downloaded (Windows device names, leading dots, odd characters).
"""

from __future__ import annotations

import re
import uuid

INT32_MAX = 2**31 - 1
"""The largest value an ``Integer`` column holds on PostgreSQL (ids, slice_index, width, height, ...).

Every integer the API accepts for such a column is bounded by it (``server.api.schemas``), so an
oversize number is a 422, never an overflow in the database driver. SQLite would hold up to 2**63-1, but
the bound is the same on both so a value accepted by one server is accepted by every other.
"""
MAX_SLICE_INDEX = INT32_MAX
"""The largest slice index: the client's mirror is ``pacs_mask_desktop.core.masks.MAX_SLICE_INDEX``."""


def parse_id(text: str) -> int | None:
    """The id written in ``text`` when it is one an ``Integer`` column can hold (ASCII digits,
    0..INT32_MAX), else ``None``. ``str.isdigit`` alone also accepts '²' and other digits ``int`` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(INT32_MAX)):
        return None
    value = int(text)
    return value if value <= INT32_MAX else None


FILENAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
ALLOWED_EXTENSIONS = (".png",)
ALLOWED_CONTENT_TYPES = {".png": "image/png"}
WINDOWS_DEVICE_NAMES = (
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)


def filename_problem(filename: str) -> str | None:
    """Why ``filename`` may not be stored, or ``None`` when it is fine."""
    if not FILENAME_RE.fullmatch(filename):
        return (
            "filenames are 1-128 characters of letters, digits, '.', '_' and '-', and must not start "
            "with a dot"
        )
    lower = filename.lower()
    if not lower.endswith(ALLOWED_EXTENSIONS):
        return f"only {', '.join(ALLOWED_EXTENSIONS)} files can be stored"
    if lower.split(".", 1)[0] in WINDOWS_DEVICE_NAMES:
        return "the name is reserved on Windows and could not be downloaded there"
    return None


def content_type_problem(filename: str, content_type: str) -> str | None:
    """Why ``content_type`` is not accepted for ``filename``, or ``None``."""
    expected = next((ct for ext, ct in ALLOWED_CONTENT_TYPES.items() if filename.lower().endswith(ext)), None)
    if content_type != expected:
        return f"content type must be {expected!r} for this file, not {content_type!r}"
    return None


def group_prefix(annotation_id: int, group_id: uuid.UUID) -> str:
    """The storage prefix holding every object of one group (ends with '/')."""
    return f"mask/{annotation_id}/{group_id}/"


def mask_key(annotation_id: int, group_id: uuid.UUID, filename: str) -> str:
    """The storage key of one slice."""
    return group_prefix(annotation_id, group_id) + filename


def parse_mask_key(key: str) -> tuple[int, uuid.UUID, str] | None:
    """``(annotation_id, group_id, filename)`` for a key of the mask pattern, else ``None``."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "mask" or not parts[1].isdigit():
        return None
    try:
        group_id = uuid.UUID(parts[2])
    except ValueError:
        return None
    return int(parts[1]), group_id, parts[3]
