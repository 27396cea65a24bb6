"""Logging: one JSON object per line on stderr, ready for Loki; never tokens or URL signatures."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

_SECRET_PATTERNS = [
    (
        re.compile(r"(?i)(signature|x-amz-signature|x-amz-credential|x-amz-security-token)=[^&\s\"']+"),
        r"\1=REDACTED",
    ),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1REDACTED"),
]


def redact(text: str) -> str:
    """Remove bearer tokens and URL signatures from ``text``."""
    if "=" not in text and "bearer" not in text.lower():
        return text  # neither pattern can match: skip the regexes (every request logs ~10 fields)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; ``extra=`` fields are kept, secrets are redacted."""

    # ``color_message`` is uvicorn's ANSI-coloured copy of the message: noise in a log store.
    _STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                payload[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "botocore", "boto3", "urllib3", "httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_access_log = logging.getLogger("pacs_mask.access")
CLIENT_CLOSED = 499
"""The status logged for a request whose client disconnected before it was answered."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own label; anything else is counted as ``OTHER`` (bounded labels)."""
UPLOAD_ROUTE = "/storage/{key}"
"""The route template of signed uploads to local storage, as the request log shows it."""


class RequestLogMiddleware:
    """ASGI wrapper writing one JSON line per HTTP request to the ``pacs_mask.access`` logger.

    Fields: ``method``, ``route`` (the route template, e.g. ``/api/mask-group/{group_id:str}/complete``),
    ``path``, ``status``, ``duration_ms``, ``actor`` (the token's name, when authenticated), ``group``
    and ``annotation`` (from the path, when present) and ``client``. The query string is never logged:
    it carries the signatures of signed URLs. It wraps the whole application (routing, authentication
    and error handling included), so unknown routes and refused tokens are logged too; it also counts
    every request in ``pacs_mask_http_requests_total``.

    Successful signed uploads (``PUT /storage/{key}``, one per slice) are logged at DEBUG: a group of
    1000 slices would otherwise write 1000 lines that say nothing the audit log's ``group.sign`` and
    ``group.complete`` do not, and writing them cost 16 % of the server's CPU during an upload
    (measured). Refused uploads are logged at INFO like every other request; set
    ``PACS_MASK_LOG_LEVEL=DEBUG`` to see every PUT.
    """

    def __init__(self, app: ASGIApp, metrics: Any | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Until an answer starts: 499 (nginx's "client closed request") if the app returns without one,
        # which it only does when the client hung up; 500 if it raises.
        status = CLIENT_CLOSED

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status == CLIENT_CLOSED:
                status = 500
            raise
        finally:
            self._log(scope, status, time.perf_counter() - started)

    def _log(self, scope: HTTPScope, status: int, seconds: float) -> None:
        route = scope.get("path_template") or "(no route)"
        method = scope.get("method", "")
        if self.metrics is not None:
            label = method if method in KNOWN_METHODS else "OTHER"  # any token is a valid HTTP method
            self.metrics.http_requests.labels(method=label, route=route, status=str(status)).inc()
            self.metrics.http_request_seconds.labels(method=label, route=route).observe(seconds)
        if status >= 500:
            level = logging.ERROR
        elif status < 400 and method == "PUT" and route == UPLOAD_ROUTE:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not _access_log.isEnabledFor(level):
            return
        params = scope.get("path_params") or {}
        user = scope.get("user")
        client = scope.get("client")
        fields: dict[str, Any] = {
            "event": "http.request",
            "method": method,
            "route": route,
            "path": redact(scope.get("path", "")),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "actor": getattr(user, "name", None),
            "group": _short(params.get("group_id")),
            "annotation": _short(params.get("annotation_id")),
            "client": client[0] if client else None,
        }
        _access_log.log(level, "%s %s %s", method, route, status, extra=fields)


def _short(value: object) -> str | None:
    """A path parameter fit for a log field (bounded length)."""
    return None if value is None else str(value)[:80]
