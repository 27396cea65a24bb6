"""Local-disk storage: objects under the data dir, written through the server's own signed routes.

Like Rails ActiveStorage's disk service, a presigned URL points at this server's ``/storage/{key}``
route and carries an HMAC token over method, key, size, Content-MD5, Content-Type and expiry. The route
(``server.api.storage_routes``) checks the token and the body, then calls :meth:`LocalStorage.write`,
which writes atomically (temp file, fsync, rename) and never outside the root.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from server.storage.base import ObjectInfo, PresignedRequest, Storage, StorageError

_CHUNK = 256 * 1024


class InvalidKey(ValueError):
    """A key that could name a place outside the storage root or is otherwise malformed."""


class LocalStorage(Storage):
    """Objects as files under ``root``; presigned requests go to ``{public_url}/storage/{key}``."""

    name = "local"

    def __init__(self, root: Path, *, public_url: str, signing_key: bytes) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self._key = signing_key

    # --- signing -------------------------------------------------------------------------------------

    def signature(
        self, method: str, key: str, *, expires: int, size: int | None, content_md5: str, content_type: str
    ) -> str:
        """The HMAC-SHA256 token over everything a request is bound to."""
        message = "\n".join(
            [method.upper(), key, str(expires), "" if size is None else str(size), content_md5, content_type]
        )
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def _url(self, key: str, params: dict[str, str]) -> str:
        # The values are decimal numbers and hex digests: nothing to escape (urlencode is slow per URL).
        query = "&".join(f"{name}={value}" for name, value in params.items())
        return f"{self.public_url}/storage/{quote(key, safe='/')}?{query}"

    def presign_put(
        self, key: str, *, size: int, content_md5: str, content_type: str, ttl_seconds: int
    ) -> PresignedRequest:
        """Sign a PUT to this server's storage route; see the module docstring for what is bound."""
        self.check_key(key)
        expires = int(time.time()) + ttl_seconds
        sig = self.signature(
            "PUT", key, expires=expires, size=size, content_md5=content_md5, content_type=content_type
        )
        return PresignedRequest(
            url=self._url(key, {"expires": str(expires), "size": str(size), "signature": sig}),
            method="PUT",
            headers={"Content-MD5": content_md5, "Content-Type": content_type},
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    def presign_get(self, key: str, *, ttl_seconds: int) -> PresignedRequest:
        """Sign a GET of ``key`` through this server's storage route."""
        self.check_key(key)
        expires = int(time.time()) + ttl_seconds
        sig = self.signature("GET", key, expires=expires, size=None, content_md5="", content_type="")
        return PresignedRequest(
            url=self._url(key, {"expires": str(expires), "signature": sig}),
            method="GET",
            headers={},
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    def verify(
        self,
        method: str,
        key: str,
        *,
        expires: int,
        size: int | None,
        content_md5: str,
        content_type: str,
        signature: str,
    ) -> bool:
        """True when ``signature`` was made by this server for exactly these values (constant time)."""
        expected = self.signature(
            method, key, expires=expires, size=size, content_md5=content_md5, content_type=content_type
        )
        return hmac.compare_digest(expected, signature)

    # --- files ---------------------------------------------------------------------------------------

    @staticmethod
    def check_key(key: str) -> list[str]:
        """The key's parts; raises :class:`InvalidKey` for a key that could name a place outside the root.

        Purely lexical (no file system calls), so signing stays cheap; :meth:`path_for` adds the
        resolved-path check before any file is touched.
        """
        parts = key.split("/")
        if (
            not key
            or len(key) > 1024
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
            or any(c in key for c in ("\\", "\x00", ":"))
        ):
            raise InvalidKey(f"invalid storage key {key!r}")
        return parts

    def path_for(self, key: str) -> Path:
        """The file for ``key``; raises :class:`InvalidKey` for anything that could leave the root."""
        parts = self.check_key(key)
        path = (self.root / Path(*parts)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"invalid storage key {key!r}")
        return path

    def write(self, key: str, chunks: Iterable[bytes]) -> ObjectInfo:
        """Write ``chunks`` to ``key`` atomically: temp file, fsync, rename. Returns what was written."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{uuid.uuid4().hex}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return ObjectInfo(key=key, size=size, md5_hex=digest.hexdigest())

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and MD5 of the file, hashing its bytes (the truth, not a cached claim)."""
        path = self.path_for(key)
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False))
                size = handle.tell()
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=size, md5_hex=digest.hexdigest())

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream the file in chunks; ``KeyError`` when missing."""
        path = self.path_for(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        return _read_chunks(handle, chunk_size)

    def size(self, key: str) -> int | None:
        """The size of the object at ``key`` without hashing it, or ``None`` when missing."""
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (MD5 left empty: listing must stay cheap)."""
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if base.is_file():
            yield ObjectInfo(key=prefix, size=base.stat().st_size, md5_hex="")
            return
        if not base.resolve().is_relative_to(self.root) or not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue  # temp files of writes in progress
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key=key, size=full.stat().st_size, md5_hex="")

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and the folders left empty. Safe to repeat."""
        if not prefix.strip("/"):
            raise StorageError("refusing to delete the whole storage root")
        deleted = 0
        for info in list(self.list(prefix)):
            self.path_for(info.key).unlink(missing_ok=True)
            deleted += 1
        base = self.root / prefix.rstrip("/")
        if base.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(t[0])):
                # Not empty: a write landed meanwhile or a temp file is in progress.
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()
        return deleted

    def check(self) -> None:
        """The root must exist and be writable."""
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise StorageError(f"local storage root is missing or not writable: {self.root}")


def _read_chunks(handle, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _fsync_dir(path: Path) -> None:
    """Make a rename durable where the platform allows opening directories (not on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
