"""A DICOM series as the desktop viewer and upload planning see it.

``load_series(folder)`` reads only headers (``stop_before_pixels=True``), groups files by
SeriesInstanceUID and orders slices by geometry. Pixels are decoded lazily, one frame at a time, through
pydicom (with the permissively licensed decoders pyproject.toml lists; core/jpeg12.py adds 12-bit JPEG,
core/jpeg_lossless.py lossless JPEG)
and kept in a small bounded LRU cache, so a 1000-slice series never holds every decoded frame in memory.

Slice order convention (what "slice index" means everywhere in this project): slices are sorted by
ImagePositionPatient projected on the slice normal ``row x col`` of ImageOrientationPatient, ascending.
For an axial series (orientation ``[1,0,0,0,1,0]``) index 0 is therefore the most inferior slice; this
is the order ITK/GDCM and SimpleITK use, so model output written as a numpy volume lines up. When any
slice has no usable geometry the whole series falls back to InstanceNumber (then frame order).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array as _decode_pixels

from pacs_mask_desktop.core import jpeg12, jpeg_lossless

log = logging.getLogger(__name__)
jpeg12.register()  # 12-bit JPEG Extended: pydicom's permissive plugins leave it out
jpeg_lossless.register()  # lossless JPEG without GDCM (core/jpeg_lossless.py says why)

DEFAULT_CACHE_SIZE = 32
"""Decoded frames kept per series (a 512x512 float32 frame is 1 MiB)."""


class Window(NamedTuple):
    """A display window in modality units (Hounsfield units for CT)."""

    center: float
    width: float


WINDOW_PRESETS: dict[str, Window] = {
    "soft_tissue": Window(40.0, 400.0),
    "lung": Window(-600.0, 1500.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
}
"""Standard CT windows. ``Series.window_presets()`` adds ``"default"`` from the files when present."""


class SeriesError(Exception):
    """The folder holds no usable DICOM image series (or not the one asked for)."""


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file found in the folder that is not part of the series, and why."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class SliceRef:
    """One 2-D slice: a single-frame file, or one frame of a multi-frame file.

    ``frame_index`` is the 0-based frame inside a multi-frame file and ``None`` for single-frame files.
    ``position`` is ImagePositionPatient projected on the slice normal (mm), ``None`` without geometry.
    """

    path: Path
    frame_index: int | None
    sop_instance_uid: str
    instance_number: int | None
    position: float | None
    image_position: tuple[float, float, float] | None
    rows: int
    columns: int
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    @property
    def frame_number(self) -> int | None:
        """The DICOM (1-based) frame number for multi-frame files, else ``None``."""
        return None if self.frame_index is None else self.frame_index + 1


class Series:
    """An ordered DICOM series with lazy, cached pixel access.

    Build it with :func:`load_series`. ``series[i]`` is the i-th :class:`SliceRef` in geometry order and
    ``series.pixel_array(i)`` its pixels in modality units. Safe to read from several threads.
    """

    def __init__(
        self,
        *,
        series_instance_uid: str,
        study_instance_uid: str,
        patient_id: str,
        description: str,
        modality: str,
        rows: int,
        columns: int,
        pixel_spacing: tuple[float, float] | None,
        slice_thickness: float | None,
        orientation: tuple[float, ...] | None,
        photometric_interpretation: str,
        file_window: Window | None,
        slices: Iterable[SliceRef],
        ordered_by: str,
        warnings: Iterable[str] = (),
        skipped: Iterable[SkippedFile] = (),
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.series_instance_uid = series_instance_uid
        self.study_instance_uid = study_instance_uid
        self.patient_id = patient_id
        self.description = description
        self.modality = modality
        self.rows = rows
        self.columns = columns
        self.pixel_spacing = pixel_spacing
        self.slice_thickness = slice_thickness
        self.orientation = orientation
        self.photometric_interpretation = photometric_interpretation
        self.file_window = file_window
        self.slices: tuple[SliceRef, ...] = tuple(slices)
        self.ordered_by = ordered_by
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.skipped: tuple[SkippedFile, ...] = tuple(skipped)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._sop_index: dict[str, list[int]] = {}
        self._instance_index: dict[int, list[int]] = {}
        for i, ref in enumerate(self.slices):
            self._sop_index.setdefault(ref.sop_instance_uid, []).append(i)
            if ref.instance_number is not None:
                self._instance_index.setdefault(ref.instance_number, []).append(i)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> SliceRef:
        return self.slices[index]

    def __iter__(self) -> Iterator[SliceRef]:
        return iter(self.slices)

    def __repr__(self) -> str:
        return (
            f"Series(uid={self.series_instance_uid!r}, modality={self.modality!r}, slices={len(self)}, "
            f"{self.rows}x{self.columns}, ordered_by={self.ordered_by!r})"
        )

    @property
    def is_multiframe(self) -> bool:
        """True when at least one slice is a frame of a multi-frame file."""
        return any(ref.frame_index is not None for ref in self.slices)

    @property
    def cached_frames(self) -> int:
        """How many decoded frames the LRU cache holds now (never more than ``cache_size``)."""
        return len(self._cache)

    def indexes_of_sop(self, sop_instance_uid: str) -> list[int]:
        """Slice indexes whose SOP Instance UID is ``sop_instance_uid`` (several for multi-frame files)."""
        return list(self._sop_index.get(sop_instance_uid, ()))

    def indexes_of_instance_number(self, instance_number: int) -> list[int]:
        """Slice indexes whose InstanceNumber is ``instance_number`` (normally zero or one)."""
        return list(self._instance_index.get(instance_number, ()))

    def sop_instance_uids(self) -> frozenset[str]:
        """Every SOP Instance UID in the series (for matching masks named after a UID)."""
        return frozenset(self._sop_index)

    def pixel_array(self, index: int) -> np.ndarray:
        """Slice ``index`` as a read-only float32 ``(rows, columns)`` array in modality units.

        RescaleSlope/Intercept are applied (so CT is in HU). Colour images are reduced to luminance so
        every caller can treat a slice as a 2-D scalar image. Decoded lazily from disk and cached (LRU,
        at most ``cache_size`` frames); the array is read-only because it is shared through the cache.
        """
        ref = self.slices[index]  # IndexError for a bad index, like a sequence
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
                return cached
        array = _read_frame(ref)  # decode outside the lock: other threads keep reading the cache
        array.flags.writeable = False
        with self._lock:
            self._cache[index] = array
            self._cache.move_to_end(index)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return array

    def clear_cache(self) -> None:
        """Drop every decoded frame (e.g. when the viewer closes the series)."""
        with self._lock:
            self._cache.clear()

    def default_window(self) -> Window:
        """The window to open the series with: the files' WindowCenter/Width if present.

        Without one, CT opens in the soft-tissue window and other modalities get a window spanning
        the 1st-99th percentile of the middle slice (reads one frame).
        """
        if self.file_window is not None:
            return self.file_window
        if self.modality == "CT":
            return WINDOW_PRESETS["soft_tissue"]
        middle = self.pixel_array(len(self) // 2)
        low, high = np.percentile(middle, [1.0, 99.0])
        width = max(float(high - low), 1.0)
        return Window(float(low) + width / 2.0, width)

    def window_presets(self) -> dict[str, Window]:
        """``WINDOW_PRESETS`` plus ``"default"`` (the files' own window) first when the files have one."""
        presets: dict[str, Window] = {}
        if self.file_window is not None:
            presets["default"] = self.file_window
        presets.update(WINDOW_PRESETS)
        return presets


def window_level(array: np.ndarray, center: float, width: float, *, invert: bool = False) -> np.ndarray:
    """Map modality values to display bytes with the DICOM linear VOI window (PS3.3 C.11.2.1.2).

    Values at or below ``center - width/2`` become 0, at or above ``center + width/2`` become 255.
    ``invert`` flips the result (MONOCHROME1). Vectorised float32 arithmetic with in-place clipping:
    about a millisecond for a 512x512 frame, fast enough to follow a mouse drag.
    """
    width = max(float(width), 1.0)
    if width <= 1.0:  # the standard's binary threshold for width 1
        out = np.where(np.asarray(array) > center - 0.5, 255, 0).astype(np.uint8)
    else:
        scale = np.float32(255.0 / (width - 1.0))
        offset = np.float32((0.5 - (float(center) - 0.5) / (width - 1.0)) * 255.0 + 0.5)  # +0.5 rounds
        scaled = np.multiply(array, scale, dtype=np.float32)
        scaled += offset
        np.clip(scaled, 0.0, 255.0, out=scaled)
        out = scaled.astype(np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def load_series(
    folder: Path | str,
    *,
    series_instance_uid: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Series:
    """Scan ``folder`` recursively and return its DICOM image series in geometry order.

    Only headers are read. Files that are not DICOM, or DICOM without an image (SR, RT Plan, DICOMDIR),
    are skipped and listed in ``Series.skipped`` with the reason. If the folder holds several series,
    the one with the most slices is returned (or the one named by ``series_instance_uid``) and each
    other series is described in ``Series.warnings``: a folder exported from a PACS often carries a
    scout or a second reconstruction, and refusing to open it would be unhelpful. ``SeriesError`` is
    raised when there is no image series at all, or the asked-for UID is absent.
    ``on_progress(done, total)`` is called per file; setting ``cancel`` stops with ``SeriesError``.
    """
    root = Path(folder)
    if not root.exists():
        raise SeriesError(f"{root} does not exist")
    if not root.is_dir():
        raise SeriesError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    skipped: list[SkippedFile] = []
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for done, path in enumerate(files, start=1):
        if cancel is not None and cancel.is_set():
            raise SeriesError("loading the series was cancelled")
        header, reason = _read_header(path)
        if header is None:
            skipped.append(SkippedFile(path, reason))
        else:
            uid = str(header.get("SeriesInstanceUID", "") or "")
            groups.setdefault(uid, []).append((path, header))
        if on_progress is not None:
            on_progress(done, len(files))
    if not groups:
        raise SeriesError(f"no DICOM image files in {root} ({len(skipped)} other files skipped)")

    def frame_count(items: list[tuple[Path, Dataset]]) -> int:
        return sum(_number_of_frames(ds) for _, ds in items)

    if series_instance_uid is not None:
        if series_instance_uid not in groups:
            raise SeriesError(f"series {series_instance_uid} is not in {root}")
        chosen = series_instance_uid
    else:
        chosen = max(sorted(groups), key=lambda uid: frame_count(groups[uid]))
    warnings = [
        f"folder also holds series {uid or '(no SeriesInstanceUID)'} "
        f"({frame_count(items)} slices, {_text(items[0][1], 'SeriesDescription') or 'no description'}): "
        "not opened"
        for uid, items in sorted(groups.items())
        if uid != chosen
    ]
    return _build_series(groups[chosen], warnings, skipped, cache_size)


def series_from_headers(
    items: Iterable[tuple[Path, Dataset]], *, cache_size: int = DEFAULT_CACHE_SIZE
) -> Series:
    """A :class:`Series` from headers read elsewhere, each with the file its pixels are (or will be) in.

    The PACS browser builds the series from the WADO-RS metadata before the instances arrive, with the
    paths their files will have in the DICOM cache; ordering and attributes follow :func:`load_series`.
    ``SeriesError`` when there is no header with an image.
    """
    usable = [(Path(path), ds) for path, ds in items if "Rows" in ds and "Columns" in ds]
    if not usable:
        raise SeriesError("the series has no image instances")
    return _build_series(usable, [], [], cache_size)


def _read_header(path: Path) -> tuple[Dataset | None, str]:
    """The header of ``path`` if it is a DICOM image file, else ``(None, reason)``."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except (OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as exc:
        return None, f"unreadable DICOM header: {exc}"
    if "Rows" not in ds or "Columns" not in ds:
        kind = _text(ds, "Modality") or str(ds.get("SOPClassUID", "")) or "DICOM"
        return None, f"no image in this {kind} file"
    return ds, ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _first_number(value: Any) -> float | None:
    """The first value of a possibly multi-valued numeric element, or ``None``."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            return float(value[0]) if len(value) else None
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _functional(ds: Dataset, frame: int | None, group: str, keyword: str) -> Any:
    """``keyword`` from the per-frame functional group ``group`` of ``frame``, else the shared one."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if frame < len(per_frame):
            sources.append(per_frame[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        sources.append(ds.SharedFunctionalGroupsSequence[0])
    for item in sources:
        seq = item.get(group)
        if seq is not None and len(seq) and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def series_attribute(ds: Dataset, group: str, keyword: str) -> Any:
    """A top-level attribute, else its copy in the functional group ``group`` (first frame's, else shared).

    Enhanced CT/MR objects keep e.g. SpacingBetweenSlices only in ``PixelMeasuresSequence``; the server
    reads it the same way (``server.geometry``).
    """
    value = ds.get(keyword)
    return value if value is not None else _functional(ds, 0, group, keyword)


def _orientation(ds: Dataset, frame: int | None) -> tuple[float, ...] | None:
    value = ds.get("ImageOrientationPatient")
    if value is None:
        value = _functional(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    return None if value is None else _floats(value, 6)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    value = ds.get("PixelSpacing")
    if value is None:
        value = _functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    floats = None if value is None else _floats(value, 2)
    return None if floats is None else (floats[0], floats[1])


def _slice_thickness(ds: Dataset) -> float | None:
    value = ds.get("SliceThickness")
    if value is None:
        value = _functional(ds, 0, "PixelMeasuresSequence", "SliceThickness")
    return _first_number(value)


def _rescale(ds: Dataset, frame: int | None) -> tuple[float, float]:
    slope = _first_number(ds.get("RescaleSlope"))
    intercept = _first_number(ds.get("RescaleIntercept"))
    if slope is None:
        slope = _first_number(_functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _first_number(
            _functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        )
    if slope is None and "DoseGridScaling" in ds:  # RT Dose stores its unit scaling here
        slope = _first_number(ds.get("DoseGridScaling"))
    return (slope if slope else 1.0), (intercept or 0.0)


def _window(ds: Dataset) -> Window | None:
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        center = _first_number(_functional(ds, 0, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_number(_functional(ds, 0, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return Window(center, width)


def _instance_number(ds: Dataset) -> int | None:
    value = _first_number(ds.get("InstanceNumber"))
    return None if value is None else int(value)


Point = tuple[float, float, float]


def _point(value: Any) -> Point | None:
    """An (x, y, z) position from a DICOM value, or ``None`` when absent or malformed."""
    numbers = None if value is None else _floats(value, 3)
    return None if numbers is None else (numbers[0], numbers[1], numbers[2])


def _frame_positions(ds: Dataset, frames: int) -> list[Point | None]:
    """Patient position of each frame: per-frame groups, else RT Dose offsets, else unknown."""
    if frames == 1 and "ImagePositionPatient" in ds:
        return [_point(ds.ImagePositionPatient)]
    if "PerFrameFunctionalGroupsSequence" in ds:
        return [
            _point(_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient")) for i in range(frames)
        ]
    origin = _point(ds.get("ImagePositionPatient"))
    offsets = ds.get("GridFrameOffsetVector")
    orientation = _orientation(ds, None)
    if origin is not None and offsets is not None and len(offsets) == frames and orientation is not None:
        normal = _normal(orientation)
        return [_point(np.asarray(origin) + float(offset) * normal) for offset in offsets]
    return [origin] if frames == 1 else [None] * frames


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else normal


def _build_series(
    items: list[tuple[Path, Dataset]], warnings: list[str], skipped: list[SkippedFile], cache_size: int
) -> Series:
    """Expand frames, de-duplicate copies, order by geometry and collect series-level attributes."""
    first = items[0][1]
    orientations = Counter(o for _, ds in items if (o := _orientation(ds, 0)) is not None)
    orientation = orientations.most_common(1)[0][0] if orientations else None
    if orientation is not None:
        _refuse_mixed_planes(items, orientation)
    normal = _normal(orientation) if orientation is not None else None

    refs: list[SliceRef] = []
    seen: dict[tuple[str, int | None], Path] = {}
    for path, ds in items:
        frames = _number_of_frames(ds)
        multi = frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
        sop = _text(ds, "SOPInstanceUID")
        for frame, position in enumerate(_frame_positions(ds, frames)):
            frame_index = frame if multi else None
            key = (sop, frame_index)
            if sop and key in seen:
                warnings.append(f"{path.name} repeats SOP Instance {sop} of {seen[key].name}: ignored")
                continue
            seen[key] = path
            slope, intercept = _rescale(ds, frame_index)
            refs.append(
                SliceRef(
                    path=path,
                    frame_index=frame_index,
                    sop_instance_uid=sop,
                    instance_number=_instance_number(ds),
                    position=(
                        float(np.dot(position, normal))
                        if position is not None and normal is not None
                        else None
                    ),
                    image_position=position,
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                    rescale_slope=slope,
                    rescale_intercept=intercept,
                )
            )

    if all(ref.position is not None for ref in refs):
        ordered_by = "geometry"
        refs.sort(key=lambda r: (r.position, r.instance_number or 0, r.frame_index or 0, str(r.path)))
        _refuse_duplicate_positions(refs)
    elif all(ref.instance_number is not None for ref in refs):
        ordered_by = "instance_number"
        refs.sort(key=lambda r: (r.instance_number, r.frame_index or 0, str(r.path)))
        _refuse_duplicate_instance_numbers(refs)
        warnings.append("no usable ImagePositionPatient/Orientation: slices ordered by InstanceNumber")
    else:
        ordered_by = "file_order"
        refs.sort(key=lambda r: (str(r.path), r.frame_index or 0))
        warnings.append("no geometry and no InstanceNumber: slices ordered by file name and frame")

    sizes = Counter((r.rows, r.columns) for r in refs)
    (rows, columns), _ = sizes.most_common(1)[0]
    if len(sizes) > 1:
        odd = next(r for r in refs if (r.rows, r.columns) != (rows, columns))
        raise SeriesError(
            f"the series' slices have different sizes ({', '.join(f'{c}x{r}' for r, c in sorted(sizes))}, "
            f"e.g. {odd.path.name} is {odd.columns}x{odd.rows} where most are {columns}x{rows}); "
            "it cannot be opened as one volume"
        )
    return Series(
        series_instance_uid=_text(first, "SeriesInstanceUID"),
        study_instance_uid=_text(first, "StudyInstanceUID"),
        patient_id=_text(first, "PatientID"),
        description=_text(first, "SeriesDescription"),
        modality=_text(first, "Modality"),
        rows=rows,
        columns=columns,
        pixel_spacing=_pixel_spacing(first),
        slice_thickness=_slice_thickness(first),
        orientation=orientation,
        photometric_interpretation=_text(first, "PhotometricInterpretation"),
        file_window=_window(first),
        slices=refs,
        ordered_by=ordered_by,
        warnings=warnings,
        skipped=skipped,
        cache_size=cache_size,
    )


ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines closer than this count as the same orientation (the server uses the same)."""
POSITION_TOLERANCE_MM = 1e-3
"""Slices closer than this along the normal are at the same position (the server uses the same)."""


def _refuse_mixed_planes(items: list[tuple[Path, Dataset]], orientation: tuple[float, ...]) -> None:
    """``SeriesError`` when any slice's ImageOrientationPatient differs from ``orientation``."""
    others = [
        (path, o)
        for path, ds in items
        for frame in range(_number_of_frames(ds) if "PerFrameFunctionalGroupsSequence" in ds else 1)
        if (o := _orientation(ds, frame)) is not None
        and any(abs(a - b) > ORIENTATION_TOLERANCE for a, b in zip(o, orientation, strict=True))
    ]
    if others:
        path, other = others[0]
        raise SeriesError(
            f"the series mixes planes: {len(others)} slice(s) have another orientation than "
            f"{[round(v, 3) for v in orientation]} (e.g. {path.name}: {[round(v, 3) for v in other]}), "
            "as in a radial MR; it cannot be opened as one volume"
        )


def _refuse_duplicate_positions(refs: list[SliceRef]) -> None:
    """``SeriesError`` when two slices (sorted by position) share a position along the normal."""
    for a, b in itertools.pairwise(refs):
        if (b.position or 0.0) - (a.position or 0.0) < POSITION_TOLERANCE_MM:
            name_a = a.path.name + (f" frame {a.frame_number}" if a.frame_number else "")
            name_b = b.path.name + (f" frame {b.frame_number}" if b.frame_number else "")
            raise SeriesError(
                f"two slices share the position {a.position:.3f} mm along the slice normal ({name_a} and "
                f"{name_b}: several echoes, phases or acquisitions?); the series cannot be opened as one "
                "volume"
            )


def _refuse_duplicate_instance_numbers(refs: list[SliceRef]) -> None:
    """``SeriesError`` when two instances (sorted by InstanceNumber) share one: with no positions that
    number is the only slice order, and breaking the tie by file name would not be the server's order
    (the frames of one multi-frame instance share its number and are ordered by frame)."""
    for a, b in itertools.pairwise(refs):
        if a.instance_number == b.instance_number and a.path != b.path:
            raise SeriesError(
                f"two instances share InstanceNumber {a.instance_number} ({a.path.name} and {b.path.name}) "
                "and the series has no usable ImagePositionPatient/Orientation, so the order of its slices "
                "is unknown; the series cannot be opened as one volume"
            )


_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def _read_frame(ref: SliceRef) -> np.ndarray:
    """Decode one frame from disk (only that frame for multi-frame files) into modality units."""
    with open(os.fspath(ref.path), "rb") as handle:
        raw = _decode_pixels(handle, index=ref.frame_index)
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # colour: luminance, so a slice is always 2-D
        array = raw[..., :3].astype(np.float32) @ _LUMA
    else:
        array = raw.astype(np.float32)
    if ref.rescale_slope != 1.0:
        array *= np.float32(ref.rescale_slope)
    if ref.rescale_intercept != 0.0:
        array += np.float32(ref.rescale_intercept)
    return array
