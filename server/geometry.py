"""Series geometry: what an annotation knows of its DICOM series, built from headers or checked.

The server is the authority on slice order. Slice index 0 is the first position along the slice normal
(row cosines x column cosines of ImageOrientationPatient), ascending: for a head-first axial CT the normal
points to the head, so slice 0 is the most inferior (feet-most) slice. Without positions the order falls
back to InstanceNumber (then frame), without those to the order the caller gave.

A series is one volume only if every slice has the same orientation, size and a position of its own:
mixed planes (a radial MR), duplicate positions (echoes, phases) and differing Rows/Columns are refused
with a 422 that names the problem and the slices. Two entry points:

- :func:`geometry_from_datasets`: from pydicom Datasets (headers read by the server from the PACS);
- :func:`validate_geometry`: a geometry a client read from a folder; re-ordered and checked here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from server.contract import messages
from server.contract.errors import ErrorCode
from server.errors import Unprocessable

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two direction cosines still counted as the same orientation."""
POSITION_TOLERANCE_MM = 1e-3
"""Two slices closer than this along the normal are at the same position."""
MAX_LISTED = 20
"""At most this many offending slices are listed in an error's details."""


class GeometryError(Unprocessable):
    """A series that cannot be one volume of masks; ``code`` names the problem."""

    code = ErrorCode.SERIES_GEOMETRY_INVALID


class MalformedHeader(GeometryError):
    """A header value that cannot be read (an attribute without value, a number that is not finite).

    422 ``series_geometry_invalid`` for headers a client sent; the PACS path answers it as
    ``502 pacs_malformed_answer`` (:mod:`server.services.pacs_annotations`).
    """


MULTIFRAME_NEEDS_POSITIONS = frozenset({"CT", "MR", "PT"})
"""Modalities whose multi-frame images are refused without plane positions (no frame-order fallback)."""


def geometry_from_datasets(datasets: Iterable[Dataset], source: str) -> messages.SeriesGeometry:
    """Build the geometry of one series from its instances' headers (any order; multi-frame expanded).

    Instances without pixels (no Rows/Columns: SR, presentation states) are ignored. Raises
    :class:`GeometryError` (422) when there is no image, the instances belong to several series, or the
    slices cannot form one volume (see :func:`validate_geometry`); :class:`MalformedHeader` (a
    GeometryError) when a header value cannot be read, never a TypeError/ValueError.
    """
    images = [ds for ds in datasets if "Rows" in ds and "Columns" in ds]
    if not images:
        raise GeometryError("The series has no image instances.", code=ErrorCode.SERIES_WITHOUT_IMAGES)
    series_uids = sorted({_text(ds, "SeriesInstanceUID") or "" for ds in images})
    if len(series_uids) > 1:
        raise GeometryError(
            f"The instances belong to {len(series_uids)} different series; one annotation is one series.",
            code=ErrorCode.SERIES_MIXED,
            details={"series_instance_uids": series_uids[:MAX_LISTED]},
        )
    try:
        data = _geometry_data(images, source)
    except MalformedHeader:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError) as exc:
        raise MalformedHeader(
            f"The series' headers cannot be read: {type(exc).__name__}: {exc}.",
            details={"problem": f"{type(exc).__name__}: {exc}"[:500]},
        ) from None
    try:
        geometry = msgspec.convert(data, messages.SeriesGeometry)
    except msgspec.ValidationError as exc:
        raise GeometryError(f"The series' headers do not fit: {exc}.", details={"problem": str(exc)}) from exc
    return validate_geometry(geometry)


def _geometry_data(images: list[Dataset], source: str) -> dict[str, Any]:
    """The geometry of ``images`` as plain data; a malformed value raises (mapped by the caller)."""
    first = images[0]
    instances: list[dict[str, Any]] = []
    for ds in images:
        frames = _number_of_frames(ds)
        multi = frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
        positions = _frame_positions(ds, frames)
        for frame in range(frames):
            instances.append(
                {
                    "slice_index": len(instances),
                    "sop_instance_uid": _text(ds, "SOPInstanceUID"),
                    "sop_class_uid": _text(ds, "SOPClassUID"),
                    "instance_number": _instance_number(ds),
                    "image_position_patient": positions[frame],
                    "frame_number": frame + 1 if multi else None,
                    "image_orientation_patient": _orientation(ds, frame),
                    "rows": int(ds.Rows),
                    "columns": int(ds.Columns),
                }
            )
    orientations = [i["image_orientation_patient"] for i in instances if i["image_orientation_patient"]]
    return {
        "series_instance_uid": _text(first, "SeriesInstanceUID"),
        "study_instance_uid": _text(first, "StudyInstanceUID"),
        "frame_of_reference_uid": _text(first, "FrameOfReferenceUID"),
        "modality": _text(first, "Modality"),
        "rows": int(first.Rows),
        "columns": int(first.Columns),
        "pixel_spacing": _floats(_attribute(first, "PixelMeasuresSequence", "PixelSpacing"), 2),
        "image_orientation_patient": orientations[0] if orientations else None,
        "slice_thickness": _number(_attribute(first, "PixelMeasuresSequence", "SliceThickness")),
        "spacing_between_slices": _number(_attribute(first, "PixelMeasuresSequence", "SpacingBetweenSlices")),
        "patient_id": _text(first, "PatientID"),
        "patient_name": _text(first, "PatientName"),
        "patient_birth_date": _text(first, "PatientBirthDate"),
        "patient_sex": _text(first, "PatientSex"),
        "study_date": _text(first, "StudyDate"),
        "study_time": _text(first, "StudyTime"),
        "study_id": _text(first, "StudyID"),
        "accession_number": _text(first, "AccessionNumber"),
        "referring_physician_name": _text(first, "ReferringPhysicianName"),
        "source": source,
        "instances": instances,
    }


def validate_geometry(geometry: messages.SeriesGeometry) -> messages.SeriesGeometry:
    """Check a geometry and return it in the server's slice order, numbered 0..n-1.

    Refuses (422, naming the problem and the slices): slice indexes that are not 0..n-1 each once, a
    repeated instance/frame, slices whose Rows/Columns differ from the series', mixed orientations, an
    orientation whose cosines are not two orthogonal unit vectors, some slices with a position and others
    without, and two slices at the same position along the normal. Per-slice orientation/size checks are
    dropped from the result (the series has one of each).
    """
    instances = sorted(geometry.instances, key=lambda i: i.slice_index)
    _check_indexes(instances)
    _check_unique_instances(instances)
    _check_sizes(geometry, instances)
    _check_multiframe_positions(geometry, instances)
    orientation = _check_orientation(geometry, instances)
    ordered = _order(instances, orientation)
    renumbered = [
        msgspec.structs.replace(
            item, slice_index=index, image_orientation_patient=None, rows=None, columns=None
        )
        for index, item in enumerate(ordered)
    ]
    return msgspec.structs.replace(
        geometry,
        image_orientation_patient=list(orientation) if orientation is not None else None,
        instances=renumbered,
        **{name: _blank_to_none(getattr(geometry, name)) for name in _TEXT_FIELDS},
    )


def slice_normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    """The unit slice normal: row direction cosines x column direction cosines."""
    r, c = orientation[:3], orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    return (n[0] / norm, n[1] / norm, n[2] / norm) if norm > 0 else n


_TEXT_FIELDS = (
    "frame_of_reference_uid",
    "modality",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "study_id",
    "accession_number",
    "referring_physician_name",
)


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() or None if isinstance(value, str) else value


def _describe(item: messages.SeriesInstance) -> dict[str, Any]:
    """How an error names one slice: its index as sent, SOP Instance UID and frame."""
    described: dict[str, Any] = {"slice_index": item.slice_index, "sop_instance_uid": item.sop_instance_uid}
    if item.frame_number is not None:
        described["frame_number"] = item.frame_number
    return described


def _check_indexes(instances: list[messages.SeriesInstance]) -> None:
    indexes = [i.slice_index for i in instances]
    if indexes != list(range(len(instances))):
        raise GeometryError(
            f"The slice indexes of the series must be 0..{len(instances) - 1}, each once.",
            details={"slice_indexes": indexes[:MAX_LISTED]},
        )


def _check_unique_instances(instances: list[messages.SeriesInstance]) -> None:
    seen: dict[tuple[str, int | None], messages.SeriesInstance] = {}
    repeated = []
    for item in instances:
        key = (item.sop_instance_uid, item.frame_number)
        if key in seen:
            repeated.append(_describe(item))
        seen[key] = item
    if repeated:
        raise GeometryError(
            f"{len(repeated)} slice(s) repeat an instance (and frame) already in the series, "
            f"e.g. SOP Instance {repeated[0]['sop_instance_uid']}.",
            code=ErrorCode.SERIES_DUPLICATE_INSTANCES,
            details={"slices": repeated[:MAX_LISTED]},
        )


def _check_multiframe_positions(
    geometry: messages.SeriesGeometry, instances: list[messages.SeriesInstance]
) -> None:
    """Refuse CT/MR/PET multi-frame images without plane positions when frame order is ambiguous.

    As for single-frame CT/MR/PET (:meth:`server.pacs.Pacs.require_image_plane`), guessing an order
    could put every mask upside down. One exception: a series that is a single multi-frame instance
    with no spatial information at all (no positions, no orientation, like pydicom's
    ``emri_small.dcm``). There slice index k is frame k+1 of that one object: nothing can be placed in
    space, so no other order exists, and every mask stays tied to its (SOP Instance UID, frame number).
    """
    modality = (geometry.modality or "").strip().upper()
    if modality not in MULTIFRAME_NEEDS_POSITIONS:
        return
    if (
        len({i.sop_instance_uid for i in instances}) == 1
        and geometry.image_orientation_patient is None
        and all(i.image_position_patient is None and i.image_orientation_patient is None for i in instances)
    ):
        return
    unplaced = [
        _describe(i) for i in instances if i.frame_number is not None and i.image_position_patient is None
    ]
    if unplaced:
        raise GeometryError(
            f"{len(unplaced)} frame(s) of the multi-frame {modality} image {unplaced[0]['sop_instance_uid']} "
            "have no plane position (PlanePositionSequence/ImagePositionPatient), so the order of its "
            "slices is unknown; frame order is not used as slice order for CT, MR or PET.",
            code=ErrorCode.SERIES_MISSING_POSITIONS,
            details={"slices": unplaced[:MAX_LISTED]},
        )


def _check_sizes(geometry: messages.SeriesGeometry, instances: list[messages.SeriesInstance]) -> None:
    wrong = [
        {**_describe(i), "rows": i.rows, "columns": i.columns}
        for i in instances
        if (i.rows is not None and i.rows != geometry.rows)
        or (i.columns is not None and i.columns != geometry.columns)
    ]
    if wrong:
        raise GeometryError(
            f"{len(wrong)} slice(s) are not {geometry.columns}x{geometry.rows} (Columns x Rows) like the "
            f"series, e.g. slice {wrong[0]['slice_index']} is {wrong[0]['columns']}x{wrong[0]['rows']}; "
            "slices of different sizes are not one volume.",
            code=ErrorCode.SERIES_INCONSISTENT_SIZE,
            details={"rows": geometry.rows, "columns": geometry.columns, "slices": wrong[:MAX_LISTED]},
        )


def _same_orientation(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) <= ORIENTATION_TOLERANCE for x, y in zip(a, b, strict=True))


def _check_orientation(
    geometry: messages.SeriesGeometry, instances: list[messages.SeriesInstance]
) -> tuple[float, ...] | None:
    """The series orientation (one for all slices, two orthogonal unit vectors), or ``None`` if unknown."""
    orientation = geometry.image_orientation_patient
    if orientation is None:
        orientation = next(
            (i.image_orientation_patient for i in instances if i.image_orientation_patient), None
        )
    if orientation is None:
        return None
    others = [
        {**_describe(i), "image_orientation_patient": i.image_orientation_patient}
        for i in instances
        if i.image_orientation_patient is not None
        and not _same_orientation(i.image_orientation_patient, orientation)
    ]
    if others:
        raise GeometryError(
            f"The series mixes planes: {len(others)} slice(s) have another ImageOrientationPatient than "
            f"{[round(v, 4) for v in orientation]} (e.g. slice {others[0]['slice_index']}), as in a radial "
            "MR; a series with several orientations is not one volume.",
            code=ErrorCode.SERIES_MIXED_ORIENTATIONS,
            details={"image_orientation_patient": list(orientation), "slices": others[:MAX_LISTED]},
        )
    row, col = orientation[:3], orientation[3:]
    dot = sum(r * c for r, c in zip(row, col, strict=True))
    norms = [math.sqrt(sum(v * v for v in vector)) for vector in (row, col)]
    if abs(dot) > 0.01 or any(abs(n - 1.0) > 0.01 for n in norms):
        raise GeometryError(
            f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors.",
            details={"image_orientation_patient": list(orientation)},
        )
    return tuple(orientation)


def _order(
    instances: list[messages.SeriesInstance], orientation: tuple[float, ...] | None
) -> list[messages.SeriesInstance]:
    """Slices in the project's order: along the normal, else by InstanceNumber, else as given."""
    with_position = [i for i in instances if i.image_position_patient is not None]
    if with_position and len(with_position) < len(instances):
        missing = [_describe(i) for i in instances if i.image_position_patient is None]
        raise GeometryError(
            f"{len(missing)} slice(s) have no ImagePositionPatient while the others do "
            f"(e.g. slice {missing[0]['slice_index']}); the order of the series is unknown.",
            code=ErrorCode.SERIES_MISSING_POSITIONS,
            details={"slices": missing[:MAX_LISTED]},
        )
    if with_position and orientation is not None:
        normal = slice_normal(orientation)

        def along(item: messages.SeriesInstance) -> float:
            position = item.image_position_patient or (0.0, 0.0, 0.0)
            return sum(p * n for p, n in zip(position, normal, strict=True))

        keyed = sorted(
            ((along(i), i) for i in instances),
            key=lambda pair: (pair[0], pair[1].instance_number or 0, pair[1].frame_number or 0),
        )
        pairs = [(a, b) for a, b in itertools.pairwise(keyed) if b[0] - a[0] < POSITION_TOLERANCE_MM]
        duplicates = [
            {"position_mm": round(b[0], 4), "slices": [_describe(a[1]), _describe(b[1])]} for a, b in pairs
        ]
        if pairs:
            (_, first), (position, second) = pairs[0]
            raise GeometryError(
                f"{len(duplicates)} pair(s) of slices share a position along the slice normal (several "
                f"echoes, phases or acquisitions?), e.g. slices {first.slice_index} and "
                f"{second.slice_index} at {round(position, 4)} mm; such a series is not "
                "one volume.",
                code=ErrorCode.SERIES_DUPLICATE_POSITIONS,
                details={"duplicates": duplicates[:MAX_LISTED]},
            )
        return [item for _, item in keyed]
    if all(i.instance_number is not None for i in instances):
        return sorted(instances, key=lambda i: (i.instance_number or 0, i.frame_number or 0))
    return instances


# --- reading pydicom headers (single-frame and enhanced multi-frame) ---


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple | MultiValue):
            return float(value[0]) if len(value) else None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(value: Any, count: int) -> list[float] | None:
    """``count`` finite numbers, ``None`` when absent or empty; :class:`MalformedHeader` for anything else.

    A position or orientation that is there but unreadable must not pass as "no position": the order
    would silently fall back to InstanceNumber.
    """
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return None
    if isinstance(value, list | tuple | MultiValue) and not len(value):
        return None
    try:
        numbers = [float(v) for v in (value if isinstance(value, list | tuple | MultiValue) else [value])]
    except (TypeError, ValueError):
        raise MalformedHeader(f"The header value {str(value)[:80]!r} is not {count} numbers.") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise MalformedHeader(
            f"The header value {str(value)[:80]!r} is not {count} finite numbers.",
            details={"value": str(value)[:80]},
        )
    return numbers


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _functional(ds: Dataset, frame: int | None, group: str, keyword: str) -> Any:
    """``keyword`` from ``frame``'s per-frame functional group ``group``, else from the shared one."""
    sources = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and per_frame is not None and frame < len(per_frame):
        sources.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        sources.append(shared[0])
    for item in sources:
        seq = item.get(group)
        if seq is not None and len(seq) and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _attribute(ds: Dataset, group: str, keyword: str) -> Any:
    """A top-level attribute, or the first frame's functional-group copy of it (enhanced objects)."""
    value = ds.get(keyword)
    return value if value is not None else _functional(ds, 0, group, keyword)


def _orientation(ds: Dataset, frame: int) -> list[float] | None:
    value = ds.get("ImageOrientationPatient")
    if value is None:
        value = _functional(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    return _floats(value, 6)


def _instance_number(ds: Dataset) -> int | None:
    number = _number(ds.get("InstanceNumber"))
    if number is None:
        return None
    if not math.isfinite(number) or number != int(number) or not -(2**31) <= number < 2**31:
        raise MalformedHeader(
            f"InstanceNumber {number} of instance {ds.get('SOPInstanceUID')} is not an integer.",
            details={"instance_number": str(number)},
        )
    return int(number)


def _frame_positions(ds: Dataset, frames: int) -> list[list[float] | None]:
    """Each frame's ImagePositionPatient: per-frame groups, else RT Dose offsets, else the top-level one."""
    if frames == 1 and "ImagePositionPatient" in ds:
        return [_floats(ds.ImagePositionPatient, 3)]
    if "PerFrameFunctionalGroupsSequence" in ds:
        return [
            _floats(_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3)
            for i in range(frames)
        ]
    origin = _floats(ds.get("ImagePositionPatient"), 3)
    offsets = ds.get("GridFrameOffsetVector")
    orientation = _orientation(ds, 0)
    if origin is not None and offsets is not None and len(offsets) == frames and orientation is not None:
        normal = slice_normal(orientation)
        return [[o + float(offset) * n for o, n in zip(origin, normal, strict=True)] for offset in offsets]
    if frames == 1:
        return [origin]
    return [None] * frames
