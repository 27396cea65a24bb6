"""The storage key pattern of mask slices (server-only: clients never see or build a key).

The pattern is the seed's ``mask/{annotation_id}/{group_id}/{filename}``. What a filename may be is part
of the wire contract (:mod:`server.contract.naming`), checked before anything is signed so that no key
can climb out of its group's prefix.
"""

from __future__ import annotations

import uuid


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
