"""The API document tells the truth about errors: every status a route answers, with the real body.

Litestar documents only a 400 with its own error shape. :func:`document_errors` replaces that, in one
place, for every route in the document, from what the route is:

- a :class:`~server.security.RoleGuard` means a token is needed (401), and a 403 when the role is above
  the lowest one;
- a JSON body can be malformed, of the wrong shape or too deep (400), too large (413) or hold a value out
  of its bounds (422);
- parameters that are typed or constrained can be of the wrong type (400) or out of bounds (422);
- a path parameter names something that may not exist (404), and Litestar documents a 400 for any
  route with parameters: it is replaced with the real body;
- the domain errors a handler's service raises are declared on the handler with
  ``opt=raises(Conflict, StorageUnavailable, ...)`` (:class:`~server.errors.ApiError` subclasses; not
  Litestar's own ``raises=``, which is typed for its ``HTTPException`` and documents Litestar's body).

Every error response is documented with :class:`~server.contract.messages.ErrorBody`, the one shape the server
sends. The fuzz test (``tests/server/test_fuzz.py``) checks the document against the running app.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import KwargDefinition
from litestar.routes import HTTPRoute

from server.contract.messages import ErrorBody
from server.errors import ApiError
from server.security import ROLE_RANK, RoleGuard

DESCRIPTIONS = {
    400: "The request is malformed: not JSON, nested too deeply, of the wrong shape or type "
    "(`malformed_json`, `json_too_deep`, `invalid_request`, ...).",
    401: "No API token was sent, or it is unknown or revoked (`missing_token`, `invalid_token`).",
    403: "The token's role (or, for a pending group, its owner) does not allow this call.",
    404: "The annotation, group, slice or token named does not exist.",
    409: "The call conflicts with the current state (a duplicate, a group that is not pending, ...).",
    412: "A precondition failed.",
    413: "The body, or a declared slice, is larger than the server accepts.",
    422: "A value is out of its bounds (`invalid_value`: an integer the database cannot hold, text too "
    "long or with control characters) or breaks a rule of the domain (the code says which).",
    502: "The PACS answered badly or refused the server's credentials.",
    503: "Storage (or the PACS) is unavailable; retry later.",
    504: "The PACS was too slow.",
}
_CONSTRAINTS = ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length", "pattern", "const")
#: The key of a handler's ``opt`` that holds the domain errors it declares (see :func:`raises`).
RAISES_OPT = "raises"
_NOT_PARAMETERS = {"data", "call", "request", "state", "scope", "headers", "cookies"}


def raises(*errors: type[ApiError]) -> dict[str, Any]:
    """A handler's ``opt``: the domain errors it can answer, documented by :func:`document_errors`."""
    return {RAISES_OPT: errors}


def _can_fail_validation(field: Any) -> bool:
    """A parameter Litestar may refuse: not a plain string, or one with constraints."""
    definition = field.kwarg_definition
    constrained = isinstance(definition, KwargDefinition) and any(
        getattr(definition, name, None) is not None for name in _CONSTRAINTS
    )
    return constrained or field.annotation is not str


def error_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> set[int]:
    """Every error status ``handler`` on ``route`` can answer (see the module docstring)."""
    statuses: set[int] = set()
    for guard in handler.resolve_guards():
        guard = getattr(guard, "func", guard)  # Litestar wraps guards in an AsyncCallable
        if isinstance(guard, RoleGuard):
            statuses.add(401)
            if ROLE_RANK[guard.role] > 0:
                statuses.add(403)
    fields = handler.parsed_fn_signature.parameters
    if "data" in fields:
        statuses |= {400, 413, 422}
    if route.path_parameters:
        statuses |= {400, 404}  # Litestar may refuse any parameter; the 400 is documented with our body
    if any(
        _can_fail_validation(field)
        for name, field in fields.items()
        if name not in _NOT_PARAMETERS and name not in handler.dependency_name_set
    ):
        statuses |= {400, 422}
    raised: type[ApiError]
    for raised in handler.opt.get(RAISES_OPT, ()):
        statuses |= set(raised.status_codes or (raised.status_code,))
    return statuses


def document_errors(app: Litestar) -> None:
    """Declare every route's error responses (with the real error body) before the document is built.

    A response a handler declares itself (``responses=``, e.g. the health check's 503 with its own body)
    is kept.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            declared = dict(handler.responses or {})
            for status in sorted(error_statuses(route, handler)):
                if status not in declared:
                    declared[status] = ResponseSpec(
                        data_container=ErrorBody,
                        description=DESCRIPTIONS.get(status, "An error; the body says which."),
                        generate_examples=False,
                    )
            handler.responses = declared
