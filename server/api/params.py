"""Query and path parameters, bounded like the body fields (``server.contract.messages``).

Litestar reads a parameter's constraints from ``Parameter(...)``, not from the ``msgspec.Meta`` that body
structs use, so the same definitions (:data:`~server.contract.naming.INT32_MAX`, the safe-text patterns) are
spelled here once for parameters. A value out of bounds is a 422 (``invalid_value``) before any query
runs: no oversize integer or NUL character reaches the database.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import PathParameter, QueryParameter

from server.contract.messages import SAFE_TEXT_PATTERN
from server.contract.naming import INT32_MAX


def text_query(max_length: int) -> QueryParameter:
    """A text query parameter: at most ``max_length`` characters, no control characters."""
    return QueryParameter(pattern=SAFE_TEXT_PATTERN, max_length=max_length)


def text_path(max_length: int) -> PathParameter:
    """A text path parameter: 1 to ``max_length`` characters, no control characters."""
    return PathParameter(pattern=SAFE_TEXT_PATTERN, min_length=1, max_length=max_length)


IdPath = Annotated[int, PathParameter(ge=0, le=INT32_MAX)]
"""An ``Integer`` id in the path (``/{annotation_id:int}``): 0..2147483647."""
IdQuery = Annotated[int | None, QueryParameter(ge=0, le=INT32_MAX)]
"""An optional ``Integer`` id as a query filter: 0..2147483647."""
SliceIndexQuery = Annotated[int | None, QueryParameter(ge=0, le=INT32_MAX)]
"""An optional slice index as a query parameter: 0..2147483647."""
