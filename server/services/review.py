"""QA review: the queue of groups waiting for review, and reviews with findings, four eyes and history.

Rules this module keeps:
- Only complete groups are reviewed; a group can be reviewed again: each review is a new row of
  ``annotation_mask_review`` (with its findings), and the group's ``review_*`` columns hold the latest.
- Four eyes: nobody approves a group they created themselves (403 ``four_eyes``), unless they are an
  admin and set ``override_four_eyes`` (recorded on the review and in the audit row). Rejecting one's
  own group is allowed: it only stops a group, it never lets one through.
- Findings name a slice of the annotation's series (or, without stored geometry, of the group's slices)
  and optionally a label value present in the group's label table; every bad finding is listed at once.
- The queue lists complete groups with no decision, oldest ``completed_at`` first (then id), paged with
  an opaque keyset cursor, so a page never repeats or skips a group while others are reviewed.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from server import audit
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.db.models import Annotation, Finding, Mask, MaskGroup, Review, utcnow
from server.errors import Conflict, Forbidden, Unprocessable
from server.services.mask_groups import load_group, parse_group_id, slice_count
from server.services.serialize import group_out, retraction_notice, review_history, utc
from server.services.series import load_shape

QUEUE_MAX_LIMIT = 200


# --- review ------------------------------------------------------------------------------------------


def review_group(call: Call, group_ref: str, data: messages.ReviewRequest) -> messages.GroupOut:
    """Record a QA decision (with findings) on a complete group; the masks stay untouched. Audited.

    Answers the group with its findings and its whole review history.
    """
    group_id = parse_group_id(group_ref)
    comment = data.comment.strip()
    if data.decision == "rejected" and not comment:
        raise Unprocessable(
            "A rejection needs a comment saying what is wrong.", code=ErrorCode.COMMENT_REQUIRED
        )
    with call.db.session() as session:
        group = load_group(session, group_id, for_update=True)
        if group.status != "complete":
            raise Conflict(
                f"Only complete groups can be reviewed; {group_id} is {group.status}.",
                code=ErrorCode.GROUP_NOT_COMPLETE,
            )
        override = _four_eyes(call, group, data)
        _check_findings(session, group, data.findings)
        now = utcnow()
        review = Review(
            group_id=group_id,
            decision=data.decision,
            comment=comment or None,
            reviewed_by=call.actor.name,
            reviewed_at=now,
            override_four_eyes=override,
        )
        session.add(review)
        session.flush()
        if data.findings:
            session.add_all(
                Finding(
                    review_id=review.id,
                    slice_index=item.slice_index,
                    label=item.label,
                    comment=item.comment.strip(),
                )
                for item in data.findings
            )
        previous = group.review_status
        group.review_status = data.decision
        group.review_comment = comment or None
        group.reviewed_by = call.actor.name
        group.reviewed_at = now
        detail: dict[str, Any] = {
            "decision": data.decision,
            "comment": comment,
            "findings": len(data.findings),
            "previous_decision": previous,
        }
        if override:
            detail["override_four_eyes"] = True
        if retract := retraction_notice(group):
            detail["retract_from_pacs"] = retract
        audit.record(
            session, call, "group.review", annotation_id=group.annotation_id, group_id=group_id, detail=detail
        )
        session.flush()
        result = _group_detail(session, group)  # names the SEG to retract, if any
    if data.decision == "approved" and call.settings.send_approved_seg:
        from server.services.seg_send import send_after_approval  # seg_send imports mask_groups

        send_after_approval(call, str(group_id))
        with call.db.session() as session:
            result = _group_detail(session, load_group(session, group_id))
    return result


def _group_detail(session: Session, group: MaskGroup) -> messages.GroupOut:
    return group_out(group, slice_count(session, group.id), review_history(session, [group.id]).get(group.id))


def _four_eyes(call: Call, group: MaskGroup, data: messages.ReviewRequest) -> bool:
    """Whether this approval overrides four eyes; 403 ``four_eyes`` when it may not."""
    if data.decision != "approved" or group.created_by != call.actor.name:
        return False
    if data.override_four_eyes and call.actor.has("admin"):
        return True
    how = (
        " As an admin you may override this by setting override_four_eyes (it is recorded)."
        if call.actor.has("admin")
        else " Only an admin can override this."
    )
    raise Forbidden(
        f"'{call.actor.name}' uploaded mask group {group.id} themselves and cannot approve it: another "
        f"reviewer must (four eyes).{how}",
        code=ErrorCode.FOUR_EYES,
        details={"group_id": str(group.id), "created_by": group.created_by},
    )


def _check_findings(session: Session, group: MaskGroup, findings: list[messages.FindingIn]) -> None:
    """One 422 ``invalid_findings`` listing every finding outside the group's slices or labels."""
    if not findings:
        return
    shape = load_shape(session, group.annotation_id)
    if shape is not None:
        slices, where = shape.slice_count, "the annotation's series"
    else:
        top = session.scalar(select(func.max(Mask.slice_index)).where(Mask.group_id == group.id))
        slices, where = (top + 1 if top is not None else 0), "the group's slices"
    labels = sorted(int(k) for k in group.labels) if group.labels else None
    problems = []
    for index, item in enumerate(findings):
        reasons = []
        if item.slice_index >= slices:
            reasons.append(f"slice_index {item.slice_index} is outside {where} (0..{slices - 1})")
        if item.label is not None and labels is not None and item.label not in labels:
            reasons.append(f"label {item.label} is not in the group's label table {labels}")
        if reasons:
            problems.append({"index": index, "slice_index": item.slice_index, "reason": "; ".join(reasons)})
    if problems:
        first = problems[0]
        raise Unprocessable(
            f"{len(problems)} finding(s) do not fit the group; nothing was recorded. First: finding "
            f"{first['index']}: {first['reason']}.",
            code=ErrorCode.INVALID_FINDINGS,
            details={"findings": problems, "slice_count": slices, "labels": labels},
        )


# --- queue -------------------------------------------------------------------------------------------


def review_queue(
    call: Call,
    *,
    limit: int = 50,
    cursor: str | None = None,
    model_name: str | None = None,
    version: str | None = None,
    source: str | None = None,
    created_by: str | None = None,
    annotation_id: int | None = None,
) -> messages.ReviewQueue:
    """Complete groups with no decision yet, oldest first, one page of at most ``limit``."""
    limit = max(1, min(limit, QUEUE_MAX_LIMIT))
    query = (
        select(MaskGroup, Annotation.patient_id, Annotation.patient_name, Annotation.description)
        .join(Annotation, Annotation.id == MaskGroup.annotation_id)
        .where(MaskGroup.status == "complete", MaskGroup.review_status.is_(None))
    )
    for column, value in (
        (MaskGroup.model_name, model_name),
        (MaskGroup.version, version),
        (MaskGroup.source, source),
        (MaskGroup.created_by, created_by),
        (MaskGroup.annotation_id, annotation_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if cursor:
        after_time, after_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                MaskGroup.completed_at > after_time,
                and_(MaskGroup.completed_at == after_time, MaskGroup.id > after_id),
            )
        )
    query = query.order_by(MaskGroup.completed_at, MaskGroup.id).limit(limit + 1)
    with call.db.session() as session:
        rows = session.execute(query).all()
        page, more = rows[:limit], len(rows) > limit
        ids = [row[0].id for row in page]
        counts = (
            dict(
                session.execute(
                    select(Mask.group_id, func.count()).where(Mask.group_id.in_(ids)).group_by(Mask.group_id)
                ).all()
            )
            if ids
            else {}
        )
        items = []
        for group, patient_id, patient_name, description in page:
            out = group_out(group, counts.get(group.id, 0))
            items.append(
                messages.QueueItem(
                    **{name: getattr(out, name) for name in out.__struct_fields__},
                    patient_id=patient_id,
                    patient_name=patient_name,
                    annotation_description=description,
                )
            )
    next_cursor = _encode_cursor(page[-1][0]) if more else None
    return messages.ReviewQueue(items=items, next_cursor=next_cursor)


def _encode_cursor(group: MaskGroup) -> str:
    completed = utc(group.completed_at)
    raw = json.dumps([completed.isoformat() if completed else None, str(group.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The last (completed_at, id) of the previous page; 422 ``invalid_cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, group_id = json.loads(raw)
        return datetime.fromisoformat(moment), uuid.UUID(group_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable(
            "The cursor is not one this server gave out; start again without a cursor.",
            code=ErrorCode.INVALID_CURSOR,
        ) from None
