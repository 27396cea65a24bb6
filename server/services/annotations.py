"""Annotations: the DICOM series that mask groups belong to."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, or_, select

from server import audit
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.contract.naming import parse_id
from server.db.models import Annotation, MaskGroup
from server.errors import NotFound, Unprocessable
from server.geometry import validate_geometry
from server.services.serialize import annotation_out
from server.services.series import load_geometry, store_geometry


def create_annotation(call: Call, data: messages.AnnotationCreate) -> messages.AnnotationOut:
    """Register an annotation for a series, with its geometry when the client sent one; audited.

    A sent geometry is re-ordered and checked by :func:`server.geometry.validate_geometry`, and its
    UIDs (and patient id, when both are given) must be those of the request: 422 otherwise.
    """
    geometry = None
    if data.series is not None:
        geometry = validate_geometry(data.series)
        mismatched = {
            name: {"request": sent, "series": getattr(geometry, name)}
            for name, sent in (
                ("study_instance_uid", data.study_instance_uid),
                ("series_instance_uid", data.series_instance_uid),
                ("patient_id", data.patient_id),
            )
            if sent is not None and getattr(geometry, name) is not None and sent != getattr(geometry, name)
        }
        if mismatched:
            raise Unprocessable(
                f"The series geometry is not the series of the request ({', '.join(mismatched)} differ).",
                code=ErrorCode.SERIES_MISMATCH,
                details=mismatched,
            )
    return _create(
        call, data.study_instance_uid, data.series_instance_uid, data.patient_id, data.description, geometry
    )


def create_annotation_with_geometry(
    call: Call, geometry: messages.SeriesGeometry, description: str | None
) -> messages.AnnotationOut:
    """Register an annotation from a geometry the server built itself (``geometry_from_datasets``)."""
    return _create(
        call,
        geometry.study_instance_uid,
        geometry.series_instance_uid,
        geometry.patient_id,
        description,
        geometry,
    )


def _create(
    call: Call,
    study_instance_uid: str,
    series_instance_uid: str,
    patient_id: str | None,
    description: str | None,
    geometry: messages.SeriesGeometry | None,
) -> messages.AnnotationOut:
    with call.db.session() as session:
        row = Annotation(
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            patient_id=patient_id,
            description=description,
            created_by=call.actor.name,
        )
        session.add(row)
        session.flush()
        detail = None
        if geometry is not None:
            store_geometry(session, row, geometry)
            detail = {"geometry_source": geometry.source, "slice_count": len(geometry.instances)}
        audit.record(session, call, "annotation.create", annotation_id=row.id, detail=detail)
        return annotation_out(row)


def get_series(call: Call, annotation_id: int) -> messages.SeriesGeometry:
    """The annotation's series geometry; 404 ``series_geometry_unknown`` for one recorded without it."""
    with call.db.session() as session:
        geometry = load_geometry(session, annotation_id)
        if geometry is None:
            raise NotFound(
                f"Annotation {annotation_id} was created without its series geometry (before the server "
                "recorded it); its masks cannot be checked against the series.",
                code=ErrorCode.SERIES_GEOMETRY_UNKNOWN,
            )
        audit.record(session, call, "annotation.series.view", annotation_id=annotation_id)
        return geometry


def list_annotations(call: Call, search: str | None, limit: int = 200) -> messages.AnnotationList:
    """Annotations whose UIDs, patient id or description contain ``search`` (newest first)."""
    counts = (
        select(MaskGroup.annotation_id, func.count().label("n")).group_by(MaskGroup.annotation_id).subquery()
    )
    query = (
        select(Annotation, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.annotation_id == Annotation.id)
        .order_by(Annotation.id.desc())
        .limit(limit)
    )
    if search:
        pattern = f"%{search.strip()}%"
        filters: list[ColumnElement[bool]] = [
            Annotation.description.ilike(pattern),
            Annotation.patient_id.ilike(pattern),
            Annotation.study_instance_uid.ilike(pattern),
            Annotation.series_instance_uid.ilike(pattern),
        ]
        if (number := parse_id(search.strip())) is not None:
            filters.append(Annotation.id == number)
        query = query.where(or_(*filters))
    with call.db.session() as session:
        rows = session.execute(query).all()
        return messages.AnnotationList(items=[annotation_out(a, n) for a, n in rows])


def get_annotation(call: Call, annotation_id: int) -> messages.AnnotationOut:
    """One annotation, or 404."""
    with call.db.session() as session:
        row = session.get(Annotation, annotation_id)
        if row is None:
            raise NotFound(f"Annotation {annotation_id} does not exist.", code=ErrorCode.ANNOTATION_NOT_FOUND)
        count = session.scalar(select(func.count()).where(MaskGroup.annotation_id == annotation_id)) or 0
        return annotation_out(row, count)
