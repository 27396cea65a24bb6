"""One exception hierarchy for the API, mapped to HTTP in one place (:func:`server.app.create_app`).

Every error response has the same shape: ``{"error": code, "message": sentence, "details": {...}}``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a client can act on. ``message`` is a sentence a person understands."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
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
    code = "invalid_request"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class TooLarge(ApiError):
    status_code = 413
    code = "entity_too_large"


class Unprocessable(ApiError):
    status_code = 422
    code = "unprocessable"


class StorageUnavailable(ApiError):
    status_code = 503
    code = "storage_unavailable"
