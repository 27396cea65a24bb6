"""``cleanup``: repair what ``validate`` finds, as a dry run unless told to ``apply``.

The plan is derived from a full validation run:

=====================  =====================================================================
finding                action with ``--apply``
=====================  =====================================================================
``stale_pending``      ``remove_pending_group``: the group and every object under its prefix
``stuck_delete``       ``finish_delete``: delete the objects, then the rows
``missing_object``,    only with ``--remove-broken``: ``remove_broken_group``. A complete group
``corrupt_object``     whose object is gone or differs cannot be repaired (the bytes are lost);
                       removing it lets the same model/version be uploaded again, but also
                       destroys its intact slices, so it is never done by default: without the
                       flag the group is listed for a person to decide. The removed group's
                       slice list, with every checksum, is kept in the audit row.
``orphan_object``      ``delete_orphan_prefix`` (the whole group prefix, when no such group
                       exists) or ``delete_orphan`` (one object)
``missing_slices``,    nothing: listed as manual (upload again as a new version, or delete)
``index_gap``
``pending_expired``    nothing: the client may still sign again and complete
=====================  =====================================================================

Every action re-checks its condition just before acting (a pending group may have completed, an
orphan may have been registered meanwhile) and is skipped when it no longer holds. Group removals go
through the same code as ``DELETE /api/mask-group/{group_id}`` (mark ``deleting``, delete the
objects, then the rows), so a storage failure midway leaves a ``deleting`` group the next run finishes.
Every applied action writes an audit row (actor ``job:cleanup``) and one JSON log line.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from server import audit
from server.context import AppParts, Call
from server.db.models import Mask, MaskGroup
from server.errors import ApiError
from server.jobs.common import job_call
from server.jobs.validate import Finding, Report, hash_object, last_activity, orphan_reasons, validate
from server.naming import group_prefix
from server.services.mask_groups import delete_group
from server.services.serialize import utc
from server.storage.base import Storage, StorageError

log = logging.getLogger("pacs_mask.jobs")

PLANNED, DONE, SKIPPED, FAILED = "planned", "done", "skipped", "failed"


@dataclass(slots=True)
class Action:
    """One repair: what, on which group or key, why, and (after applying) what happened."""

    action: str
    target: str
    reason: str
    group_id: str | None = None
    annotation_id: int | None = None
    keys: list[str] = field(default_factory=list)
    status: str = PLANNED
    result: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(slots=True)
class CleanupResult:
    """The plan (dry run) or its outcome (``apply``), plus the findings nobody can fix automatically."""

    applied: bool
    validation: Report
    actions: list[Action] = field(default_factory=list)
    manual: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when an applied action failed."""
        return not any(a.status == FAILED for a in self.actions)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``cleanup --json``."""
        statuses: dict[str, int] = {}
        for action in self.actions:
            statuses[action.status] = statuses.get(action.status, 0) + 1
        return {
            "applied": self.applied,
            "ok": self.ok,
            "actions": [a.to_dict() for a in self.actions],
            "statuses": statuses,
            "manual": [f.to_dict() for f in self.manual],
            "validation": {k: v for k, v in self.validation.to_dict().items() if k != "findings"},
        }

    def render_text(self) -> str:
        """A readable plan or outcome."""
        head = "Cleanup (applied)" if self.applied else "Cleanup plan (dry run: nothing was changed)"
        lines = [f"{head} on {self.validation.storage} storage"]
        if not self.actions and not self.manual:
            lines.append("Nothing to clean up.")
            return "\n".join(lines)
        for action in self.actions:
            mark = action.status.upper() if self.applied else "WOULD"
            lines.append(f"{mark:8} {action.action:22} {action.target}")
            lines.append(f"         {action.reason}")
            if action.result:
                lines.append(f"         -> {action.result}")
        for finding in self.manual:
            where = finding.key or f"group {finding.group_id}"
            lines.append(f"{'MANUAL':8} {finding.kind:22} {where}")
            lines.append(f"         {finding.message}; {finding.remedy}")
        if not self.applied and self.actions:
            lines.append("")
            lines.append("Run 'pacs-mask-server cleanup --apply' to carry out the actions above.")
        return "\n".join(lines)


def plan(report: Report, *, remove_broken: bool = False) -> tuple[list[Action], list[Finding]]:
    """The actions that repair ``report``'s findings, and the findings left to a person.

    ``remove_broken`` allows removing complete groups with missing or corrupt objects.
    """
    actions: list[Action] = []
    manual: list[Finding] = []
    broken: dict[str, Action] = {}
    orphan_prefixes: dict[str, Action] = {}
    for finding in report.findings:
        kind = finding.kind
        if kind == "stale_pending":
            actions.append(_group_action("remove_pending_group", finding))
        elif kind == "stuck_delete":
            actions.append(_group_action("finish_delete", finding))
        elif kind in ("missing_object", "corrupt_object") and not remove_broken:
            manual.append(finding)
        elif kind in ("missing_object", "corrupt_object"):
            assert finding.group_id is not None
            assert finding.key is not None
            action = broken.get(finding.group_id)
            if action is None:
                action = broken[finding.group_id] = _group_action("remove_broken_group", finding)
                action.reason = "complete group with missing or corrupt objects"
                actions.append(action)
            action.keys.append(finding.key)
        elif kind == "orphan_object":
            assert finding.key is not None
            if finding.detail.get("cause") == "no_group" and finding.annotation_id is not None:
                prefix = group_prefix(finding.annotation_id, uuid.UUID(finding.group_id))
                action = orphan_prefixes.get(prefix)
                if action is None:
                    action = orphan_prefixes[prefix] = Action(
                        "delete_orphan_prefix",
                        prefix,
                        finding.detail["reason"],
                        finding.group_id,
                        finding.annotation_id,
                    )
                    actions.append(action)
                action.keys.append(finding.key)
            else:
                actions.append(
                    Action(
                        "delete_orphan",
                        finding.key,
                        finding.detail["reason"],
                        finding.group_id,
                        finding.annotation_id,
                        keys=[finding.key],
                    )
                )
        elif kind in ("missing_slices", "index_gap"):
            manual.append(finding)
    return actions, manual


def _group_action(name: str, finding: Finding) -> Action:
    assert finding.group_id is not None
    return Action(name, finding.group_id, finding.message, finding.group_id, finding.annotation_id)


def cleanup(
    parts: AppParts, *, apply: bool = False, remove_broken: bool = False, now: datetime | None = None
) -> CleanupResult:
    """Validate, plan the repairs and, with ``apply``, carry them out (see the module docstring)."""
    now = now or datetime.now(UTC)
    report = validate(parts.db, parts.storage, parts.settings, now=now, actor="job:cleanup")
    actions, manual = plan(report, remove_broken=remove_broken)
    result = CleanupResult(applied=apply, validation=report, actions=actions, manual=manual)
    if apply:
        apply_actions(parts, actions, now=now)
        with parts.db.session() as session:
            audit.record(
                session,
                job_call(parts, "cleanup"),
                "cleanup.run",
                detail=result.to_dict()["statuses"] | {"manual": len(manual)},
            )
    return result


def apply_actions(parts: AppParts, actions: list[Action], *, now: datetime | None = None) -> None:
    """Carry out planned actions in order, each re-checked first; their status and result are set."""
    now = now or datetime.now(UTC)
    call = job_call(parts, "cleanup")
    for action in actions:
        try:
            _APPLY[action.action](call, action, now)
        except (ApiError, StorageError) as exc:
            action.status, action.result = FAILED, getattr(exc, "message", None) or str(exc)
        _log_action(action)


def _log_action(action: Action) -> None:
    level = logging.ERROR if action.status == FAILED else logging.INFO
    log.log(
        level,
        "cleanup %s %s: %s",
        action.action,
        action.target,
        action.status,
        extra={
            "event": f"job.cleanup.{action.action}",
            "actor": "job:cleanup",
            "group": action.group_id,
            "target": action.target,
            "status": action.status,
            "result": action.result,
        },
    )


def _record(call: Call, action: Action, detail: dict[str, Any] | None = None) -> None:
    with call.db.session() as session:
        audit.record(
            session,
            call,
            f"cleanup.{action.action}",
            annotation_id=action.annotation_id,
            group_id=uuid.UUID(action.group_id) if action.group_id else None,
            detail={"target": action.target, "reason": action.reason, **(detail or {})},
        )


def _delete(call: Call, action: Action) -> None:
    """Remove the group through the API's delete path (which audits ``group.delete``)."""
    deleted = delete_group(call, str(action.group_id))
    action.status = DONE
    action.result = f"deleted {deleted.deleted_objects} object(s) and {deleted.deleted_slices} slice row(s)"


def _flip(call: Call, group_id: uuid.UUID, expected_status: str, check: Any = None) -> bool:
    """Mark the group ``deleting`` if it is still ``expected_status`` (and ``check(session, group)``)."""
    with call.db.session() as session:
        group = session.scalar(select(MaskGroup).where(MaskGroup.id == group_id).with_for_update())
        if group is None or group.status != expected_status:
            return False
        if check is not None and not check(session, group):
            return False
        group.status = "deleting"
        return True


def _remove_pending(call: Call, action: Action, now: datetime) -> None:
    group_id = uuid.UUID(action.target)
    cutoff = now - timedelta(hours=call.settings.stale_pending_hours)

    def still_stale(session: Any, group: MaskGroup) -> bool:
        signed = last_activity(session, [group.id], "group.sign").get(group.id)
        return max(utc(group.created_at), signed or utc(group.created_at)) < cutoff

    if not _flip(call, group_id, "pending", still_stale):
        action.status, action.result = SKIPPED, "no longer a stale pending group"
        return
    _record(call, action)
    _delete(call, action)


def _finish_delete(call: Call, action: Action, _now: datetime) -> None:
    with call.db.session() as session:
        status = session.scalar(select(MaskGroup.status).where(MaskGroup.id == uuid.UUID(action.target)))
    if status != "deleting":
        action.status, action.result = SKIPPED, f"the group is {status or 'gone'} now"
        return
    _record(call, action)
    _delete(call, action)


def _remove_broken(call: Call, action: Action, _now: datetime) -> None:
    group_id = uuid.UUID(action.target)
    with call.db.session() as session:
        rows = session.scalars(select(Mask).where(Mask.group_id == group_id).order_by(Mask.slice_index)).all()
        expected = {m.storage_key: (m.size_bytes, m.checksum) for m in rows}
        slices = [
            {
                "filename": m.filename,
                "slice_index": m.slice_index,
                "checksum": m.checksum,
                "size": m.size_bytes,
            }
            for m in rows
        ]
    still_broken = [key for key in action.keys if _broken(call.storage, key, expected.get(key))]
    if not still_broken:
        action.status, action.result = SKIPPED, "every object it named is intact now"
        return
    if not _flip(call, group_id, "complete"):
        action.status, action.result = SKIPPED, "the group is no longer complete"
        return
    _record(call, action, {"broken_keys": still_broken, "slices": slices})
    _delete(call, action)


def _broken(storage: Storage, key: str, expected: tuple[int, str] | None) -> bool:
    if expected is None:
        return False
    info = hash_object(storage, key)
    return info is None or (info.size, info.md5_hex) != (expected[0], expected[1].lower())


def _delete_orphan(call: Call, action: Action, _now: datetime) -> None:
    key = action.target
    with call.db.session() as session:
        if key not in orphan_reasons(session, [key]):
            action.status, action.result = SKIPPED, "the object is accounted for now"
            return
    listed = [info.key for info in call.storage.list(key)]
    if key not in listed:
        action.status, action.result = SKIPPED, "the object is gone already"
        return
    if listed != [key]:
        # Storage deletes by prefix; other keys start with this one and must not go with it.
        action.status = FAILED
        action.result = f"other objects' keys start with this key ({len(listed) - 1}); delete it by hand"
        return
    _record(call, action)
    call.storage.delete_prefix(key)
    action.status, action.result = DONE, "deleted 1 object"


def _delete_orphan_prefix(call: Call, action: Action, _now: datetime) -> None:
    prefix = action.target
    with call.db.session() as session:
        status = session.scalar(
            select(MaskGroup.status).where(
                MaskGroup.id == uuid.UUID(action.group_id), MaskGroup.annotation_id == action.annotation_id
            )
        )
    if status is not None:
        action.status, action.result = SKIPPED, f"a group now owns this prefix ({status})"
        return
    _record(call, action, {"keys": action.keys[:100], "count": len(action.keys)})
    deleted = call.storage.delete_prefix(prefix)
    action.status, action.result = DONE, f"deleted {deleted} object(s)"


_APPLY = {
    "remove_pending_group": _remove_pending,
    "finish_delete": _finish_delete,
    "remove_broken_group": _remove_broken,
    "delete_orphan": _delete_orphan,
    "delete_orphan_prefix": _delete_orphan_prefix,
}
