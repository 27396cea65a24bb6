"""ORM rows to API structs, in one place."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, overload

import msgspec
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.contract import messages
from server.db.models import Annotation, AuditLog, Finding, Mask, MaskGroup, Review


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
@overload
def utc(value: datetime | None) -> datetime | None: ...


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC, so say so."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def annotation_out(row: Annotation, group_count: int = 0) -> messages.AnnotationOut:
    return messages.AnnotationOut(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        patient_id=row.patient_id,
        description=row.description,
        created_by=row.created_by,
        created_at=utc(row.created_at),
        group_count=group_count,
        has_geometry=row.has_geometry,
        rows=row.rows,
        columns=row.columns,
        slice_count=row.slice_count,
        modality=row.modality,
    )


def group_out(
    row: MaskGroup, slice_count: int, reviews: list[messages.ReviewOut] | None = None
) -> messages.GroupOut:
    """The group as the API shows it; ``reviews`` is its history (:func:`review_history`), when loaded."""
    history = reviews or []
    return messages.GroupOut(
        id=str(row.id),
        annotation_id=row.annotation_id,
        model_name=row.model_name,
        version=row.version,
        source=row.source,
        status=row.status,
        expected_slices=row.expected_slices,
        confidence=row.confidence,
        params=row.params,
        created_by=row.created_by,
        created_at=utc(row.created_at),
        completed_at=utc(row.completed_at),
        slice_count=slice_count,
        review_status=row.review_status,
        review_comment=row.review_comment,
        reviewed_by=row.reviewed_by,
        reviewed_at=utc(row.reviewed_at),
        labels=_labels_out(row.labels) if row.labels else None,
        seg=seg_out(row),
        sent_at=utc(row.sent_at),
        sent_to=row.sent_to,
        send_error=row.send_error,
        retract_from_pacs=retraction_notice(row),
        volumes=msgspec.convert(row.volumes, dict[str, messages.LabelVolume])
        if row.volumes is not None
        else None,
        findings=list(history[-1].findings) if history and row.review_status else [],
        reviews=history,
    )


def review_history(
    session: Session, group_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[messages.ReviewOut]]:
    """Every review of ``group_ids`` with its findings, oldest first, per group (two queries)."""
    if not group_ids:
        return {}
    reviews = session.scalars(
        select(Review).where(Review.group_id.in_(list(group_ids))).order_by(Review.reviewed_at, Review.id)
    ).all()
    findings: dict[int, list[messages.FindingOut]] = {}
    if reviews:
        for finding in session.scalars(
            select(Finding)
            .where(Finding.review_id.in_([r.id for r in reviews]))
            .order_by(Finding.slice_index, Finding.id)
        ):
            findings.setdefault(finding.review_id, []).append(
                messages.FindingOut(
                    slice_index=finding.slice_index, label=finding.label, comment=finding.comment
                )
            )
    history: dict[uuid.UUID, list[messages.ReviewOut]] = {}
    for review in reviews:
        history.setdefault(review.group_id, []).append(
            messages.ReviewOut(
                decision=review.decision,
                comment=review.comment,
                reviewed_by=review.reviewed_by,
                reviewed_at=utc(review.reviewed_at),
                override_four_eyes=review.override_four_eyes,
                findings=findings.get(review.id, []),
            )
        )
    return history


def retraction_notice(row: MaskGroup) -> str | None:
    """What to do in the PACS when a rejected group's SEG was already sent there, else ``None``.

    This server never deletes from the PACS: the rejected SEG stays there until someone removes it.
    """
    if row.review_status != "rejected" or row.sent_at is None:
        return None
    return (
        f"The DICOM SEG of this group (SOP Instance UID {row.seg_sop_instance_uid}, series "
        f"{row.seg_series_instance_uid}) was sent to the PACS {row.sent_to or ''} before the group was "
        "rejected; it is still in the PACS and must be retracted (deleted) there."
    )


def _labels_out(labels: dict[str, Any]) -> dict[str, messages.LabelInfo]:
    """The stored label table; one stored before backslashes were refused reads with ``/`` instead."""
    try:
        return msgspec.convert(labels, dict[str, messages.LabelInfo])
    except msgspec.ValidationError:
        cleaned = msgspec.json.decode(msgspec.json.encode(labels).replace(b"\\\\", b"/"))
        return msgspec.convert(cleaned, dict[str, messages.LabelInfo])


def seg_out(row: MaskGroup) -> messages.SegOut | None:
    """The group's DICOM SEG metadata, or ``None`` until it is built (its UID and time are written together)."""
    if row.seg_sop_instance_uid is None or row.seg_created_at is None:
        return None
    return messages.SegOut(
        sop_instance_uid=row.seg_sop_instance_uid,
        series_instance_uid=row.seg_series_instance_uid or "",
        size=row.seg_size or 0,
        checksum=row.seg_checksum or "",
        created_at=utc(row.seg_created_at),
        segments=row.seg_segments or 0,
        frames=row.seg_frames or 0,
    )


def mask_out(row: Mask) -> messages.MaskOut:
    return messages.MaskOut(
        id=row.id,
        filename=row.filename,
        storage_key=row.storage_key,
        slice_index=row.slice_index,
        sop_instance_uid=row.sop_instance_uid,
        width=row.width,
        height=row.height,
        label=row.label,
        checksum=row.checksum,
        size_bytes=row.size_bytes,
        content_type=row.content_type,
        created_at=utc(row.created_at),
    )


def audit_out(row: AuditLog) -> messages.AuditOut:
    return messages.AuditOut(
        id=row.id,
        at=utc(row.at),
        actor=row.actor,
        action=row.action,
        annotation_id=row.annotation_id,
        group_id=str(row.group_id) if row.group_id else None,
        detail=row.detail,
        client_address=row.client_address,
    )
