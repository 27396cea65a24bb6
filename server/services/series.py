"""An annotation's series geometry in the database: store it, read it back, check mask slices against it.

The geometry arrives already ordered and checked by :mod:`server.geometry`; here it becomes the series
columns of ``annotation`` plus one ``annotation_instance`` row per slice, and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from server.contract import messages
from server.contract.errors import ErrorCode
from server.db.models import Annotation, AnnotationInstance, table_of
from server.errors import NotFound, Unprocessable

_SERIES_FIELDS = (
    "rows",
    "columns",
    "modality",
    "frame_of_reference_uid",
    "pixel_spacing",
    "image_orientation_patient",
    "slice_thickness",
    "spacing_between_slices",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "study_id",
    "accession_number",
    "referring_physician_name",
)


def store_geometry(session: Session, row: Annotation, geometry: messages.SeriesGeometry) -> None:
    """Write ``geometry`` (validated, in slice order) onto the flushed annotation ``row``."""
    for name in _SERIES_FIELDS:
        setattr(row, name, getattr(geometry, name))
    row.geometry_source = geometry.source
    row.slice_count = len(geometry.instances)
    if row.patient_id is None:
        row.patient_id = geometry.patient_id
    session.execute(
        insert(table_of(AnnotationInstance)),
        [
            {
                "annotation_id": row.id,
                "slice_index": item.slice_index,
                "sop_instance_uid": item.sop_instance_uid,
                "sop_class_uid": item.sop_class_uid,
                "instance_number": item.instance_number,
                "position_x": item.image_position_patient[0] if item.image_position_patient else None,
                "position_y": item.image_position_patient[1] if item.image_position_patient else None,
                "position_z": item.image_position_patient[2] if item.image_position_patient else None,
                "frame_number": item.frame_number,
            }
            for item in geometry.instances
        ],
    )


def load_geometry(session: Session, annotation_id: int) -> messages.SeriesGeometry | None:
    """The stored geometry of an annotation, ``None`` for one recorded without it; 404 if it is absent."""
    row = session.get(Annotation, annotation_id)
    if row is None:
        raise NotFound(f"Annotation {annotation_id} does not exist.", code=ErrorCode.ANNOTATION_NOT_FOUND)
    if not row.has_geometry:
        return None
    instances = session.scalars(
        select(AnnotationInstance)
        .where(AnnotationInstance.annotation_id == annotation_id)
        .order_by(AnnotationInstance.slice_index)
    ).all()
    return messages.SeriesGeometry(
        series_instance_uid=row.series_instance_uid,
        study_instance_uid=row.study_instance_uid,
        patient_id=row.patient_id,
        source="pacs" if row.geometry_source == "pacs" else "folder",  # None: recorded before the column
        instances=[_instance_out(i) for i in instances],
        **{name: getattr(row, name) for name in _SERIES_FIELDS},
    )


def _instance_out(row: AnnotationInstance) -> messages.SeriesInstance:
    position = None
    if row.position_x is not None and row.position_y is not None and row.position_z is not None:
        position = [row.position_x, row.position_y, row.position_z]
    return messages.SeriesInstance(
        slice_index=row.slice_index,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        instance_number=row.instance_number,
        image_position_patient=position,
        frame_number=row.frame_number,
    )


@dataclass(frozen=True, slots=True)
class SeriesShape:
    """What mask slices are checked against: the size and each index's SOP Instance UID."""

    rows: int
    columns: int
    sop_instance_uids: tuple[str, ...]

    @property
    def slice_count(self) -> int:
        return len(self.sop_instance_uids)


def load_shape(session: Session, annotation_id: int) -> SeriesShape | None:
    """The size and slice UIDs of an annotation's series, or ``None`` when its geometry is unknown."""
    row = session.get(Annotation, annotation_id)
    if row is None or row.rows is None or row.columns is None:
        return None
    uids = session.scalars(
        select(AnnotationInstance.sop_instance_uid)
        .where(AnnotationInstance.annotation_id == annotation_id)
        .order_by(AnnotationInstance.slice_index)
    ).all()
    return SeriesShape(row.rows, row.columns, tuple(uids))


def index_problem(shape: SeriesShape, slice_index: int) -> str | None:
    """Why ``slice_index`` cannot be a slice of the series, or ``None``."""
    if slice_index >= shape.slice_count:
        return (
            f"slice index {slice_index} is outside the series, which has {shape.slice_count} slices "
            f"(0..{shape.slice_count - 1})"
        )
    return None


def slice_problems(shape: SeriesShape, items: Iterable[Any]) -> list[dict[str, Any]]:
    """Per slice, every reason it does not fit the series: size, index, SOP Instance UID.

    ``items`` have ``filename``, ``slice_index``, ``width``, ``height`` and ``sop_instance_uid``.
    """
    problems: list[dict[str, Any]] = []
    for item in items:
        reasons: list[str] = []
        if item.width != shape.columns or item.height != shape.rows:
            reasons.append(
                f"the mask is {item.width}x{item.height} but the series' images are "
                f"{shape.columns}x{shape.rows} (Columns x Rows)"
            )
        out_of_range = index_problem(shape, item.slice_index)
        if out_of_range:
            reasons.append(out_of_range)
        elif (
            item.sop_instance_uid is not None
            and item.sop_instance_uid != shape.sop_instance_uids[item.slice_index]
        ):
            reasons.append(
                f"SOP Instance UID {item.sop_instance_uid} is not the instance at slice index "
                f"{item.slice_index} ({shape.sop_instance_uids[item.slice_index]})"
            )
        if reasons:
            problems.append(
                {"index": item.slice_index, "filename": item.filename, "reason": "; ".join(reasons)}
            )
    return problems


def raise_geometry_mismatch(problems: Sequence[dict[str, Any]], shape: SeriesShape, what: str) -> None:
    """One 422 listing every slice that does not fit the series (nothing was ``what``)."""
    if not problems:
        return
    first = problems[0]
    raise Unprocessable(
        f"{len(problems)} slice(s) do not fit the annotation's series ({shape.columns}x{shape.rows}, "
        f"{shape.slice_count} slices); nothing was {what}. First: slice {first['index']} "
        f"({first['filename']}): {first['reason']}.",
        code=ErrorCode.GEOMETRY_MISMATCH,
        details={
            "rows": shape.rows,
            "columns": shape.columns,
            "slice_count": shape.slice_count,
            "slices": list(problems),
        },
    )
