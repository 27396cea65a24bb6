"""Rules for what may be stored: filenames, content types, slice indexes and integer ranges.

Checked by the server before anything is signed, so that no storage key can climb out of its group's
prefix or surprise a file system when a group is downloaded (Windows device names, leading dots, odd
characters); checked by the client before anything is sent, so the user sees every bad name at once.
"""

from __future__ import annotations

import re

INT32_MAX = 2**31 - 1
"""The largest value an ``Integer`` column holds on PostgreSQL (ids, slice_index, width, height, ...).

Every integer the API accepts for such a column is bounded by it (``server.contract.messages``), so an
oversize number is a 422, never an overflow in the database driver. SQLite would hold up to 2**63-1, but
the bound is the same on both so a value accepted by one server is accepted by every other.
"""
MAX_SLICE_INDEX = INT32_MAX
"""The largest slice index the server stores; a file whose name holds a larger number is refused by the
client before anything is sent (:func:`slice_index_problem`)."""

FILENAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
ALLOWED_EXTENSIONS = (".png",)
ALLOWED_CONTENT_TYPES = {".png": "image/png"}
PNG_CONTENT_TYPE = ALLOWED_CONTENT_TYPES[".png"]
"""The content type of every stored slice (a PNG label image)."""
WINDOWS_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)


def parse_id(text: str) -> int | None:
    """The id written in ``text`` when it is one an ``Integer`` column can hold (ASCII digits,
    0..INT32_MAX), else ``None``. ``str.isdigit`` alone also accepts '²' and other digits ``int`` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(INT32_MAX)):
        return None
    value = int(text)
    return value if value <= INT32_MAX else None


def filename_problem(filename: str) -> str | None:
    """Why ``filename`` may not be stored as a slice, or ``None`` when it is fine.

    1-128 of ``[A-Za-z0-9._-]``, no leading dot, a ``.png`` extension (any case), not a Windows device
    name (``con.png`` could not be downloaded there).
    """
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


def slice_index_problem(index: int) -> str | None:
    """Why ``index`` cannot be a slice index, or ``None`` when the server can store it.

    The words speak of a file name because the client reads the index from one (``mask_0042.png``).
    """
    if index < 0:
        return f"slice index {index} is negative"
    if index > MAX_SLICE_INDEX:
        return (
            f"the number {index} in the file name is too large for a slice index (at most {MAX_SLICE_INDEX}); "
            "name the file by its slice index, e.g. mask_0042.png"
        )
    return None
