"""The app's request class: JSON bodies are bounded in depth where they are decoded.

msgspec decodes nesting recursively: about 1000 levels deep it raises ``RecursionError`` (a 500), and a
body just under that decodes but can exhaust the stack later (storing ``params`` as JSON, encoding an
answer). No API body needs more than a few levels, so a body deeper than :data:`MAX_JSON_DEPTH` is a 400
``json_too_deep`` before any handler sees it.

Cost, measured on the 2-core development machine: the depth walk over a 1000-slice ``complete`` body
takes ~1.6 ms next to ~1.5 ms for decoding it, and it only runs when the body holds more opening
brackets than the limit (most bodies are skipped after two ``bytes.count`` calls).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.serialization import decode_json
from litestar.types import Empty

from server.errors import JsonTooDeep

MAX_JSON_DEPTH = 32
"""The deepest JSON nesting accepted in a request body (the API's own bodies are 5 levels at most)."""


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` (decoded JSON) nests lists/objects more than ``limit`` levels deep.

    Iterative, so the check itself can never exhaust the stack.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _too_deep() -> JsonTooDeep:
    return JsonTooDeep(
        f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep; no request of this API needs that.",
        details={"max_depth": MAX_JSON_DEPTH},
    )


class ApiRequest(Request):
    """:class:`litestar.Request` whose :meth:`json` refuses bodies nested deeper than :data:`MAX_JSON_DEPTH`.

    It fills the request's JSON cache as :meth:`Request.json` does (``_json``, ``_connection_state``),
    Litestar 2's internals: pyproject keeps Litestar below 3, and ``tests/server/test_input_bounds.py``
    fails if a release changes them.
    """

    async def json(self) -> Any:
        """The decoded JSON body; a :class:`~server.errors.JsonTooDeep` (400) when it nests too deeply."""
        if self._json is Empty and self._connection_state.json is Empty:
            body = await self.body()
            try:
                value = decode_json(body or b"null", type_decoders=self.route_handler.resolve_type_decoders())
            except RecursionError:
                raise _too_deep() from None
            if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(
                value, MAX_JSON_DEPTH
            ):
                raise _too_deep()
            self._json = self._connection_state.json = value
        return await super().json()
