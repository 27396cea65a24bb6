"""One exception hierarchy for the API, mapped to HTTP in one place (:func:`server.app.create_app`).

Every error response has the same shape: ``{"error": code, "message": sentence, "details": {...}}``
(:class:`~server.contract.messages.ErrorBody`); the codes are the wire contract's
:class:`~server.contract.errors.ErrorCode`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from server.contract.errors import ErrorCode


class ApiError(Exception):
    """An error a client can act on. ``message`` is a sentence a person understands."""

    status_code = 400
    code: ErrorCode = ErrorCode.BAD_REQUEST
    status_codes: tuple[int, ...] = ()
    """Every status this error can have, when it is not just :attr:`status_code` (the API document)."""

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": self.code, "message": self.message, "details": self.details}


class InvalidRequest(ApiError):
    status_code = 400
    code: ErrorCode = ErrorCode.INVALID_REQUEST


class Unauthorized(ApiError):
    status_code = 401
    code: ErrorCode = ErrorCode.UNAUTHORIZED


class Forbidden(ApiError):
    status_code = 403
    code: ErrorCode = ErrorCode.FORBIDDEN


class NotFound(ApiError):
    status_code = 404
    code: ErrorCode = ErrorCode.NOT_FOUND


class Conflict(ApiError):
    status_code = 409
    code: ErrorCode = ErrorCode.CONFLICT


class PreconditionFailed(ApiError):
    """A create-only write found an object already there (as S3 answers ``If-None-Match: *``)."""

    status_code = 412
    code: ErrorCode = ErrorCode.OBJECT_EXISTS


class TooLarge(ApiError):
    status_code = 413
    code: ErrorCode = ErrorCode.ENTITY_TOO_LARGE


class Unprocessable(ApiError):
    status_code = 422
    code: ErrorCode = ErrorCode.UNPROCESSABLE


class StorageUnavailable(ApiError):
    status_code = 503
    code: ErrorCode = ErrorCode.STORAGE_UNAVAILABLE


class PacsFailed(ApiError):
    """The PACS the server reads from failed: 502 (bad answer, credentials refused), 503 (down or not
    configured) or 504 (too slow). The code names which (``server/pacs.py``)."""

    status_code = 502
    code: ErrorCode = ErrorCode.PACS_ERROR
    status_codes = (404, 502, 503, 504)

    def __init__(
        self, message: str, *, code: ErrorCode, status_code: int = 502, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.status_code = status_code


class JsonTooDeep(InvalidRequest):
    """A JSON body nested deeper than the API allows (``server.request``)."""

    code: ErrorCode = ErrorCode.JSON_TOO_DEEP


# msgspec's words for a value of the right type outside its bounds (range, length, pattern): a 422.
# Anything else it refuses (wrong type, missing or unknown field, unknown enum value) is a 400.
_OUT_OF_BOUNDS = re.compile(
    r"^Expected `[^`]+` (?:of length )?(?:<=|>=|<|>|matching regex|that's a multiple)"
)
_CONTROL_CHARACTERS = "\\x00-"  # how msgspec quotes the safe-text patterns (server.contract.messages)
_NO_BACKSLASH = "\\x7f\\"  # ... and the DICOM-text pattern, which also refuses a backslash


def from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """The API error for a request Litestar refused while reading its parameters or body.

    A value out of its bounds (an integer no column can hold, text too long or holding control
    characters) is a 422 ``invalid_value``; a request of the wrong shape is a 400 ``invalid_request``.
    The message names the first offending field in words; ``details.errors`` lists them all.
    """
    if not errors:
        return InvalidRequest("The request is not valid.", code=ErrorCode.INVALID_REQUEST)
    described = []
    for error in errors:
        source = error.get("source", "request")
        source = getattr(source, "value", source)  # Litestar's ParamType for parameters
        where = f"'{error['key']}' ({source})" if error.get("key") else "The request"
        text = str(error.get("message", "is not valid"))
        if _CONTROL_CHARACTERS in text and _NO_BACKSLASH in text:
            text = (
                "it must not contain control characters or a backslash (this text goes into a DICOM SEG, "
                "where a backslash separates values)"
            )
        elif _CONTROL_CHARACTERS in text:
            text = "it must not contain control characters (NUL and the like cannot be stored)"
        described.append(f"{where} is refused: {text[:1].lower()}{text[1:]}")
    bounded = all(_OUT_OF_BOUNDS.match(str(e.get("message", ""))) for e in errors)
    details = {"errors": [dict(e) for e in errors]}
    if bounded:
        return Unprocessable(f"{described[0]}.", code=ErrorCode.INVALID_VALUE, details=details)
    return InvalidRequest(
        f"The request is not valid: {described[0]}.", code=ErrorCode.INVALID_REQUEST, details=details
    )
