"""The one HTTP client of the server's JSON API, used by the upload engine, the CLI and the desktop app.

Every call is authenticated. Errors come back as :class:`ApiError` carrying the server's error code,
its human message and details. Calls that are safe to repeat (reads, sign, complete) are retried on
connection failures and 5xx with exponential backoff and jitter (tenacity); creating a group is not
repeated blindly — the engine handles the 409 it may answer after a lost response.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from pacs_mask_desktop import __version__


class ApiError(Exception):
    """The server refused a call, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and (exc.status == 0 or exc.status >= 500 or exc.status == 429)


class ApiClient:
    """Typed calls to the server's ``/api`` routes."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0, attempts: int = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self._attempts = attempts
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"pacs-mask/{__version__}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                0, "unreachable", f"Cannot reach the server at {self.base_url}: {exc.__class__.__name__}: {exc}"
            ) from exc
        if response.is_success:
            return response
        try:
            body = response.json()
            raise ApiError(response.status_code, body["error"], body["message"], body.get("details"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                response.status_code, "http_error", f"The server answered {response.status_code}: {response.text[:200]}"
            ) from None

    def _request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        if not retry:
            return self._send(method, path, **kwargs)
        for attempt in Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.25, max=8),
            reraise=True,
        ):
            with attempt:
                return self._send(method, path, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        return self._request(method, path, retry=retry, **kwargs).json()

    # --- API -----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return self._call("GET", "/health")

    def create_annotation(
        self, study_instance_uid: str, series_instance_uid: str, patient_id: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/annotations``."""
        body = {"study_instance_uid": study_instance_uid, "series_instance_uid": series_instance_uid}
        if patient_id:
            body["patient_id"] = patient_id
        if description:
            body["description"] = description
        return self._call("POST", "/api/annotations", json=body, retry=False)

    def list_annotations(self, search: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/annotations?search=``."""
        params = {"search": search} if search else {}
        return self._call("GET", "/api/annotations", params=params)["items"]

    def get_annotation(self, annotation_id: int) -> dict[str, Any]:
        """``GET /api/annotations/{id}``."""
        return self._call("GET", f"/api/annotations/{annotation_id}")

    def create_group(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/mask-group`` (not retried: a lost response is handled by the caller's 409 logic)."""
        return self._call("POST", "/api/mask-group", json=fields, retry=False)

    def sign(self, group_id: str, slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/mask-group/{id}/signed-url``."""
        return self._call("POST", f"/api/mask-group/{group_id}/signed-url", json={"slices": slices})["urls"]

    def sign_with_date(self, group_id: str, slices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """Like :meth:`sign`, plus the server's ``Date`` header (to correct for clock skew on expiry)."""
        response = self._request("POST", f"/api/mask-group/{group_id}/signed-url", json={"slices": slices})
        return response.json()["urls"], response.headers.get("date")

    def complete(self, group_id: str, slices: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /api/mask-group/{id}/complete`` (idempotent on the server, so safe to retry)."""
        return self._call("POST", f"/api/mask-group/{group_id}/complete", json={"slices": slices})

    def list_groups(self, annotation_id: int) -> list[dict[str, Any]]:
        """``GET /api/mask-group/{annotation_id}``."""
        return self._call("GET", f"/api/mask-group/{annotation_id}")["items"]

    def group_with_slices(self, group_id: str | uuid.UUID) -> dict[str, Any]:
        """``GET /api/mask/{group_id}``: ``{"group": {...}, "items": [slices]}``."""
        return self._call("GET", f"/api/mask/{group_id}")

    def view(self, group_id: str, *, filename: str | None = None, slice_index: int | None = None) -> bytes:
        """``GET /api/mask-group/{id}/view``: one slice's bytes."""
        params: dict[str, Any] = {"filename": filename} if filename is not None else {"slice_index": slice_index}
        return self._request("GET", f"/api/mask-group/{group_id}/view", params=params).content

    def review(self, group_id: str, decision: str, comment: str = "") -> dict[str, Any]:
        """``POST /api/mask-group/{id}/review``."""
        return self._call(
            "POST", f"/api/mask-group/{group_id}/review", json={"decision": decision, "comment": comment}
        )

    def delete_group(self, group_id: str) -> dict[str, Any]:
        """``DELETE /api/mask-group/{id}`` (repeatable: finishes a delete that failed midway)."""
        return self._call("DELETE", f"/api/mask-group/{group_id}")

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """``GET /api/audit`` with optional annotation_id, group_id, actor filters."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/api/audit", params=params)["items"]
