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


class ObjectExists(StorageError):
    """Other bytes are already stored under the key: stored objects are created once, never replaced.

    ``stored`` is what the key holds (``None`` if it vanished meanwhile).
    """

    def __init__(self, key: str, stored: ObjectInfo | None) -> None:
        super().__init__(f"an object with other bytes is already stored under {key!r}")
        self.key = key
        self.stored = stored


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

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:  # noqa: ARG002
        """Store ``data`` at ``key`` from the server itself (a built DICOM SEG), durably; its size and MD5.

        Slices never go this way (clients PUT them to signed URLs); this is for objects the server makes.
        Keys are fresh (they hold a new UID), so a backend need not guard against replacing an object.
        """
        raise StorageError(f"the {self.name} backend cannot store objects from the server")

    @abc.abstractmethod
    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream the object's bytes in chunks. Raises ``KeyError`` when it does not exist."""

    def read(self, key: str) -> bytes:
        """The whole (small) object at ``key``, e.g. one mask slice; ``KeyError`` when it does not exist."""
        return b"".join(self.open(key, chunk_size=1024 * 1024))

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """``(key, bytes)`` of every one of ``keys``, in any order, as they arrive; ``KeyError`` for a
        missing one. For reading a group's slices (``server.services.compare``): one after another here
        (a local disk answers from the page cache faster than threads help); a network backend overlaps
        its requests.
        """
        for key in keys:
            yield key, self.read(key)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects at ``keys`` (missing ones are fine); raise :class:`StorageError` if not.

        Objects are never replaced, so ``complete`` removes, from a pending group, an object that holds
        other bytes than its filename was signed for (e.g. a file a power cut left empty): the client's
        re-sent PUT can land only once it is gone. Both backends implement it; the default refuses.
        """
        if keys:
            raise StorageError(f"the {self.name} backend cannot delete single objects")

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
