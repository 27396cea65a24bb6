"""Annotations: the DICOM series that mask groups belong to."""

from __future__ import annotations

from sqlalchemy import func, or_, select

from server import audit
from server.api import schemas
from server.context import Call
from server.db.models import Annotation, MaskGroup
from server.errors import NotFound
from server.services.serialize import annotation_out


def create_annotation(call: Call, data: schemas.AnnotationCreate) -> schemas.AnnotationOut:
    """Register an annotation for a series; audited."""
    with call.db.session() as session:
        row = Annotation(
            study_instance_uid=data.study_instance_uid,
            series_instance_uid=data.series_instance_uid,
            patient_id=data.patient_id,
            description=data.description,
            created_by=call.actor.name,
        )
        session.add(row)
        session.flush()
        audit.record(session, call, "annotation.create", annotation_id=row.id)
        return annotation_out(row)


def list_annotations(call: Call, search: str | None, limit: int = 200) -> schemas.AnnotationList:
    """Annotations whose UIDs, patient id or description contain ``search`` (newest first)."""
    counts = (
        select(MaskGroup.annotation_id, func.count().label("n"))
        .group_by(MaskGroup.annotation_id)
        .subquery()
    )
    query = (
        select(Annotation, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.annotation_id == Annotation.id)
        .order_by(Annotation.id.desc())
        .limit(limit)
    )
    if search:
        pattern = f"%{search.strip()}%"
        filters = [
            Annotation.description.ilike(pattern),
            Annotation.patient_id.ilike(pattern),
            Annotation.study_instance_uid.ilike(pattern),
            Annotation.series_instance_uid.ilike(pattern),
        ]
        if search.strip().isdigit():
            filters.append(Annotation.id == int(search.strip()))
        query = query.where(or_(*filters))
    with call.db.session() as session:
        rows = session.execute(query).all()
        return schemas.AnnotationList(items=[annotation_out(a, n) for a, n in rows])


def get_annotation(call: Call, annotation_id: int) -> schemas.AnnotationOut:
    """One annotation, or 404."""
    with call.db.session() as session:
        row = session.get(Annotation, annotation_id)
        if row is None:
            raise NotFound(f"Annotation {annotation_id} does not exist.", code="annotation_not_found")
        count = session.scalar(select(func.count()).where(MaskGroup.annotation_id == annotation_id)) or 0
        return annotation_out(row, count)
