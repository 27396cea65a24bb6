"""The rules of a new mask group (``POST /api/mask-group``): one definition of the limits and fields.

The server's :class:`~server.contract.messages.GroupCreate` (which also names the accepted fields:
any other is refused) is built from these limits; the client checks the same rules with
:func:`group_fields_problems` before anything is read or sent, so the user sees every problem at once
instead of the server's first 4xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from server.contract.naming import INT32_MAX

Source = Literal["manual", "ai"]
"""Where a group's masks come from: drawn by a person or produced by a model."""
SOURCES: tuple[str, ...] = get_args(Source)
MODEL_NAME_MAX = 128
"""Characters of ``model_name`` (the ``String(128)`` column)."""
VERSION_MAX = 64
"""Characters of ``version`` (the ``String(64)`` column)."""
MAX_SLICES = 50_000
"""The most slices one group holds (``expected_slices`` and a complete request). A whole-body CT at 0.6 mm
has 2000-3000 slices; 50,000 leaves room for 4D series while the largest possible ``complete`` body
still fits :data:`LARGE_BODY_MAX_BYTES` (``tests/server/test_contract.py`` encodes it)."""
LARGE_BODY_MAX_BYTES = 80 * 1024 * 1024
"""The request size the two routes whose body grows with the volume accept: ``complete`` (up to
:data:`MAX_SLICES` slices) and creating an annotation with its series (up to
``messages.MAX_SERIES_INSTANCES`` instances). Litestar's default of 10 MB refused a valid complete of
about 45,000 slices with a 413 after every slice had landed. Other routes keep the default."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def group_fields_problems(
    annotation_id: Any, model_name: Any, version: Any, source: Any, confidence: Any, params: Any
) -> list[str]:
    """Every reason the server would refuse these group fields, in words (empty: they are fine).

    Checked by the client before a folder is read; the server applies the same limits through
    :class:`~server.contract.messages.GroupCreate`. The client is a little stricter where a value
    the server would accept is surely a mistake (a blank ``model_name``, annotation id 0).
    """
    found: list[str] = []
    if (
        isinstance(annotation_id, bool)
        or not isinstance(annotation_id, int)
        or not 1 <= annotation_id <= INT32_MAX
    ):
        found.append(f"annotation_id must be a positive integer, not {annotation_id!r}")
    for name, value, limit in (("model_name", model_name, MODEL_NAME_MAX), ("version", version, VERSION_MAX)):
        if not isinstance(value, str) or not value.strip():
            found.append(f"{name} is required")
        elif len(value) > limit or _CONTROL.search(value):
            found.append(f"{name} must be at most {limit} characters without control characters")
    if source not in SOURCES:
        found.append(f"source must be 'manual' or 'ai', not {source!r}")
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not 0.0 <= float(confidence) <= 1.0
    ):
        found.append(f"confidence must be between 0 and 1, not {confidence!r}")
    if params is not None:
        if not isinstance(params, Mapping):
            found.append("params must be a JSON object (a dict)")
        else:
            try:
                json.dumps(dict(params), allow_nan=False)
            except (TypeError, ValueError) as exc:
                found.append(f"params must be plain JSON: {exc}")
    return found
