"""``validate``: compare the database with what object storage really holds, without changing anything.

What is checked (each problem is a :class:`Finding`; ``error`` findings make the run fail):

- every **complete** group: the number of slice rows against ``expected_slices`` (``missing_slices``),
  gaps between its lowest and highest ``slice_index`` (``index_gap``), and for every slice the object
  itself: missing (``missing_object``) or with another size or MD5 than the database recorded
  (``corrupt_object``). The MD5 is computed from the bytes, not trusted from an ETag. Each intact
  object is then decoded: a PNG whose real width, height or labels differ from what ``complete``
  registered (the client declares them), or that does not decode, is ``content_mismatch``. An object
  is read once into memory for both (a mask is at most ``PACS_MASK_MAX_SLICE_BYTES``, and
  :data:`HASH_THREADS` are read at a time); ``cleanup`` re-hashes single objects by streaming them.
- every object under ``mask/`` that no row accounts for (``orphan_object``): its key does not follow
  the key pattern, its group does not exist, or its group is complete and does not list it. Objects of
  pending groups (uploads in progress) and of groups being deleted are not orphans.
- **pending** groups: idle (no group created or URL signed) for longer than the signed-URL TTL, so
  every URL they were given has expired (``pending_expired``, a warning: the client may still sign
  again and finish), or for longer than ``PACS_MASK_STALE_PENDING_HOURS`` (``stale_pending``, an
  error: ``cleanup --apply`` removes them).
- groups left in **deleting** for longer than :data:`DELETE_GRACE_SECONDS` (``stuck_delete``): a delete
  failed halfway; ``cleanup --apply`` (or repeating the DELETE) finishes it.

The storage listing is read in batches, each checked against the database with one query, so an
orphan scan of a large bucket does not hold every key in memory.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
from sqlalchemy import func, select

from server.contract.errors import ErrorCode
from server.db.models import AuditLog, Mask, MaskGroup
from server.db.session import Database
from server.errors import NotFound
from server.naming import group_prefix, parse_mask_key
from server.services.label_png import decode_label_array
from server.services.serialize import utc
from server.settings import Settings
from server.storage.base import ObjectInfo, Storage

log = logging.getLogger("pacs_mask.jobs")

#: A group in ``deleting`` for longer than this is reported as stuck (a delete takes seconds).
DELETE_GRACE_SECONDS = 300
#: Root of every key the server writes.
MASK_ROOT = "mask/"
#: Objects hashed in parallel (S3 GETs are network round trips).
HASH_THREADS = 8
#: Chunk size when streaming an object to hash it.
HASH_CHUNK = 1024 * 1024
#: Keys of the storage listing checked against the database per query.
KEY_BATCH = 500
#: At most this many missing indexes are listed in one ``index_gap`` finding.
MAX_LISTED_GAPS = 50

ERROR = "error"
WARNING = "warning"

#: Every kind of finding, its severity and what ``cleanup --apply`` does about it.
KINDS: dict[str, tuple[str, str]] = {
    "missing_slices": (ERROR, "manual: upload the group again as a new version, or delete it"),
    "index_gap": (ERROR, "manual: upload the group again as a new version, or delete it"),
    "missing_object": (
        ERROR,
        "restore the object from a backup, or cleanup --apply --remove-broken removes the group so it can be uploaded again",
    ),
    "corrupt_object": (
        ERROR,
        "restore the object from a backup, or cleanup --apply --remove-broken removes the group so it can be uploaded again",
    ),
    "content_mismatch": (
        ERROR,
        "manual: the stored PNG is not what was registered; upload the masks again as a new version, or delete the group",
    ),
    "orphan_object": (ERROR, "cleanup --apply deletes the object"),
    "stale_pending": (ERROR, "cleanup --apply removes the group and its objects"),
    "pending_expired": (WARNING, "none yet: the client can sign again and complete"),
    "stuck_delete": (ERROR, "cleanup --apply finishes the delete"),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by a validation run."""

    kind: str
    message: str
    group_id: str | None = None
    annotation_id: int | None = None
    key: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        """``error`` or ``warning`` (see :data:`KINDS`)."""
        return KINDS[self.kind][0]

    @property
    def remedy(self) -> str:
        """What fixes it."""
        return KINDS[self.kind][1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, severity and remedy included."""
        return {"severity": self.severity, **asdict(self), "remedy": self.remedy}


@dataclass(slots=True)
class Report:
    """The outcome of one validation run."""

    storage: str
    scope: str
    started_at: datetime
    finished_at: datetime | None = None
    groups_checked: int = 0
    slices_checked: int = 0
    bytes_hashed: int = 0
    objects_listed: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Findings of severity ``error``."""
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """Findings of severity ``warning``."""
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (warnings alone do not fail a run)."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        """Number of findings per kind (every kind listed, zeros included)."""
        counts = dict.fromkeys(KINDS, 0)
        for finding in self.findings:
            counts[finding.kind] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``validate --json`` and returned by ``POST /api/admin/validate``."""
        return {
            "ok": self.ok,
            "storage": self.storage,
            "scope": self.scope,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "groups_checked": self.groups_checked,
            "slices_checked": self.slices_checked,
            "bytes_hashed": self.bytes_hashed,
            "objects_listed": self.objects_listed,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def render_text(self) -> str:
        """A readable report for people."""
        took = (self.finished_at - self.started_at).total_seconds() if self.finished_at else 0.0
        lines = [
            f"Validation of {self.scope} on {self.storage} storage, {self.started_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({took:.1f} s)",
            f"  checked {self.groups_checked} complete group(s), {self.slices_checked} slice(s), "
            f"{_human_bytes(self.bytes_hashed)} hashed, {self.objects_listed} object(s) listed",
        ]
        if not self.findings:
            lines.append("Everything matches: no problems found.")
            return "\n".join(lines)
        lines.append("")
        for finding in self.findings:
            where = finding.key or (f"group {finding.group_id}" if finding.group_id else "")
            lines.append(f"{finding.severity.upper():7} {finding.kind:16} {where}")
            lines.append(f"        {finding.message}")
            lines.append(f"        fix: {finding.remedy}")
        lines.append("")
        lines.append(
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s). "
            "Run 'pacs-mask-server cleanup' to see what can be repaired automatically."
        )
        return "\n".join(lines)


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns


@dataclass(frozen=True, slots=True)
class _Group:
    id: uuid.UUID
    annotation_id: int
    status: str
    expected_slices: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Slice:
    filename: str
    key: str
    slice_index: int
    checksum: str
    size_bytes: int
    width: int = 0
    height: int = 0
    label: str | None = None


def hash_object(storage: Storage, key: str, chunk_size: int = HASH_CHUNK) -> ObjectInfo | None:
    """Stream ``key`` and return its real size and MD5, or ``None`` when it does not exist.

    Memory use is one chunk, whatever the object's size. ``StorageError`` propagates: a run that
    cannot read storage has not validated anything.
    """
    try:
        chunks = storage.open(key, chunk_size=chunk_size)
    except KeyError:
        return None
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
    except KeyError:  # deleted between open and read
        return None
    return ObjectInfo(key=key, size=size, md5_hex=digest.hexdigest())


def last_activity(session: Any, group_ids: Iterable[uuid.UUID], action: str) -> dict[uuid.UUID, datetime]:
    """The latest audit time of ``action`` for each group id (chunked IN queries)."""
    ids = list(group_ids)
    latest: dict[uuid.UUID, datetime] = {}
    for start in range(0, len(ids), KEY_BATCH):
        chunk = ids[start : start + KEY_BATCH]
        rows = session.execute(
            select(AuditLog.group_id, func.max(AuditLog.at))
            .where(AuditLog.action == action, AuditLog.group_id.in_(chunk))
            .group_by(AuditLog.group_id)
        ).all()
        latest.update({gid: utc(at) for gid, at in rows if gid is not None and at is not None})
    return latest


def validate(
    db: Database,
    storage: Storage,
    settings: Settings,
    *,
    group_id: uuid.UUID | None = None,
    now: datetime | None = None,
    actor: str = "job:validate",
) -> Report:
    """Run every check (on one group when ``group_id`` is given) and return the report.

    ``actor`` names who asked, in the job's log lines. Raises :class:`server.errors.NotFound` for an
    unknown ``group_id`` and
    :class:`server.storage.base.StorageError` when storage cannot be read.
    """
    now = now or datetime.now(UTC)
    report = Report(
        storage=storage.name,
        scope=f"group {group_id}" if group_id else "all groups",
        started_at=now,
    )
    log.info(
        "validate started",
        extra={"event": "job.validate.started", "actor": actor, "scope": report.scope},
    )
    with db.session() as session:
        query = select(
            MaskGroup.id,
            MaskGroup.annotation_id,
            MaskGroup.status,
            MaskGroup.expected_slices,
            MaskGroup.created_at,
        ).order_by(MaskGroup.created_at)
        if group_id is not None:
            query = query.where(MaskGroup.id == group_id)
        groups = [
            _Group(r.id, r.annotation_id, r.status, r.expected_slices, utc(r.created_at))
            for r in session.execute(query)
        ]
        if group_id is not None and not groups:
            raise NotFound(f"Mask group {group_id} does not exist.", code=ErrorCode.GROUP_NOT_FOUND)
        pending = [g for g in groups if g.status == "pending"]
        deleting = [g for g in groups if g.status == "deleting"]
        signed = last_activity(session, [g.id for g in pending], "group.sign")
        delete_started = last_activity(session, [g.id for g in deleting], "group.delete_started")

    _check_pending(report, pending, signed, settings, now)
    _check_deleting(report, deleting, delete_started, now)
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="validate-hash") as pool:
        for group in groups:
            if group.status == "complete":
                _check_complete(report, db, storage, pool, group)
    prefix = group_prefix(groups[0].annotation_id, group_id) if group_id is not None else MASK_ROOT
    _check_orphans(report, db, storage, prefix)
    report.finished_at = datetime.now(UTC)
    log.info(
        "validate finished",
        extra={
            "event": "job.validate.finished",
            "actor": actor,
            "scope": report.scope,
            "ok": report.ok,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "counts": {k: v for k, v in report.counts().items() if v},
            "duration_ms": round((report.finished_at - report.started_at).total_seconds() * 1000, 1),
        },
    )
    return report


def _check_pending(
    report: Report,
    pending: list[_Group],
    signed: dict[uuid.UUID, datetime],
    settings: Settings,
    now: datetime,
) -> None:
    ttl = timedelta(seconds=settings.url_ttl_seconds)
    stale = timedelta(hours=settings.stale_pending_hours)
    for group in pending:
        active = max(group.created_at, signed.get(group.id, group.created_at))
        idle = now - active
        detail = {"last_activity": active.isoformat(), "idle_seconds": int(idle.total_seconds())}
        if idle > stale:
            report.findings.append(
                Finding(
                    "stale_pending",
                    f"pending with no activity for {_age(idle)} (limit {settings.stale_pending_hours:g} h): "
                    "the upload was abandoned",
                    str(group.id),
                    group.annotation_id,
                    detail=detail,
                )
            )
        elif idle > ttl:
            report.findings.append(
                Finding(
                    "pending_expired",
                    f"pending for {_age(idle)} since the last URL was signed; every signed URL has expired "
                    f"(TTL {settings.url_ttl_seconds} s)",
                    str(group.id),
                    group.annotation_id,
                    detail=detail,
                )
            )


def _check_deleting(
    report: Report, deleting: list[_Group], started: dict[uuid.UUID, datetime], now: datetime
) -> None:
    for group in deleting:
        since = started.get(group.id, group.created_at)
        age = now - since
        if age.total_seconds() > DELETE_GRACE_SECONDS:
            report.findings.append(
                Finding(
                    "stuck_delete",
                    f"stuck in 'deleting' for {_age(age)}: a delete failed halfway",
                    str(group.id),
                    group.annotation_id,
                    detail={"delete_started": since.isoformat()},
                )
            )


def _check_complete(
    report: Report, db: Database, storage: Storage, pool: ThreadPoolExecutor, group: _Group
) -> None:
    with db.session() as session:
        slices = [
            _Slice(
                m.filename, m.storage_key, m.slice_index, m.checksum, m.size_bytes, m.width, m.height, m.label
            )
            for m in session.execute(
                select(
                    Mask.filename,
                    Mask.storage_key,
                    Mask.slice_index,
                    Mask.checksum,
                    Mask.size_bytes,
                    Mask.width,
                    Mask.height,
                    Mask.label,
                )
                .where(Mask.group_id == group.id)
                .order_by(Mask.slice_index)
            )
        ]
    report.groups_checked += 1
    gid = str(group.id)
    if group.expected_slices is not None and len(slices) != group.expected_slices:
        report.findings.append(
            Finding(
                "missing_slices",
                f"the group expects {group.expected_slices} slices but {len(slices)} are registered",
                gid,
                group.annotation_id,
                detail={"expected_slices": group.expected_slices, "registered": len(slices)},
            )
        )
    gaps = _gaps([s.slice_index for s in slices])
    if gaps:
        listed = gaps[:MAX_LISTED_GAPS]
        more = f" and {len(gaps) - len(listed)} more" if len(gaps) > len(listed) else ""
        report.findings.append(
            Finding(
                "index_gap",
                f"slice indexes {slices[0].slice_index}..{slices[-1].slice_index} miss "
                f"{', '.join(map(str, listed))}{more}",
                gid,
                group.annotation_id,
                detail={"missing_indexes": listed, "missing_count": len(gaps)},
            )
        )
    for item, (info, content) in zip(
        slices, pool.map(lambda s: inspect_object(storage, s.key), slices), strict=True
    ):
        report.slices_checked += 1
        if info is None:
            report.findings.append(
                Finding(
                    "missing_object",
                    f"slice {item.slice_index} ({item.filename}) is registered but storage has no object",
                    gid,
                    group.annotation_id,
                    key=item.key,
                    detail={"slice_index": item.slice_index, "filename": item.filename},
                )
            )
            continue
        report.bytes_hashed += info.size
        if info.size != item.size_bytes or info.md5_hex != item.checksum.lower():
            report.findings.append(
                Finding(
                    "corrupt_object",
                    f"slice {item.slice_index} ({item.filename}) differs from the database: "
                    f"{info.size} bytes, MD5 {info.md5_hex}; expected {item.size_bytes} bytes, MD5 {item.checksum}",
                    gid,
                    group.annotation_id,
                    key=item.key,
                    detail={
                        "slice_index": item.slice_index,
                        "filename": item.filename,
                        "expected_size": item.size_bytes,
                        "stored_size": info.size,
                        "expected_md5": item.checksum,
                        "stored_md5": info.md5_hex,
                    },
                )
            )
            continue
        mismatch = content_problem(item, content)
        if mismatch is not None:
            report.findings.append(
                Finding(
                    "content_mismatch",
                    f"slice {item.slice_index} ({item.filename}): {mismatch}",
                    gid,
                    group.annotation_id,
                    key=item.key,
                    detail={
                        "slice_index": item.slice_index,
                        "filename": item.filename,
                        "registered": {"width": item.width, "height": item.height, "label": item.label},
                        "stored": content if isinstance(content, dict) else {"error": content},
                    },
                )
            )


def inspect_object(storage: Storage, key: str) -> tuple[ObjectInfo | None, dict[str, Any] | str]:
    """Hash ``key`` like :func:`hash_object` and decode it: ``(info, {width, height, labels})``.

    The second item is a reason string when the bytes are not a decodable single-channel PNG. The
    object is read once (masks are small: at most ``max_slice_bytes``).
    """
    try:
        data = b"".join(storage.open(key, chunk_size=HASH_CHUNK))
    except KeyError:
        return None, "missing"
    info = ObjectInfo(key=key, size=len(data), md5_hex=hashlib.md5(data, usedforsecurity=False).hexdigest())
    return info, decode_mask(data)


def decode_mask(data: bytes) -> dict[str, Any] | str:
    """``{width, height, labels}`` of a mask PNG (labels: sorted non-zero values), or why it is not one."""
    array = decode_label_array(data)
    if isinstance(array, str):
        return array
    values = np.unique(array)
    height, width = array.shape
    return {"width": width, "height": height, "labels": [int(v) for v in values if v != 0]}


def content_problem(item: _Slice, content: dict[str, Any] | str) -> str | None:
    """How the decoded object differs from its registered width, height and labels, or ``None``.

    The label column holds the comma-separated label values the client saw (``"1,2"``; none for an
    empty mask). A label that is not numbers (a name) cannot be compared and is not checked.
    """
    if isinstance(content, str):
        return f"the stored object is not a mask PNG: {content}"
    differences = []
    if (content["width"], content["height"]) != (item.width, item.height):
        differences.append(
            f"the stored PNG is {content['width']}x{content['height']}, registered as {item.width}x{item.height}"
        )
    registered = _registered_labels(item.label)
    if registered is not None and registered != content["labels"]:
        real = ",".join(map(str, content["labels"])) or "none"
        differences.append(f"its labels are {real}, registered as {item.label or 'none'}")
    return "; ".join(differences) or None


def _registered_labels(label: str | None) -> list[int] | None:
    if label is None or not label.strip():
        return []
    parts = [p.strip() for p in label.split(",")]
    if not all(p.isdigit() for p in parts):
        return None
    return sorted({int(p) for p in parts})


def _gaps(indexes: list[int]) -> list[int]:
    """Integers missing between the lowest and highest of the sorted ``indexes``."""
    missing: list[int] = []
    for low, high in pairwise(indexes):
        missing.extend(range(low + 1, high))
    return missing


def _batches(items: Iterator[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    batch: list[ObjectInfo] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def orphan_reasons(session: Any, keys: list[str]) -> dict[str, tuple[str, str]]:
    """``{key: (cause, reason)}`` for those of ``keys`` that nothing in the database accounts for.

    An object is accounted for when its key follows the pattern, a group with that id exists under the
    key's annotation, and that group is pending or deleting (uploads in progress or objects on their way
    out), or complete and lists exactly this key as a slice. ``cause`` is ``bad_key``, ``no_group``
    or ``unlisted``. One query per batch for the groups and one
    for the registered keys.
    """
    parsed = {key: parse_mask_key(key) for key in keys}
    ids = {p[1] for p in parsed.values() if p is not None}
    states: dict[uuid.UUID, tuple[int, str]] = {}
    if ids:
        rows = session.execute(
            select(MaskGroup.id, MaskGroup.annotation_id, MaskGroup.status).where(MaskGroup.id.in_(list(ids)))
        ).all()
        states = {r.id: (r.annotation_id, r.status) for r in rows}
    registered = set(session.scalars(select(Mask.storage_key).where(Mask.storage_key.in_(keys))))
    # A group's built DICOM SEG (server/services/seg.py) lives under its prefix too.
    registered |= set(
        session.scalars(select(MaskGroup.seg_storage_key).where(MaskGroup.seg_storage_key.in_(keys)))
    )
    reasons: dict[str, tuple[str, str]] = {}
    for key, where in parsed.items():
        if where is None:
            reasons[key] = ("bad_key", "the key does not follow mask/{annotation_id}/{group_id}/{filename}")
            continue
        annotation_id, gid, _filename = where
        state = states.get(gid)
        if state is None or state[0] != annotation_id:
            reasons[key] = ("no_group", f"there is no group {gid} under annotation {annotation_id}")
        elif state[1] == "complete" and key not in registered:
            reasons[key] = ("unlisted", "its group is complete and does not list this object")
    return reasons


def _check_orphans(report: Report, db: Database, storage: Storage, prefix: str) -> None:
    for batch in _batches(storage.list(prefix), KEY_BATCH):
        report.objects_listed += len(batch)
        with db.session() as session:
            reasons = orphan_reasons(session, [info.key for info in batch])
        for info in batch:
            if info.key not in reasons:
                continue
            cause, reason = reasons[info.key]
            parsed = parse_mask_key(info.key)
            report.findings.append(
                Finding(
                    "orphan_object",
                    f"no database row accounts for this object ({info.size} bytes): {reason}",
                    str(parsed[1]) if parsed else None,
                    parsed[0] if parsed else None,
                    key=info.key,
                    detail={"size": info.size, "cause": cause, "reason": reason},
                )
            )


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
