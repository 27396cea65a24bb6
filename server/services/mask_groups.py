"""Mask groups: create, sign uploads, complete, list, view and delete (reviews: ``server.services.review``).

Data-safety rules this module keeps:
- ``complete`` verifies every object in storage first, then writes all slice rows and flips the group
  to ``complete`` in one transaction. A repeat with the same body returns the same answer; two racing
  completes end with one set of rows (unique constraints plus a conditional status update).
- A completed group is immutable: no signing, no second complete with other content. Signed URLs bind
  the MD5 of the bytes, and each filename's first signature fixes its bytes (``SignedUpload``): while
  any URL for them may be valid, other bytes are refused at signing, and ``complete`` refuses stored
  bytes other than the last signed ones while those URLs may be valid. So no URL still valid after
  completion can write anything but the registered bytes, even on an S3 server that ignores the
  create-only ``If-None-Match: *``; storage that honours it (and the local backend) refuses even that.
- Only the group's creator or an admin signs, completes or continues ("adopts") a pending group.
- ``delete`` marks the group ``deleting`` first, removes objects, then rows. A storage failure midway
  leaves it ``deleting`` (listed, not usable); repeating the delete finishes it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server import audit
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.contract.naming import INT32_MAX, content_type_problem, filename_problem, parse_id
from server.db.models import Annotation, Mask, MaskGroup, SignedUpload, table_of, utcnow
from server.db.session import rowcount
from server.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StorageUnavailable,
    TooLarge,
    Unprocessable,
)
from server.naming import group_prefix, mask_key
from server.services.serialize import group_out, mask_out, review_history
from server.services.series import index_problem, load_shape, raise_geometry_mismatch, slice_problems
from server.storage.base import ObjectInfo, StorageError, md5_b64_to_hex


def parse_group_id(value: str) -> uuid.UUID:
    """The UUID in a path, or a 404 that says the id is not a group id."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"'{value}' is not a mask group id.", code=ErrorCode.GROUP_NOT_FOUND) from None


def load_group(session: Session, group_id: uuid.UUID, *, for_update: bool = False) -> MaskGroup:
    """The group row (locked for update when asked), or 404 ``group_not_found``; shared by the SEG services."""
    query = select(MaskGroup).where(MaskGroup.id == group_id)
    if for_update:
        query = query.with_for_update()
    group = session.scalar(query)
    if group is None:
        raise NotFound(f"Mask group {group_id} does not exist.", code=ErrorCode.GROUP_NOT_FOUND)
    return group


def slice_count(session: Session, group_id: uuid.UUID) -> int:
    """How many slices are registered for the group."""
    return session.scalar(select(func.count()).where(Mask.group_id == group_id)) or 0


# --- create ------------------------------------------------------------------------------------------


def create_group(call: Call, data: messages.GroupCreate) -> messages.GroupOut:
    """Create a pending group; 409 naming the existing group when (annotation, model, version) is taken."""
    with call.db.session() as session:
        if session.get(Annotation, data.annotation_id) is None:
            raise NotFound(
                f"Annotation {data.annotation_id} does not exist.", code=ErrorCode.ANNOTATION_NOT_FOUND
            )
        existing = _find_existing(session, data)
        if existing is not None:
            raise _duplicate(existing)
    try:
        with call.db.session() as session:
            group = MaskGroup(
                annotation_id=data.annotation_id,
                model_name=data.model_name,
                version=data.version,
                source=data.source,
                status="pending",
                expected_slices=data.expected_slices,
                confidence=data.confidence,
                params=data.params,
                labels=msgspec.to_builtins(data.labels) if data.labels else None,
                created_by=call.actor.name,
            )
            session.add(group)
            session.flush()
            audit.record(
                session,
                call,
                "group.create",
                annotation_id=group.annotation_id,
                group_id=group.id,
                detail={"model_name": data.model_name, "version": data.version, "source": data.source},
            )
            return group_out(group, 0)
    except IntegrityError:
        with call.db.session() as session:
            existing = _find_existing(session, data)
        if existing is None:
            raise
        raise _duplicate(existing) from None


def _find_existing(session: Session, data: messages.GroupCreate) -> MaskGroup | None:
    return session.scalar(
        select(MaskGroup).where(
            MaskGroup.annotation_id == data.annotation_id,
            MaskGroup.model_name == data.model_name,
            MaskGroup.version == data.version,
        )
    )


def _duplicate(existing: MaskGroup) -> Conflict:
    return Conflict(
        f"Annotation {existing.annotation_id} already has a mask group for {existing.model_name} "
        f"version {existing.version} ({existing.id}, {existing.status}).",
        code=ErrorCode.DUPLICATE_GROUP,
        details={"group_id": str(existing.id), "status": existing.status},
    )


# --- sign --------------------------------------------------------------------------------------------


def sign_urls(call: Call, group_ref: str, data: messages.SignRequest) -> messages.SignResponse:
    """Signed PUT URLs for a batch of slices of a pending group, every problem listed at once."""
    started = time.perf_counter()
    group_id = parse_group_id(group_ref)
    limit = call.settings.max_slice_bytes
    problems: list[dict[str, str]] = []
    oversize: list[dict[str, object]] = []
    seen: set[str] = set()
    for item in data.slices:
        reason = filename_problem(item.filename) or content_type_problem(item.filename, item.content_type)
        if reason is None and item.filename in seen:
            reason = "the same filename appears twice in this request"
        if reason is None:
            try:
                md5_b64_to_hex(item.content_md5)
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            problems.append({"filename": item.filename, "reason": reason})
        if item.size > limit:
            oversize.append({"filename": item.filename, "size": item.size, "limit": limit})
        seen.add(item.filename)
    if oversize:
        call.metrics.failure("oversize", len(oversize))
        raise TooLarge(
            f"{len(oversize)} slice(s) exceed the limit of {limit} bytes per slice.",
            details={"slices": oversize},
        )
    if problems:
        raise Unprocessable(
            f"{len(problems)} slice(s) cannot be signed; nothing was signed.",
            code=ErrorCode.INVALID_SLICES,
            details={"slices": problems},
        )
    with call.db.session() as session:
        # Locked (PostgreSQL) until this signature is recorded: a racing complete waits and then sees it.
        group = load_group(session, group_id, for_update=True)
        _require_owner(call, group, "upload to")
        if group.status != "pending":
            raise Conflict(
                f"Mask group {group_id} is {group.status}; only pending groups accept uploads.",
                code=ErrorCode.GROUP_NOT_PENDING,
                details={"status": group.status},
            )
        shape = load_shape(session, group.annotation_id)
        if shape is not None:  # a declared slice index outside the series is refused before signing
            outside = [
                {"index": item.slice_index, "filename": item.filename, "reason": reason}
                for item in data.slices
                if item.slice_index is not None and (reason := index_problem(shape, item.slice_index))
            ]
            raise_geometry_mismatch(outside, shape, "signed")
        ttl = call.settings.url_ttl_seconds
        storage = call.storage
        urls = []
        for item in data.slices:
            key = mask_key(group.annotation_id, group.id, item.filename)
            signed = storage.presign_put(
                key,
                size=item.size,
                content_md5=item.content_md5,
                content_type=item.content_type,
                ttl_seconds=ttl,
            )
            urls.append(
                messages.SignedUrl(
                    filename=item.filename,
                    key=key,
                    url=signed.url,
                    method=signed.method,
                    headers=signed.headers,
                    expires_at=signed.expires_at,
                )
            )
        _bind_signed_bytes(session, group_id, data.slices, max((u.expires_at for u in urls), default=None))
        audit.record(
            session,
            call,
            "group.sign",
            annotation_id=group.annotation_id,
            group_id=group.id,
            detail={"count": len(urls), "ttl_seconds": ttl},
        )
    call.metrics.urls_signed.inc(len(urls))
    call.metrics.sign_seconds.observe(time.perf_counter() - started)
    return messages.SignResponse(urls=urls)


SIGNED_URL_GRACE_SECONDS = 300
"""How long after its ``expires_at`` a signed URL is still treated as usable: storage checks expiry on
its own clock, which may run behind the server's."""


def _require_owner(call: Call, group: MaskGroup, action: str) -> None:
    """403 ``not_group_owner`` unless the caller created ``group`` or is an admin."""
    if group.created_by != call.actor.name and not call.actor.has("admin"):
        raise Forbidden(
            f"Mask group {group.id} was created by '{group.created_by}'; only its creator or an admin can "
            f"{action} it. Upload under another model name or version to make a group of your own.",
            code=ErrorCode.NOT_GROUP_OWNER,
            details={"group_id": str(group.id), "created_by": group.created_by},
        )


def _aware(moment: datetime) -> datetime:
    """``moment`` as an aware UTC time (SQLite hands back naive UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _may_be_valid(expires_at: datetime, now: datetime) -> bool:
    """True while a URL signed to expire at ``expires_at`` may still be accepted by storage."""
    return _aware(expires_at) + timedelta(seconds=SIGNED_URL_GRACE_SECONDS) > now


def _lock_if_pending(session: Session, group_id: uuid.UUID) -> bool:
    """Whether the group is still pending, checked by a no-op conditional update: it takes the row's
    write lock (on SQLite the database's), so a racing ``complete`` cannot slip in before this
    transaction ends."""
    return (
        rowcount(
            session.execute(
                update(MaskGroup)
                .where(MaskGroup.id == group_id, MaskGroup.status == "pending")
                .values(status="pending")
            )
        )
        == 1
    )


def _bind_signed_bytes(
    session: Session, group_id: uuid.UUID, slices: Sequence[Any], expires_at: datetime | None
) -> None:
    """Record the size and MD5 each filename is signed for; 409 when other bytes may still be written.

    A filename keeps the bytes of its first signature while any URL for them may be valid; after
    that, a signature for other bytes replaces them. Called with the group locked; on SQLite the
    no-op update below takes the write lock, so a complete cannot slip between check and write.
    """
    if expires_at is None:
        return
    if not _lock_if_pending(session, group_id):
        raise Conflict(
            f"Mask group {group_id} stopped being pending while URLs were signed; nothing was signed.",
            code=ErrorCode.GROUP_NOT_PENDING,
        )
    now = utcnow()
    table = table_of(SignedUpload)
    names = [item.filename for item in slices]
    # Core rows and one statement per kind of change. Measured with benchmarks/sign_urls.py's server
    # time (1000 URLs re-signed, A/B in one process, busy 2-core machine): ORM objects and updates by
    # primary key added 100-250 ms to a 50-140 ms call; these statements add about 20 ms.
    known = {
        row.filename: row
        for row in session.execute(
            select(table.c.filename, table.c.size_bytes, table.c.checksum, table.c.expires_at).where(
                table.c.group_id == group_id, table.c.filename.in_(names)
            )
        )
    }
    conflicts, fresh, extended, replaced = [], [], [], []
    for item in slices:
        md5 = md5_b64_to_hex(item.content_md5)
        row = known.get(item.filename)
        if row is None:
            fresh.append(
                {
                    "group_id": group_id,
                    "filename": item.filename,
                    "size_bytes": item.size,
                    "checksum": md5,
                    "expires_at": expires_at,
                    "removals": 0,
                }
            )
        elif (row.size_bytes, row.checksum) == (item.size, md5):
            if _aware(row.expires_at) < expires_at:
                extended.append(item.filename)
        elif _may_be_valid(row.expires_at, now):
            conflicts.append(
                {
                    "filename": item.filename,
                    "signed_size": row.size_bytes,
                    "signed_md5": row.checksum,
                    "size": item.size,
                    "md5": md5,
                    "valid_until": (
                        _aware(row.expires_at) + timedelta(seconds=SIGNED_URL_GRACE_SECONDS)
                    ).isoformat(),
                }
            )
        else:
            replaced.append({"b_filename": item.filename, "b_size": item.size, "b_checksum": md5})
    if conflicts:
        raise Conflict(
            f"{len(conflicts)} slice(s) were already signed for other bytes, and those URLs may still be "
            "used; nothing was signed. A slice's bytes cannot change while its URLs are valid: upload the "
            "changed masks as a new version, or delete this pending group and upload again.",
            code=ErrorCode.SLICE_SIGNED_DIFFERENTLY,
            details={"slices": conflicts},
        )
    if fresh:
        session.execute(insert(table), fresh)
    if extended:
        session.execute(
            update(table)
            .where(table.c.group_id == group_id, table.c.filename.in_(extended))
            .values(expires_at=expires_at)
        )
    if replaced:  # the earlier bytes' URLs have all expired: these bytes take their place
        session.execute(
            update(table)
            .where(table.c.group_id == group_id, table.c.filename == bindparam("b_filename"))
            .values(size_bytes=bindparam("b_size"), checksum=bindparam("b_checksum"), expires_at=expires_at),
            replaced,
        )


def _remove_unsigned_objects(call: Call, group_id: uuid.UUID, mismatched: Sequence[_Checked]) -> list[str]:
    """Remove, from a pending group, stored objects that differ from what their filename is signed for.

    Only where the complete claims exactly the signed bytes (the client holds them and will send them
    again; the stored ones, e.g. a file a power cut left empty, can never be registered). Uploads are
    create-only, so without this the re-sent PUT could never land. With the group locked, each removal
    bumps ``SignedUpload.removals`` and the objects are deleted; a complete that looked at the objects
    before sees the bump and refuses (see :func:`_check_signed_bytes`). Returns the removed filenames.
    """
    failure: StorageError | None = None
    with call.db.session() as session:
        if not _lock_if_pending(session, group_id):
            return []
        names = [c.item.filename for c in mismatched]
        signed = {
            row.filename: row
            for row in session.scalars(
                select(SignedUpload).where(
                    SignedUpload.group_id == group_id, SignedUpload.filename.in_(names)
                )
            )
        }
        removable = [
            (c, signed[c.item.filename])
            for c in mismatched
            if c.item.filename in signed
            and signed[c.item.filename].checksum == c.item.checksum.lower()
            and (c.item.size is None or c.item.size == signed[c.item.filename].size_bytes)
        ]
        if not removable:
            return []
        now = utcnow()
        session.execute(
            update(SignedUpload),
            [
                {
                    "group_id": group_id,
                    "filename": row.filename,
                    "removals": row.removals + 1,
                    # No signature for other bytes until well after this complete: see _check_signed_bytes.
                    "expires_at": max(_aware(row.expires_at), now),
                }
                for _c, row in removable
            ],
        )
        try:
            call.storage.delete([c.key for c, _row in removable])
        except StorageError as exc:  # some may be gone: the bumps must stay
            failure = exc
    if failure is not None:
        call.metrics.failure("storage")
        raise StorageUnavailable(f"Storage could not remove damaged slices: {failure}") from failure
    return [c.item.filename for c, _row in removable]


def _check_signed_bytes(session: Session, group_id: uuid.UUID, checked: Sequence[_Checked]) -> None:
    """409 when a filename was last signed for other bytes than stored and that URL may still be used.

    Otherwise such a URL could write other bytes into the completed group on a server that ignores
    ``If-None-Match: *``. Also 409 when an object was removed (:func:`_remove_unsigned_objects`) after
    this complete looked at it. Run in the completing transaction, after the conditional status update.
    """
    now = utcnow()
    table = table_of(SignedUpload)
    columns = (table.c.filename, table.c.size_bytes, table.c.checksum, table.c.expires_at, table.c.removals)
    signed = {
        row.filename: row for row in session.execute(select(*columns).where(table.c.group_id == group_id))
    }
    removed = [
        c.item.filename
        for c in checked
        if (row := signed.get(c.item.filename)) is not None and row.removals != c.removals
    ]
    if removed:
        raise Conflict(
            f"{len(removed)} slice(s) were removed as damaged while this complete checked them; nothing "
            "was registered. Upload them again and complete.",
            code=ErrorCode.OBJECTS_MISSING,
            details={"missing": removed, "mismatched": []},
        )
    conflicts = []
    for c in checked:
        row = signed.get(c.item.filename)
        if (
            row is not None
            and (row.size_bytes, row.checksum) != (c.info.size, c.info.md5_hex)
            and _may_be_valid(row.expires_at, now)
        ):
            conflicts.append(
                {
                    "filename": c.item.filename,
                    "signed_md5": row.checksum,
                    "stored_md5": c.info.md5_hex,
                    "valid_until": (
                        _aware(row.expires_at) + timedelta(seconds=SIGNED_URL_GRACE_SECONDS)
                    ).isoformat(),
                }
            )
    if conflicts:
        raise Conflict(
            f"{len(conflicts)} slice(s) were last signed for other bytes than stored, and those URLs may "
            "still be used; nothing was registered. Sign and upload the slices again, then complete.",
            code=ErrorCode.SLICE_SIGNED_DIFFERENTLY,
            details={"slices": conflicts},
        )


# --- complete ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Checked:
    item: messages.SliceToComplete
    key: str
    info: ObjectInfo  # the stored object (a missing one refuses the complete before this is built)
    removals: int = 0  # the filename's SignedUpload.removals before its object was looked up


def complete_group(call: Call, group_ref: str, data: messages.CompleteRequest) -> messages.GroupOut:
    """Verify every object, then register all slices and mark the group complete, atomically."""
    started = time.perf_counter()
    group_id = parse_group_id(group_ref)
    _check_complete_body(data)
    with call.db.session() as session:
        group = load_group(session, group_id)
        _require_owner(call, group, "complete")
        annotation_id, status, expected = group.annotation_id, group.status, group.expected_slices
    if status == "complete":
        return _repeat_complete(call, group_id, data)
    if status != "pending":
        raise Conflict(
            f"Mask group {group_id} is {status}.",
            code=ErrorCode.GROUP_NOT_PENDING,
            details={"status": status},
        )
    if expected is not None and len(data.slices) != expected:
        raise Unprocessable(
            f"The group expects {expected} slices but the request lists {len(data.slices)}; nothing was "
            "registered.",
            code=ErrorCode.SLICE_COUNT_MISMATCH,
            details={"expected_slices": expected, "received": len(data.slices)},
        )
    _check_against_series(call, annotation_id, data.slices, "registered")
    checked = _verify_objects(call, annotation_id, group_id, data)
    with call.db.session() as session:
        now = utcnow()
        rows = [
            {
                "group_id": group_id,
                "filename": c.item.filename,
                "storage_key": c.key,
                "slice_index": c.item.slice_index,
                "sop_instance_uid": c.item.sop_instance_uid,
                "width": c.item.width,
                "height": c.item.height,
                "label": c.item.label,
                "checksum": c.item.checksum.lower(),
                "size_bytes": c.info.size,
                "content_type": "image/png",
                "created_at": now,
            }
            for c in checked
        ]
        try:
            # One Core executemany: flushing 1000 Mask objects took ~3x as long (measured).
            session.execute(insert(table_of(Mask)), rows)
        except IntegrityError:
            session.rollback()
            return _repeat_complete(call, group_id, data)
        flipped = rowcount(
            session.execute(
                update(MaskGroup)
                .where(MaskGroup.id == group_id, MaskGroup.status == "pending")
                .values(status="complete", completed_at=now)
            )
        )
        if flipped != 1:
            session.rollback()
            return _repeat_complete(call, group_id, data)
        _check_signed_bytes(session, group_id, checked)  # under the group's lock: a racing sign is seen
        total_bytes = sum(c.info.size for c in checked)
        audit.record(
            session,
            call,
            "group.complete",
            annotation_id=annotation_id,
            group_id=group_id,
            detail={"slices": len(checked), "bytes": total_bytes},
        )
        group = load_group(session, group_id)
        result = group_out(group, len(checked))
    call.metrics.completes.inc()
    call.metrics.slices_uploaded.inc(len(checked))
    call.metrics.bytes_uploaded.inc(total_bytes)
    call.metrics.complete_seconds.observe(time.perf_counter() - started)
    return result


def _check_against_series(call: Call, annotation_id: int, slices: Sequence[Any], what: str) -> None:
    """One 422 ``geometry_mismatch`` listing every slice that does not fit the annotation's series.

    Annotations recorded without geometry (older ones) are not checked here.
    """
    with call.db.session() as session:
        shape = load_shape(session, annotation_id)
    if shape is None:
        return
    raise_geometry_mismatch(slice_problems(shape, slices), shape, what)


def _check_complete_body(data: messages.CompleteRequest) -> None:
    problems = []
    names: set[str] = set()
    indexes: set[int] = set()
    for item in data.slices:
        reason = filename_problem(item.filename)
        if reason is None and item.filename in names:
            reason = "the same filename appears twice"
        if reason is None and item.slice_index in indexes:
            reason = f"slice_index {item.slice_index} appears twice"
        if reason:
            problems.append({"filename": item.filename, "reason": reason})
        names.add(item.filename)
        indexes.add(item.slice_index)
    if problems:
        raise Unprocessable(
            f"{len(problems)} slice(s) are invalid; nothing was registered.",
            code=ErrorCode.INVALID_SLICES,
            details={"slices": problems},
        )


def _verify_objects(
    call: Call, annotation_id: int, group_id: uuid.UUID, data: messages.CompleteRequest
) -> list[_Checked]:
    """Look up every object, compare it with the claims, then make the objects durable.

    ``stat_many`` may answer from a listing (S3: one ListObjectsV2 walk, where the MD5 is the ETag);
    a missing or differing object is stat'ed on its own before the call is refused, so an ETag that is
    not an MD5 (e.g. SSE-KMS) never refuses an intact object.
    """
    keys = [mask_key(annotation_id, group_id, item.filename) for item in data.slices]
    with call.db.session() as session:
        query = select(SignedUpload.filename, SignedUpload.removals).where(SignedUpload.group_id == group_id)
        removals: dict[str, int] = {row.filename: row.removals for row in session.execute(query)}
    try:
        infos = call.storage.stat_many(group_prefix(annotation_id, group_id), keys)
        found: list[tuple[messages.SliceToComplete, str, ObjectInfo | None]] = []
        for item, key, info in zip(data.slices, keys, infos, strict=True):
            if not _matches(item, info):
                info = call.storage.stat(key)
            found.append((item, key, info))
    except StorageError as exc:
        call.metrics.failure("storage")
        raise StorageUnavailable(f"Storage could not be checked: {exc}") from exc
    missing = [item.filename for item, _key, info in found if info is None]
    checked = [
        _Checked(item, key, info, removals.get(item.filename, 0))
        for item, key, info in found
        if info is not None
    ]
    corrupt = [
        {
            "filename": c.item.filename,
            "expected_md5": c.item.checksum.lower(),
            "stored_md5": c.info.md5_hex,
            "expected_size": c.item.size,
            "stored_size": c.info.size,
        }
        for c in checked
        if not _matches(c.item, c.info)
    ]
    if missing:
        call.metrics.failure("missing_object", len(missing))
        raise Conflict(
            f"{len(missing)} slice(s) were never uploaded; nothing was registered. Upload them and complete again.",
            code=ErrorCode.OBJECTS_MISSING,
            details={"missing": missing, "mismatched": corrupt},
        )
    if corrupt:
        call.metrics.failure("digest", len(corrupt))
        removed = _remove_unsigned_objects(
            call, group_id, [c for c in checked if not _matches(c.item, c.info)]
        )
        advice = (
            f" {len(removed)} of them held other bytes than signed and were removed: upload them again."
            if removed
            else ""
        )
        raise Unprocessable(
            f"{len(corrupt)} stored slice(s) differ from the declared checksum or size; nothing was "
            f"registered.{advice} Stored objects are never replaced otherwise: to store other bytes, upload "
            "them as a new version or delete this pending group first.",
            code=ErrorCode.CHECKSUM_MISMATCH,
            details={"mismatched": corrupt, "removed": removed},
        )
    try:
        call.storage.make_durable(keys)
    except StorageError as exc:
        call.metrics.failure("storage")
        raise StorageUnavailable(f"Storage could not make the slices durable: {exc}") from exc
    return checked


def _matches(item: messages.SliceToComplete, info: ObjectInfo | None) -> bool:
    return (
        info is not None
        and info.md5_hex == item.checksum.lower()
        and (item.size is None or item.size == info.size)
    )


def _repeat_complete(call: Call, group_id: uuid.UUID, data: messages.CompleteRequest) -> messages.GroupOut:
    """A complete of an already complete group: the same answer for the same body, 409 otherwise."""
    with call.db.session() as session:
        group = load_group(session, group_id)
        rows = session.scalars(select(Mask).where(Mask.group_id == group_id)).all()
        stored = {(m.filename, m.slice_index, m.checksum) for m in rows}
        claimed = {(s.filename, s.slice_index, s.checksum.lower()) for s in data.slices}
        if group.status != "complete" or stored != claimed:
            raise Conflict(
                f"Mask group {group_id} is already complete with different slices; a completed group "
                "cannot change. Upload a new version instead.",
                code=ErrorCode.GROUP_IMMUTABLE,
                details={"status": group.status, "slice_count": len(rows)},
            )
        return group_out(group, len(rows))


# --- read --------------------------------------------------------------------------------------------


def list_groups(call: Call, annotation_ref: str) -> messages.GroupList:
    """Groups of one annotation, newest first, each with its slice count."""
    annotation_id = parse_id(annotation_ref)
    if annotation_id is None:
        if annotation_ref.isascii() and annotation_ref.isdigit():  # a number no annotation id can be
            raise Unprocessable(
                f"Annotation id {annotation_ref} is out of range (0..{INT32_MAX}).",
                code=ErrorCode.INVALID_VALUE,
            )
        raise NotFound(f"'{annotation_ref}' is not an annotation id.", code=ErrorCode.ANNOTATION_NOT_FOUND)
    counts = select(Mask.group_id, func.count().label("n")).group_by(Mask.group_id).subquery()
    with call.db.session() as session:
        if session.get(Annotation, annotation_id) is None:
            raise NotFound(f"Annotation {annotation_id} does not exist.", code=ErrorCode.ANNOTATION_NOT_FOUND)
        rows = session.execute(
            select(MaskGroup, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.group_id == MaskGroup.id)
            .where(MaskGroup.annotation_id == annotation_id)
            .order_by(MaskGroup.created_at.desc())
        ).all()
        history = review_history(session, [g.id for g, _ in rows if g.review_status is not None])
        return messages.GroupList(items=[group_out(g, n, history.get(g.id)) for g, n in rows])


def list_masks(call: Call, group_ref: str) -> messages.MaskList:
    """The group and its slices ordered by slice index."""
    group_id = parse_group_id(group_ref)
    with call.db.session() as session:
        group = load_group(session, group_id)
        rows = session.scalars(select(Mask).where(Mask.group_id == group_id).order_by(Mask.slice_index)).all()
        history = review_history(session, [group_id]).get(group_id)
        return messages.MaskList(
            group=group_out(group, len(rows), history), items=[mask_out(m) for m in rows]
        )


@dataclass(frozen=True, slots=True)
class ViewedSlice:
    """What the view route streams."""

    chunks: Iterator[bytes]
    size: int
    checksum: str
    content_type: str
    filename: str


def open_stored(call: Call, key: str, what: str) -> Iterator[bytes]:
    """The chunks of the stored object ``key``: 409 ``object_missing`` naming ``what`` when it is gone
    (the validate job reports it), 503 when storage cannot be read."""
    try:
        return call.storage.open(key)
    except KeyError:
        raise Conflict(
            f"{what} is missing; run 'pacs-mask-server validate'.", code=ErrorCode.OBJECT_MISSING
        ) from None
    except StorageError as exc:
        raise StorageUnavailable(f"Storage could not be read: {exc}") from exc


def view_slice(call: Call, group_ref: str, filename: str | None, slice_index: int | None) -> ViewedSlice:
    """Open one registered slice for streaming; audited."""
    group_id = parse_group_id(group_ref)
    if (filename is None) == (slice_index is None):
        raise InvalidRequest("Give exactly one of 'filename' or 'slice_index'.", code=ErrorCode.INVALID_QUERY)
    with call.db.session() as session:
        group = load_group(session, group_id)
        query = select(Mask).where(Mask.group_id == group_id)
        query = (
            query.where(Mask.filename == filename)
            if filename is not None
            else query.where(Mask.slice_index == slice_index)
        )
        mask = session.scalar(query)
        if mask is None:
            what = f"file {filename!r}" if filename is not None else f"slice index {slice_index}"
            raise NotFound(f"Mask group {group_id} has no {what}.", code=ErrorCode.SLICE_NOT_FOUND)
        chunks = open_stored(call, mask.storage_key, f"The stored object for {mask.filename}")
        audit.record(
            session,
            call,
            "slice.view",
            annotation_id=group.annotation_id,
            group_id=group_id,
            detail={"filename": mask.filename, "slice_index": mask.slice_index},
        )
        return ViewedSlice(chunks, mask.size_bytes, mask.checksum, mask.content_type, mask.filename)


# --- delete ------------------------------------------------------------------------------------------


def delete_group(call: Call, group_ref: str) -> messages.DeleteResult:
    """Remove a group's objects, then its rows; resumable after a storage failure (see module doc)."""
    group_id = parse_group_id(group_ref)
    with call.db.session() as session:
        group = load_group(session, group_id, for_update=True)
        annotation_id, previous = group.annotation_id, group.status
        # Conditional: of two racing deletes only the one that moves the group to 'deleting' records the
        # start (a repeat after a storage failure finds it 'deleting' already and just finishes).
        started = rowcount(
            session.execute(
                update(MaskGroup)
                .where(MaskGroup.id == group_id, MaskGroup.status != "deleting")
                .values(status="deleting")
            )
        )
        if started == 1:
            audit.record(
                session,
                call,
                "group.delete_started",
                annotation_id=annotation_id,
                group_id=group_id,
                detail={"previous_status": previous},
            )
    try:
        deleted_objects = call.storage.delete_prefix(group_prefix(annotation_id, group_id))
    except StorageError as exc:
        call.metrics.failure("storage")
        with call.db.session() as session:
            audit.record(
                session,
                call,
                "group.delete_failed",
                annotation_id=annotation_id,
                group_id=group_id,
                detail={"error": str(exc)},
            )
        raise StorageUnavailable(
            f"Storage failed while deleting group {group_id}; it stays listed as 'deleting'. "
            "Repeat the delete to finish it.",
            details={"group_id": str(group_id)},
        ) from exc
    with call.db.session() as session:
        deleted_slices = rowcount(session.execute(table_of(Mask).delete().where(Mask.group_id == group_id)))
        session.execute(table_of(SignedUpload).delete().where(SignedUpload.group_id == group_id))
        gone = rowcount(session.execute(table_of(MaskGroup).delete().where(MaskGroup.id == group_id)))
        if gone != 1:  # a racing delete finished first (its rows and audit entry are the record)
            raise NotFound(f"Mask group {group_id} does not exist.", code=ErrorCode.GROUP_NOT_FOUND)
        audit.record(
            session,
            call,
            "group.delete",
            annotation_id=annotation_id,
            group_id=group_id,
            detail={"objects": deleted_objects, "slices": deleted_slices},
        )
    return messages.DeleteResult(
        id=str(group_id), deleted_objects=deleted_objects, deleted_slices=deleted_slices
    )
