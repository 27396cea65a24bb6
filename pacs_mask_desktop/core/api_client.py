"""The one HTTP client of the server's JSON API, used by the upload engine, the CLI and the desktop app.

Every call is authenticated. Answers are decoded into the wire contract's structs
(:mod:`server.contract.messages`, strictly: a 2xx answer of another shape is an :class:`ApiError`
``malformed_answer``) and request bodies are encoded from them. Errors come back as :class:`ApiError` carrying the server's error code,
its human message and details. Calls that are safe to repeat (reads, sign, complete) are retried on
connection failures and 5xx with exponential backoff and jitter (tenacity); creating a group is not
repeated blindly — the engine handles the 409 it may answer after a lost response. Retries stop early
when nothing has got through for the :class:`~pacs_mask_desktop.core.retry.RetryPolicy`'s budget (the
client's :attr:`ApiClient.outage` clock; the upload engine reads it, and times storage with the same
policy).
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from pacs_mask_desktop import __version__
from pacs_mask_desktop.core.retry import Outage, RetryPolicy
from server.contract import messages
from server.contract.errors import ErrorCode

T = TypeVar("T")


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


class _BudgetSpent(stop_base):
    """Stops retrying once nothing has got through for the outage's whole budget."""

    def __init__(self, outage: Outage) -> None:
        self._outage = outage

    def __call__(self, retry_state: RetryCallState) -> bool:  # noqa: ARG002 - tenacity passes the state
        return self._outage.exhausted()


def _tls_context(base_url: str) -> ssl.SSLContext | bool:
    """httpx's default verification for an ``https`` server; for a plain ``http`` one (the bundled server
    on this machine) a context that trusts no CA, so no TLS connection could ever be made through it.

    Loading the CA bundle is ~25 ms of every CLI run's start-up, spent for a server that has no TLS.
    Redirects are not followed, so such a client never meets TLS at all (an ``https://`` proxy from the
    environment is verified by httpcore with its own default context, not with this one).
    """
    if base_url.lower().startswith("https:"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies host names and certificates, trusts none


class ApiClient:
    """Typed calls to the server's ``/api`` routes."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        attempts: int = 5,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._attempts = attempts
        self._timeout = timeout
        self.outage = Outage(policy)
        """Since when this client's calls get no usable answer, and its policy; see ``core.retry``."""
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"pacs-mask/{__version__}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=_tls_context(self.base_url),
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
        if self.outage.down:  # during an outage no single request may outlast what is left of the budget
            kwargs["timeout"] = httpx.Timeout(self.outage.cap(self._timeout), connect=self.outage.cap(10.0))
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.outage.failed()
            raise ApiError(
                0,
                ErrorCode.UNREACHABLE,
                f"Cannot reach the server at {self.base_url}: {exc.__class__.__name__}: {exc}",
            ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            self.outage.failed()
        else:
            self.outage.succeeded()
        if response.is_success:
            return response
        try:
            body = response.json()
            raise ApiError(response.status_code, body["error"], body["message"], body.get("details"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                response.status_code,
                ErrorCode.HTTP_ERROR,
                f"The server answered {response.status_code}: {response.text[:200]}",
            ) from None

    def _request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        if not retry:
            return self._send(method, path, **kwargs)
        backoff = wait_random_exponential(multiplier=0.25, max=8)
        for attempt in Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._attempts) | _BudgetSpent(self.outage),
            wait=lambda state: min(backoff(state), max(0.0, self.outage.remaining())),
            reraise=True,
        ):
            with attempt:
                return self._send(method, path, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(
        self, method: str, path: str, answer: type[T], *, retry: bool = True, body: Any = None, **kwargs: Any
    ) -> T:
        """Send ``body`` (a contract struct, encoded with msgspec) and decode the answer as ``answer``."""
        return _decode(self._request(method, path, retry=retry, **_with_body(body, kwargs)), answer)

    # --- API -----------------------------------------------------------------------------------------

    def health(self) -> messages.Health:
        """``GET /health``."""
        return self._call("GET", "/health", messages.Health)

    def create_annotation(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        patient_id: str | None = None,
        description: str | None = None,
        series: messages.SeriesGeometry | None = None,
    ) -> messages.AnnotationOut:
        """``POST /api/annotations``; ``series`` is the geometry read from a folder
        (:func:`pacs_mask_desktop.core.series_geometry.geometry_from_series`), recorded by the server."""
        body = messages.AnnotationCreate(
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            patient_id=patient_id or None,
            description=description or None,
            series=series,
        )
        return self._call("POST", "/api/annotations", messages.AnnotationOut, body=body, retry=False)

    def list_annotations(self, search: str | None = None) -> list[messages.AnnotationOut]:
        """``GET /api/annotations?search=``."""
        params = {"search": search} if search else {}
        return self._call("GET", "/api/annotations", messages.AnnotationList, params=params).items

    def get_annotation(self, annotation_id: int) -> messages.AnnotationOut:
        """``GET /api/annotations/{id}``."""
        return self._call("GET", f"/api/annotations/{annotation_id}", messages.AnnotationOut)

    def create_annotation_from_pacs(
        self,
        series_instance_uid: str,
        *,
        study_instance_uid: str | None = None,
        description: str | None = None,
    ) -> messages.AnnotationOut:
        """``POST /api/annotations/from-pacs``: the server reads the series' geometry from its PACS."""
        body = messages.AnnotationFromPacs(
            series_instance_uid=series_instance_uid,
            study_instance_uid=study_instance_uid or None,
            description=description or None,
        )
        return self._call(
            "POST", "/api/annotations/from-pacs", messages.AnnotationOut, body=body, retry=False
        )

    def annotation_series(self, annotation_id: int) -> messages.SeriesGeometry:
        """``GET /api/annotations/{id}/series``: the stored series geometry (404 for older annotations)."""
        return self._call("GET", f"/api/annotations/{annotation_id}/series", messages.SeriesGeometry)

    def stored_geometry(self, annotation_id: int) -> messages.SeriesGeometry | None:
        """The annotation's stored series geometry, or ``None`` for an older annotation recorded without
        one (``series_geometry_unknown``); any other refusal raises :class:`ApiError`."""
        try:
            return self.annotation_series(annotation_id)
        except ApiError as exc:
            if exc.code == ErrorCode.SERIES_GEOMETRY_UNKNOWN:
                return None
            raise

    def server_config(self) -> messages.ClientConfig:
        """``GET /api/config``: what clients should know, e.g. the PACS's ``dicomweb_url`` (or None)."""
        return self._call("GET", "/api/config", messages.ClientConfig)

    def create_group(self, fields: messages.GroupCreate) -> messages.GroupOut:
        """``POST /api/mask-group`` (not retried: a lost response is handled by the caller's 409 logic)."""
        return self._call("POST", "/api/mask-group", messages.GroupOut, body=fields, retry=False)

    def sign(self, group_id: str, slices: Sequence[messages.SliceToSign]) -> list[messages.SignedUrl]:
        """``POST /api/mask-group/{id}/signed-url``."""
        return self.sign_with_date(group_id, slices)[0]

    def sign_with_date(
        self, group_id: str, slices: Sequence[messages.SliceToSign]
    ) -> tuple[list[messages.SignedUrl], str | None]:
        """Like :meth:`sign`, plus the server's ``Date`` header (to correct for clock skew on expiry)."""
        response = self._request(
            "POST", f"/api/mask-group/{group_id}/signed-url", **_with_body({"slices": slices}, {})
        )
        return _decode(response, messages.SignResponse).urls, response.headers.get("date")

    def complete(self, group_id: str, slices: Sequence[messages.SliceToComplete]) -> messages.GroupOut:
        """``POST /api/mask-group/{id}/complete`` (idempotent on the server, so safe to retry)."""
        return self._call(
            "POST", f"/api/mask-group/{group_id}/complete", messages.GroupOut, body={"slices": slices}
        )

    def list_groups(self, annotation_id: int) -> list[messages.GroupOut]:
        """``GET /api/mask-group/{annotation_id}``."""
        return self._call("GET", f"/api/mask-group/{annotation_id}", messages.GroupList).items

    def groups_with_volumes(self, groups: Sequence[messages.GroupOut]) -> list[messages.GroupOut]:
        """The complete ``groups`` listed without ``volumes``, opened so the server computes and stores
        them (once: groups never change); a group deleted since it was listed is left out."""
        opened = []
        for group in groups:
            if group.status != "complete" or group.volumes is not None:
                continue
            try:
                opened.append(self.group_with_slices(group.id).group)
            except ApiError as exc:
                if exc.code != ErrorCode.GROUP_NOT_FOUND:
                    raise
        return opened

    def group_with_slices(self, group_id: str | uuid.UUID) -> messages.MaskList:
        """``GET /api/mask/{group_id}``: the group (``.group``) and its slices (``.items``)."""
        return self._call("GET", f"/api/mask/{group_id}", messages.MaskList)

    def view(self, group_id: str, *, filename: str | None = None, slice_index: int | None = None) -> bytes:
        """``GET /api/mask-group/{id}/view``: one slice's bytes."""
        params: dict[str, Any] = (
            {"filename": filename} if filename is not None else {"slice_index": slice_index}
        )
        return self._request("GET", f"/api/mask-group/{group_id}/view", params=params).content

    def review(
        self,
        group_id: str,
        decision: messages.Decision,
        comment: str = "",
        *,
        findings: Sequence[messages.FindingIn] | None = None,
        override_four_eyes: bool = False,
    ) -> messages.GroupOut:
        """``POST /api/mask-group/{id}/review``: the group with its ``findings`` and ``reviews`` history.

        ``findings`` are remarks on slices (a ``label`` of None: the whole slice). ``override_four_eyes``
        lets an admin approve a group they uploaded themselves (audited). Not retried: every review is
        kept in the history, so a blind repeat would record it twice.
        """
        body = messages.ReviewRequest(
            decision=decision,
            comment=comment,
            findings=list(findings or []),
            override_four_eyes=override_four_eyes,
        )
        return self._call(
            "POST", f"/api/mask-group/{group_id}/review", messages.GroupOut, body=body, retry=False
        )

    def review_queue(
        self, *, limit: int = 50, cursor: str | None = None, **filters: Any
    ) -> messages.ReviewQueue:
        """``GET /api/review/queue``: complete groups waiting for review, oldest first.

        ``filters``: model_name, version, source, created_by, annotation_id (None is left out). Returns
        the whole page (``.items``, ``.next_cursor``); pass ``next_cursor`` back as ``cursor`` for the
        next page.
        """
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        params.update({k: v for k, v in filters.items() if v is not None})
        return self._call("GET", "/api/review/queue", messages.ReviewQueue, params=params)

    def compare(self, a: str | uuid.UUID, b: str | uuid.UUID) -> messages.Comparison:
        """``GET /api/mask-group/{a}/compare/{b}``: per-label and per-slice Dice, voxel counts, volumes."""
        return self._call("GET", f"/api/mask-group/{a}/compare/{b}", messages.Comparison)

    def build_seg(self, group_id: str) -> messages.SegOut:
        """``POST /api/mask-group/{id}/seg``: build the group's DICOM SEG once; its metadata.

        Idempotent on the server (a repeat returns the same object), so safe to retry.
        """
        return self._call("POST", f"/api/mask-group/{group_id}/seg", messages.SegOut)

    def download_seg(self, group_id: str, path: str | os.PathLike[str]) -> Path:
        """``GET /api/mask-group/{id}/seg`` into ``path`` (0600: patient data; written whole or not at all)."""
        target = Path(path)
        response = self._request("GET", f"/api/mask-group/{group_id}/seg")
        partial = target.with_name(f".{target.name}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(response.content)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def send_seg(self, group_id: str) -> messages.SendOut:
        """``POST /api/mask-group/{id}/send``: store the SEG in the PACS (STOW-RS); idempotent."""
        return self._call("POST", f"/api/mask-group/{group_id}/send", messages.SendOut)

    def delete_group(self, group_id: str) -> messages.DeleteResult:
        """``DELETE /api/mask-group/{id}`` (repeatable: finishes a delete that failed midway)."""
        return self._call("DELETE", f"/api/mask-group/{group_id}", messages.DeleteResult)

    def audit(self, **filters: Any) -> list[messages.AuditOut]:
        """``GET /api/audit`` with optional annotation_id, group_id, actor filters."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/api/audit", messages.AuditList, params=params).items


def _plain(value: Any) -> Any:
    """msgspec's hook for values of a subclass of ``str``/``int``/``float``: pydicom's ``UID``, ``IS``
    and ``DSfloat`` and numpy's ``float64`` reach request bodies from DICOM headers; sent as the plain value
    (as ``json.dumps`` did). Anything else is refused with a ``TypeError`` naming its type."""
    for plain in (str, int, float):  # bool is an int, but msgspec encodes bool itself
        if isinstance(value, plain):
            return plain(value)
    raise TypeError(f"cannot send a {type(value).__name__} to the server: {value!r}")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)


def _with_body(body: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for httpx with ``body`` encoded as JSON by msgspec (structs, or plain data holding them)."""
    if body is None:
        return kwargs
    return kwargs | {"content": _ENCODER.encode(body), "headers": {"Content-Type": "application/json"}}


def _decode(response: httpx.Response, answer: type[T]) -> T:
    """The 2xx ``response`` decoded as ``answer``; :class:`ApiError` ``malformed_answer`` when it is not."""
    try:
        return msgspec.json.decode(response.content, type=answer)
    except msgspec.DecodeError as exc:  # ValidationError included: valid JSON of another shape
        raise ApiError(
            response.status_code,
            ErrorCode.MALFORMED_ANSWER,
            f"The server's answer to {response.request.method} {response.request.url.path} is not what "
            f"this client expects ({exc}); is the server a different version?",
        ) from None
