"""``PUT/GET /storage/{key}``: the local backend's signed upload and download routes.

These answer like an object store would: the signature (not an API token) authorizes the request.
Checks, in order: signature and expiry (403), declared length against the signed size (413), body
length (400 short, 413 long) and digest (400 ``bad_digest``, like S3's BadDigest). Nothing is written
unless every check passes; the write itself is atomic and create-only: a PUT of the bytes already
stored under the key answers 200 again (a retry whose first answer was lost), a PUT of other bytes
answers 412 ``object_exists`` (as S3 answers a create-only PUT, ``If-None-Match: *``) and changes
nothing, so no URL can ever change an object of a completed group.

Uploads are the server's hot path (one PUT per slice, thousands per group), so :class:`StorageUploads`
serves them as plain ASGI in front of the framework, inside the request log. Measured on the 2-core
development machine, 1000 PUTs from the upload engine: through Litestar's routing, auth middleware,
parameter parsing and response objects the server held the GIL for about 1.7 ms per PUT, over half of
it in the framework; served here, ~0.5 ms (see ``benchmarks/upload_1000.py``). Errors keep the API's one
JSON shape. Downloads are rare and stay an ordinary route.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl

from litestar import Request, Response, get, put
from litestar.enums import ScopeType
from litestar.params import FromPath
from litestar.response import Stream
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from server.context import AppParts
from server.contract.errors import ErrorCode
from server.errors import ApiError, Forbidden, InvalidRequest, NotFound, PreconditionFailed, TooLarge
from server.logs import UPLOAD_ROUTE
from server.storage.base import ObjectExists
from server.storage.local import InvalidKey, LocalStorage

log = logging.getLogger("pacs_mask.server")


PREFIX = "/storage/"
INLINE_WRITE_MAX = 256 * 1024
"""Uploads up to this size are written on the event loop; larger ones in a worker thread."""
ROUTE = "/storage/{key:path}"


class ClientGone(Exception):
    """The client disconnected before the whole body arrived: nothing is written, nothing answered."""


def _local(parts: AppParts) -> LocalStorage:
    storage = parts.storage
    if not isinstance(storage, LocalStorage):
        raise NotFound(
            "This server stores objects in S3; upload to the URL the API signed.",
            code=ErrorCode.NO_LOCAL_STORAGE,
        )
    return storage


def _check_signature(
    parts: AppParts,
    storage: LocalStorage,
    method: str,
    key: str,
    query: Mapping[str, str],
    *,
    size: int | None,
    md5: str,
    ctype: str,
) -> None:
    signature = query.get("signature", "")
    try:
        expires = int(query.get("expires", ""))
    except ValueError:
        parts.metrics.failure("signature")
        raise Forbidden("This URL is not signed.", code=ErrorCode.SIGNATURE_MISSING) from None
    try:
        # Lexical check only: cheap on the event loop. The resolved-path check (symlinks) runs where the
        # file is touched: in the write thread for uploads, in size/open for downloads (see _invalid_key).
        storage.check_key(key)
    except InvalidKey:
        raise _invalid_key(parts) from None
    valid = storage.verify(
        method, key, expires=expires, size=size, content_md5=md5, content_type=ctype, signature=signature
    )
    if not valid:
        parts.metrics.failure("signature")
        raise Forbidden(
            "The signature does not match this request: the URL, method, key, size, Content-MD5 and "
            "Content-Type must be exactly as signed.",
            code=ErrorCode.SIGNATURE_MISMATCH,
        )
    if time.time() > expires:
        parts.metrics.failure("expired")
        raise Forbidden(
            "This signed URL has expired; ask the server for a new one.",
            code=ErrorCode.EXPIRED_URL,
            details={"expired_at": expires},
        )


def _invalid_key(parts: AppParts) -> Forbidden:
    parts.metrics.failure("signature")
    return Forbidden("This URL does not name a valid object.", code=ErrorCode.SIGNATURE_MISMATCH)


class StorageUploads:
    """ASGI wrapper that serves ``PUT /storage/{key}`` itself and passes everything else to ``app``.

    A request carrying an ``Origin`` header (a browser) goes to ``app``, whose CORS layer adds its
    headers, and there to :func:`put_object`, which runs the same :func:`receive_upload`.
    """

    def __init__(self, app: ASGIApp, parts: AppParts) -> None:
        self.app = app
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not (
            scope["method"] == "PUT"
            and scope["path"].startswith(PREFIX)
            and not any(name == b"origin" for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        scope["path_template"] = UPLOAD_ROUTE
        try:
            etag = await receive_upload(self.parts, scope, receive)
        except ClientGone:
            return
        except ApiError as exc:
            await _answer(send, exc.status_code, json.dumps(exc.body()).encode(), b"application/json")
            return
        except Exception:
            log.exception("unhandled error on PUT %s", UPLOAD_ROUTE)
            body = {
                "error": "internal_error",
                "message": "The server hit an unexpected error; it has been logged. Please report it.",
                "details": {},
            }
            await _answer(send, 500, json.dumps(body).encode(), b"application/json")
            return
        await _answer(send, 200, b"", b"application/octet-stream", etag=etag)


async def receive_upload(parts: AppParts, scope: Scope, receive: Receive) -> str:
    """Check and store one signed upload; return the stored object's ETag (its quoted MD5)."""
    storage = _local(parts)
    key = scope["path"][len(PREFIX) :].lstrip("/")
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    headers = dict(scope["headers"])
    try:
        signed_size = int(query.get("size", ""))
    except ValueError:
        raise Forbidden("This URL is not signed.", code=ErrorCode.SIGNATURE_MISSING) from None
    md5 = headers.get(b"content-md5", b"").decode("latin-1")
    ctype = headers.get(b"content-type", b"").decode("latin-1")
    _check_signature(parts, storage, "PUT", key, query, size=signed_size, md5=md5, ctype=ctype)
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > signed_size:
        parts.metrics.failure("oversize")
        raise TooLarge(f"The body is {int(declared)} bytes; this URL was signed for {signed_size}.")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":  # "http.disconnect": the client hung up
            raise ClientGone
        body += message.get("body", b"")
        if len(body) > signed_size:
            parts.metrics.failure("oversize")
            raise TooLarge(f"The body is larger than the {signed_size} bytes this URL was signed for.")
        if not message.get("more_body", False):
            break
    if len(body) != signed_size:
        raise InvalidRequest(
            f"The body is {len(body)} bytes; this URL was signed for {signed_size}.",
            code=ErrorCode.INCOMPLETE_BODY,
        )
    actual = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
    if actual != md5:
        parts.metrics.failure("digest")
        raise ApiError(
            "The body's MD5 does not match Content-MD5: the data was corrupted on the way. Nothing was stored.",
            code=ErrorCode.BAD_DIGEST,
            details={"expected": md5, "received": actual},
        )
    # A mask-sized write (temp file, write, rename; no fsync, see LocalStorage) takes ~0.1 ms in the page
    # cache: doing it on the event loop beat handing it to a thread, whose wake-ups and GIL hand-offs
    # cost more than the write (Linux, 1000 PUTs: 1.02 s in the executor, 0.68 s inline; measured).
    # Larger bodies, and every write on Windows (where an antivirus may scan each file as it closes),
    # go to the executor so one slow write never stalls every other request.
    try:
        if len(body) <= INLINE_WRITE_MAX and os.name != "nt":
            info = storage.write(key, (bytes(body),))
        else:
            info = await asyncio.get_running_loop().run_in_executor(None, storage.write, key, (bytes(body),))
    except InvalidKey:
        raise _invalid_key(parts) from None
    except ObjectExists as exc:
        parts.metrics.failure("object_exists")
        raise PreconditionFailed(
            "Other bytes are already stored under this key; stored objects are never replaced. Nothing "
            "was written.",
            details={"stored_md5": exc.stored.md5_hex if exc.stored else None},
        ) from None
    return f'"{info.md5_hex}"'


async def _answer(
    send: Send, status: int, body: bytes, content_type: bytes, *, etag: str | None = None
) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if etag is not None:
        headers.append((b"etag", etag.encode()))
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


@put(ROUTE, status_code=200, include_in_schema=False, request_max_body_size=None)
async def put_object(request: Request) -> Response[bytes]:
    """Receive one signed upload from a browser (CORS); other clients are served by StorageUploads."""
    try:
        etag = await receive_upload(request.app.state.parts, request.scope, request.receive)
    except ClientGone:
        return Response(b"", status_code=400)  # nobody is listening; the status is for the log
    return Response(b"", headers={"ETag": etag}, media_type="application/octet-stream")


@get(ROUTE, include_in_schema=False)
async def get_object(request: Request, key: FromPath[str]) -> Stream:
    """Serve one signed download."""
    parts: AppParts = request.app.state.parts
    storage = _local(parts)
    key = key.lstrip("/")
    _check_signature(parts, storage, "GET", key, request.query_params, size=None, md5="", ctype="")
    try:
        size = storage.size(key)
    except InvalidKey:
        raise _invalid_key(parts) from None
    if size is None:
        raise NotFound("No object is stored under this key.", code=ErrorCode.NO_SUCH_KEY)
    return Stream(
        storage.open(key), media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )
