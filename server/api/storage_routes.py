"""``PUT/GET /storage/{key}``: the local backend's signed upload and download routes.

These answer like an object store would: the signature (not an API token) authorizes the request.
Checks, in order: signature and expiry (403), declared length against the signed size (413), body
length (400 short, 413 long) and digest (400 ``bad_digest``, like S3's BadDigest). Nothing is written
unless every check passes; the write itself is atomic.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

from litestar import Request, Response, get, put
from litestar.params import FromPath
from litestar.response import Stream

from server.context import AppParts
from server.errors import ApiError, Forbidden, InvalidRequest, NotFound, TooLarge
from server.storage.local import InvalidKey, LocalStorage


def _local(request: Request) -> LocalStorage:
    storage = request.app.state.parts.storage
    if not isinstance(storage, LocalStorage):
        raise NotFound(
            "This server stores objects in S3; upload to the URL the API signed.", code="no_local_storage"
        )
    return storage


def _check_signature(
    request: Request, storage: LocalStorage, method: str, key: str, *, size: int | None, md5: str, ctype: str
) -> None:
    parts: AppParts = request.app.state.parts
    query = request.query_params
    signature = query.get("signature", "")
    try:
        expires = int(query.get("expires", ""))
    except ValueError:
        parts.metrics.failure("signature")
        raise Forbidden("This URL is not signed.", code="signature_missing") from None
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
            code="signature_mismatch",
        )
    if time.time() > expires:
        parts.metrics.failure("expired")
        raise Forbidden(
            "This signed URL has expired; ask the server for a new one.",
            code="expired_url",
            details={"expired_at": expires},
        )


def _invalid_key(parts: AppParts) -> Forbidden:
    parts.metrics.failure("signature")
    return Forbidden("This URL does not name a valid object.", code="signature_mismatch")


@put("/storage/{key:path}", status_code=200, include_in_schema=False, request_max_body_size=None)
async def put_object(request: Request, key: FromPath[str]) -> Response[bytes]:
    """Receive one signed upload."""
    storage = _local(request)
    parts: AppParts = request.app.state.parts
    key = key.lstrip("/")
    try:
        signed_size = int(request.query_params.get("size", ""))
    except ValueError:
        raise Forbidden("This URL is not signed.", code="signature_missing") from None
    md5 = request.headers.get("content-md5", "")
    ctype = request.headers.get("content-type", "")
    _check_signature(request, storage, "PUT", key, size=signed_size, md5=md5, ctype=ctype)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > signed_size:
        parts.metrics.failure("oversize")
        raise TooLarge(f"The body is {declared} bytes; this URL was signed for {signed_size}.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > signed_size:
            parts.metrics.failure("oversize")
            raise TooLarge(f"The body is larger than the {signed_size} bytes this URL was signed for.")
    if len(body) != signed_size:
        raise InvalidRequest(
            f"The body is {len(body)} bytes; this URL was signed for {signed_size}.", code="incomplete_body"
        )
    actual = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
    if actual != md5:
        parts.metrics.failure("digest")
        raise ApiError(
            "The body's MD5 does not match Content-MD5: the data was corrupted on the way. Nothing was stored.",
            code="bad_digest",
            details={"expected": md5, "received": actual},
        )
    # The blocking part (resolve the path, temp file, write, fsync, rename, fsync the folder) runs on the
    # event loop's default executor: ~25 µs a call here, against 45-60 µs for anyio's worker threads.
    try:
        info = await asyncio.get_running_loop().run_in_executor(None, storage.write, key, (bytes(body),))
    except InvalidKey:
        raise _invalid_key(parts) from None
    return Response(b"", headers={"ETag": f'"{info.md5_hex}"'}, media_type="application/octet-stream")


@get("/storage/{key:path}", include_in_schema=False)
async def get_object(request: Request, key: FromPath[str]) -> Stream:
    """Serve one signed download."""
    storage = _local(request)
    key = key.lstrip("/")
    _check_signature(request, storage, "GET", key, size=None, md5="", ctype="")
    try:
        size = storage.size(key)
    except InvalidKey:
        raise _invalid_key(request.app.state.parts) from None
    if size is None:
        raise NotFound("No object is stored under this key.", code="no_such_key")
    return Stream(
        storage.open(key), media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )
