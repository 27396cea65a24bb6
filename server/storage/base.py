"""The storage seam: what the server needs from object storage, whatever holds the bytes.

Both backends (``local`` and ``s3``) implement :class:`Storage` and pass one shared contract
suite (``tests/server/test_storage_contract.py``). Bytes never travel through the API: the server
presigns a PUT that binds key, method, size, MD5, content type and expiry, the client writes straight
to storage, and ``stat`` later tells the server what really landed.
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime


class StorageError(Exception):
    """Storage could not do what was asked (unreachable, refused, misconfigured)."""


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """A request the client makes straight to storage, exactly as signed."""

    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What storage holds under a key: its size in bytes and the hex MD5 of its bytes."""

    key: str
    size: int
    md5_hex: str


@dataclass(frozen=True, slots=True)
class Usage:
    """How much is stored under a prefix."""

    objects: int
    bytes: int


class Storage(abc.ABC):
    """Object storage as the server sees it. Keys look like ``mask/{annotation_id}/{group_id}/{filename}``."""

    name: str

    @abc.abstractmethod
    def presign_put(
        self, key: str, *, size: int, content_md5: str, content_type: str, ttl_seconds: int
    ) -> PresignedRequest:
        """Sign one PUT of exactly ``size`` bytes whose MD5 is ``content_md5`` (base64) to ``key``.

        Storage itself must refuse a body whose digest differs, a different key, method or content
        type, and any use after the TTL.
        """

    @abc.abstractmethod
    def presign_get(self, key: str, *, ttl_seconds: int) -> PresignedRequest:
        """Sign one GET of ``key`` valid for ``ttl_seconds``."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and MD5 of the object at ``key``, or ``None`` when nothing is stored there."""

    def stat_many(self, prefix: str, keys: Sequence[str]) -> list[ObjectInfo | None]:  # noqa: ARG002
        """What :meth:`stat` says for each key, all under ``prefix``, in the order given.

        The default stats the keys in parallel. A backend may answer from one listing instead, where the
        MD5 comes from the listed ETag: callers confirm any disagreement with :meth:`stat`.
        """
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(self.stat, keys))

    def make_durable(self, keys: Sequence[str]) -> None:  # noqa: B027 - S3 and its kin need nothing
        """Make sure the objects at ``keys`` survive a crash or power cut; raise :class:`StorageError` if not.

        ``complete`` calls this after checking the objects and before registering them. Object stores
        are durable once they answer a PUT, so the default does nothing; local disk fsyncs here.
        """

    @abc.abstractmethod
    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream the object's bytes in chunks. Raises ``KeyError`` when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (MD5 may be empty where listing lacks it)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted. Safe to repeat."""

    def usage(self, prefix: str) -> Usage:
        """Objects and bytes under ``prefix``."""
        objects = total = 0
        for info in self.list(prefix):
            objects += 1
            total += info.size
        return Usage(objects=objects, bytes=total)

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageError` when storage cannot be used now (for ``/health``)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients and pools."""


def md5_b64_to_hex(content_md5: str) -> str:
    """Convert a Content-MD5 header value (base64 of 16 bytes) to lowercase hex.

    Raises ``ValueError`` for anything that is not base64 of exactly 16 bytes.
    """
    try:
        raw = base64.b64decode(content_md5, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("content_md5 must be the base64 of a 16-byte MD5 digest") from exc
    if len(raw) != 16:
        raise ValueError("content_md5 must be the base64 of a 16-byte MD5 digest")
    return raw.hex()


def md5_hex_to_b64(md5_hex: str) -> str:
    """Convert a hex MD5 to the base64 form used by the Content-MD5 header."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")
