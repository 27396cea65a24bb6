"""The server's stored series geometry (``GET /api/annotations/{id}/series``) as a headers-only Series.

``pacs-mask upload --series pacs`` checks masks against the annotation's geometry as the server holds
it (Rows/Columns, slice index range, SOP Instance UIDs, InstanceNumbers) with the same
:func:`pacs_mask_desktop.core.plan.prepare` as a local folder, before anything is sent. The server
already ordered the slices (index 0 = first position along the slice normal), so the order is kept as
given. The result has no pixels: :meth:`Series.pixel_array` is not for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from pacs_mask_desktop.core.dicom_series import Series, SliceRef, series_attribute
from server.contract.messages import SeriesGeometry, SeriesInstance


class GeometryFormatError(ValueError):
    """The geometry document is not the shape the server's API promises."""


def _normal(orientation: list[float] | None) -> np.ndarray | None:
    if not orientation or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 0 else None


def series_from_geometry(geometry: SeriesGeometry) -> Series:
    """A :class:`Series` (headers only, in the server's slice order) from a SeriesGeometry document."""
    try:
        rows, columns = int(geometry.rows), int(geometry.columns)
        instances = sorted(geometry.instances, key=lambda item: int(item.slice_index))
        orientation = geometry.image_orientation_patient
        normal = _normal(orientation)
        refs = []
        for item in instances:
            position = item.image_position_patient
            frame = item.frame_number
            refs.append(
                SliceRef(
                    path=Path(),
                    frame_index=None if frame is None else int(frame) - 1,
                    sop_instance_uid=str(item.sop_instance_uid),
                    instance_number=item.instance_number,
                    position=float(np.dot(position, normal)) if position and normal is not None else None,
                    image_position=(float(position[0]), float(position[1]), float(position[2]))
                    if position
                    else None,
                    rows=rows,
                    columns=columns,
                )
            )
        spacing = geometry.pixel_spacing
        return Series(
            series_instance_uid=str(geometry.series_instance_uid),
            study_instance_uid=str(geometry.study_instance_uid),
            patient_id=geometry.patient_id or "",
            description="",
            modality=geometry.modality or "",
            rows=rows,
            columns=columns,
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
            slice_thickness=geometry.slice_thickness,
            orientation=tuple(orientation) if orientation else None,
            photometric_interpretation="",
            file_window=None,
            slices=refs,
            ordered_by="server",
        )
    except (AttributeError, TypeError, ValueError, IndexError) as exc:
        raise GeometryFormatError(f"the server's series geometry is not readable: {exc!r}") from None


# --- the other way: a Series read from a folder, as the geometry document the server validates ---

_SERIES_TEXT = {
    "frame_of_reference_uid": "FrameOfReferenceUID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_id": "StudyID",
    "accession_number": "AccessionNumber",
    "referring_physician_name": "ReferringPhysicianName",
}


def geometry_from_series(series: Series) -> SeriesGeometry:
    """The SeriesGeometry document of a Series loaded from a folder (``POST /api/annotations`` ``series``).

    Slices are sent in the Series' order (index 0 = first position along the slice normal); the server
    re-checks that order, refuses mixed planes, sizes and duplicate positions, and stores it. Patient and
    study attributes come from the first file's header (one extra header read). Positions are sent only
    when the Series was ordered by them, so both sides fall back to InstanceNumber the same way.
    """
    first = series[0]
    header = pydicom.dcmread(first.path, stop_before_pixels=True) if first.path.is_file() else None

    def text(keyword: str) -> str | None:
        value = header.get(keyword) if header is not None else None
        return (str(value).strip() or None) if value is not None else None

    sop_class = text("SOPClassUID")
    between = (
        series_attribute(header, "PixelMeasuresSequence", "SpacingBetweenSlices")
        if header is not None
        else None
    )  # top level, or in the functional groups of an Enhanced CT/MR
    by_geometry = series.ordered_by == "geometry"
    return SeriesGeometry(
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=series.study_instance_uid,
        modality=series.modality or None,
        rows=series.rows,
        columns=series.columns,
        pixel_spacing=list(series.pixel_spacing) if series.pixel_spacing else None,
        image_orientation_patient=list(series.orientation) if series.orientation else None,
        slice_thickness=series.slice_thickness,
        spacing_between_slices=float(between) if between not in (None, "") else None,
        patient_id=series.patient_id or None,
        **{name: text(keyword) for name, keyword in _SERIES_TEXT.items()},
        source="folder",
        instances=[
            SeriesInstance(
                slice_index=index,
                sop_instance_uid=ref.sop_instance_uid,
                sop_class_uid=sop_class,
                instance_number=ref.instance_number,
                image_position_patient=list(ref.image_position)
                if by_geometry and ref.image_position
                else None,
                frame_number=ref.frame_number,
                rows=ref.rows,
                columns=ref.columns,
            )
            for index, ref in enumerate(series.slices)
        ],
    )


def fetch_annotation_series(api: Any, annotation_id: int) -> Series | None:
    """The annotation's series as the server recorded it, or ``None`` for an older annotation without one.

    Every upload path (desktop, CLI, watch worker, ``upload_inference_result``) calls this before
    :func:`pacs_mask_desktop.core.plan.prepare` so masks are checked against the server's geometry.
    ``api`` is an :class:`~pacs_mask_desktop.core.api_client.ApiClient`; its ``ApiError`` propagates
    (unknown annotation, server unreachable); :class:`GeometryFormatError` for a malformed answer.
    """
    geometry = api.stored_geometry(annotation_id)
    return None if geometry is None else series_from_geometry(geometry)
