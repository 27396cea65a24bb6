"""NIfTI label volumes and DICOM SEG files as mask slices, placed exactly on the annotation's series grid.

Segmentation models write NIfTI (nnU-Net, TotalSegmentator, MONAI) and viewers write DICOM SEG; this
project stores one PNG label image per DICOM slice. :func:`masks_from_nifti` and :func:`masks_from_seg`
turn either into the same ``mask_0000.png`` ... slices the PNG path uploads (written into a private
staging folder under the user's data dir), so :func:`pacs_mask_desktop.core.plan.prepare` and everything
after it is unchanged. Both take ``geometry``: the annotation's stored series geometry as the server
returns it (``GET /api/annotations/{id}/series``) or as
:func:`pacs_mask_desktop.core.series_geometry.geometry_from_series` builds it from a local folder.

The series grid
    Voxel ``[k][r][c]`` (slice, row, column) of the series lies at
    ``P_k + c * PixelSpacing[1] * rowcos + r * PixelSpacing[0] * colcos`` (LPS, mm), where ``P_k`` is the
    ImagePositionPatient of slice index ``k`` (index 0 = first position along the slice normal) and
    ``rowcos``/``colcos`` are the two halves of ImageOrientationPatient.

NIfTI (never resampled)
    The volume's affine (the sform, else the qform; a file stating neither, or two that disagree, is
    refused) is RAS and is turned into LPS (x and y negated). Each NIfTI axis must run
    along one series axis (rows, columns, slices), either way round: then the voxels are only
    transposed and flipped, value for value, onto the series' slices. Anything else is refused with
    the measured difference, nothing is interpolated:

    * direction: every direction cosine of a NIfTI axis within :data:`DIRECTION_TOLERANCE` (1e-3) of the
      series axis it maps to (about 0.06 degrees);
    * shape: the voxel counts equal the series' slices x Rows x Columns once the axes are matched;
    * positions: the centre of every corner voxel of every slice, as the NIfTI places it, within
      :func:`position_tolerance_mm` (0.01 mm, or 1 % of the smallest voxel spacing when that is larger)
      of the series voxel it lands on. This covers the origin, the spacing (the error accumulates
      across the grid and is measured where it is largest) and unevenly spaced series slices.

    Voxels must be integers 0..255 (a float volume holding whole numbers is accepted); anything else
    is refused naming the value. Label names come from a sidecar next to the file, when there is one:
    ``<name>.json`` (``{"1": "liver"}``, ``{"1": {"name": "liver", "color": [r, g, b]}}`` or an nnU-Net
    ``dataset.json``-style ``{"labels": {"background": 0, "liver": 1}}``), or an ITK-SNAP label
    description / 3D Slicer colour table (``<name>.txt`` / ``<name>.ctbl``: ``1 255 0 0 1 1 1 "liver"``
    or ``1 liver 255 0 0 255``).

DICOM SEG (highdicom)
    A SEG whose ReferencedSeriesSequence does not name the annotation's series, or whose
    FrameOfReferenceUID differs from the series', is refused. Each frame is placed on the slice of the
    SOP Instance UID (and frame number) it references, or, when it references none, on the slice at its
    ImagePositionPatient (within the position tolerance). Segments become label numbers in segment order
    (the first segment is label 1); a pixel claimed by two segments is refused naming the slice.
    BINARY and LABELMAP SEGs are read; FRACTIONAL (probabilities) is refused.

Errors are :class:`VolumeMaskError` with a ``code`` and a message that names the measured difference,
the value or the slice. Slice numbers in messages are 0-based slice indexes (``mask_0007.png`` = 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from zlib_ng import gzip_ng, zlib_ng

from pacs_mask_desktop.core.masks import MaskInfo, encode_label_png, present_labels
from pacs_mask_desktop.core.paths import data_dir, private_dir
from server.contract.errors import ErrorCode
from server.contract.messages import SeriesGeometry

#: zlib-ng's error class. Its stub (zlib_ng.pyi) declares ``error: Exception``, an instance; at run
#: time it is the exception class the inflater raises, as for the stdlib's ``zlib.error``.
ZLIB_NG_ERROR = cast("type[Exception]", zlib_ng.error)

DIRECTION_TOLERANCE = 1e-3
"""Largest difference allowed between a direction cosine of a NIfTI axis and of its series axis."""
POSITION_TOLERANCE_MM = 0.01
"""Largest distance (mm) allowed between a voxel centre as the NIfTI/SEG places it and the series voxel."""
POSITION_TOLERANCE_FRACTION = 0.01
"""... or this fraction of the smallest voxel spacing of the series, when that is larger."""
MAX_LABEL = 255
_MAX_NAME = 64  # the server's bound on a label name (LO)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_NAMES = ("slice", "row", "column")
_AXIS_STEPS = ("between slices", "between rows", "between columns")


class VolumeMaskError(Exception):
    """A NIfTI or SEG file cannot be placed on the series; ``message`` says why, with the measured numbers.

    ``code``: ``unreadable`` (not a NIfTI/SEG, corrupt), ``no_geometry`` (the series geometry lacks
    orientation or positions), ``geometry_mismatch`` (direction, shape, spacing or origin differ),
    ``bad_labels`` (a voxel that is not an integer 0..255, too many segments, fractional SEG),
    ``wrong_series`` (a SEG of another series), ``segments_overlap`` (two segments on one pixel).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class VolumeMasks:
    """A label volume placed on the series grid and written as PNG mask slices.

    ``volume[k]`` is the uint8 label image of slice index ``k`` (Rows x Columns); ``paths[k]`` its
    ``mask_{k:04d}.png`` in ``folder`` (a private staging folder; every slice is written, empty ones
    too). ``labels`` is the group label table for ``POST /api/mask-group`` (``{"1": {"name", "category",
    "type", "color"}}``) or ``None`` when the file names no labels. ``notes`` say how the voxels were
    reordered. ``known_slices`` says what each file holds (size, MD5, labels, width, height), taken from
    the bytes as they were written: pass it to ``prepare(known_slices=...)`` so the slices are not decoded
    again. Call :meth:`cleanup` (or use ``with``) once the upload no longer needs the files.
    """

    volume: np.ndarray
    folder: Path
    paths: list[Path]
    labels: dict[str, dict[str, Any]] | None
    source_format: str
    notes: list[str] = field(default_factory=list)
    known_slices: dict[Path, MaskInfo] = field(default_factory=dict)

    def cleanup(self) -> None:
        """Delete the staging folder (patient data: do not leave it behind)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> VolumeMasks:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cleanup()


def is_volume_file(path: Path | str) -> bool:
    """True for a path that names a NIfTI (``.nii``/``.nii.gz``) or DICOM (``.dcm``) mask volume file."""
    name = Path(path).name.lower()
    return Path(path).is_file() and (name.endswith(NIFTI_SUFFIXES) or name.endswith(".dcm"))


def masks_from_file(
    path: Path | str, geometry: SeriesGeometry, *, staging: Path | None = None
) -> VolumeMasks:
    """:func:`masks_from_nifti` for ``.nii``/``.nii.gz``, else :func:`masks_from_seg` (a DICOM file)."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return masks_from_nifti(path, geometry, staging=staging)
    return masks_from_seg(path, geometry, staging=staging)


def annotation_geometry(api: Any, annotation_id: int, series: Any = None) -> SeriesGeometry | None:
    """The series geometry a NIfTI/SEG is placed on: the annotation's stored one, else a local series'.

    ``api`` is an ApiClient (``GET /api/annotations/{id}/series``; its ApiError propagates except
    ``series_geometry_unknown``); ``series`` is a loaded ``Series`` read from files or a DICOM folder,
    used only for an older annotation without stored geometry, and then only if its SeriesInstanceUID is
    the annotation's (else :class:`VolumeMaskError` ``wrong_series``). ``None`` when neither is known.
    Every import path (CLI, watch worker, ``upload_inference_result``, the desktop drop) calls this.
    """
    from pacs_mask_desktop.core.api_client import ApiError
    from pacs_mask_desktop.core.dicom_series import Series, load_series
    from pacs_mask_desktop.core.plan import series_uid_mismatch
    from pacs_mask_desktop.core.series_geometry import geometry_from_series

    try:
        geometry: SeriesGeometry = api.annotation_series(annotation_id)
        return geometry
    except ApiError as exc:
        if exc.code != ErrorCode.SERIES_GEOMETRY_UNKNOWN:
            raise
    if series is None:
        return None
    loaded = series if isinstance(series, Series) else load_series(series)
    uid = api.get_annotation(annotation_id).series_instance_uid
    if wrong := series_uid_mismatch(loaded, uid, annotation_id):  # never another series' grid
        raise VolumeMaskError(*wrong)
    if loaded.ordered_by != "geometry":
        return None  # a headers-only or InstanceNumber-ordered series has no positions to place voxels by
    return geometry_from_series(loaded)


NO_GEOMETRY_MESSAGE = (
    "a NIfTI or DICOM SEG file is placed on the annotation's series by its geometry, and neither the server "
    "nor a local series gives one; create the annotation from its series (annotations --create FOLDER or "
    "--from-pacs) or pass the DICOM series folder with --series"
)


def position_tolerance_mm(geometry: SeriesGeometry) -> float:
    """The position tolerance for this series: 0.01 mm, or 1 % of its smallest voxel spacing if larger."""
    grid = _SeriesGrid.from_geometry(geometry)
    spacings = [s for s in grid.spacing if s > 0]
    return max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * min(spacings, default=0.0))


# --- the series grid ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SeriesGrid:
    """The series' voxel grid in LPS: per-slice origins, the in-plane axes and the slice axis."""

    shape: tuple[int, int, int]  # slices, rows, columns
    positions: np.ndarray  # (slices, 3): ImagePositionPatient of each slice index
    axes: np.ndarray  # (3, 3): unit vectors of the slice, row and column index axes
    spacing: tuple[float, float, float]  # mm per step along slice, row, column index
    series_instance_uid: str
    frame_of_reference_uid: str | None
    keys: dict[tuple[str, int | None], int]  # (SOP Instance UID, frame number) -> slice index

    @classmethod
    def from_geometry(cls, geometry: SeriesGeometry) -> _SeriesGrid:
        try:
            rows, columns = int(geometry.rows), int(geometry.columns)
            instances = sorted(geometry.instances, key=lambda item: int(item.slice_index))
            orientation = geometry.image_orientation_patient
            spacing = geometry.pixel_spacing
            raw_positions = [item.image_position_patient for item in instances]
            keys = {
                (
                    str(item.sop_instance_uid),
                    None if item.frame_number is None else int(item.frame_number),
                ): i
                for i, item in enumerate(instances)
            }
        except (AttributeError, TypeError, ValueError) as exc:
            raise VolumeMaskError("no_geometry", f"the series geometry is not readable: {exc!r}") from None
        if not instances:
            raise VolumeMaskError("no_geometry", "the series geometry lists no slices")
        missing = [
            name
            for name, value in (("ImageOrientationPatient", orientation), ("PixelSpacing", spacing))
            if not value
        ]
        if any(p is None for p in raw_positions):
            missing.append("ImagePositionPatient")
        if (
            missing or not orientation or not spacing
        ):  # (the last two are in ``missing``; said for the type checker)
            raise VolumeMaskError(
                "no_geometry",
                f"the series geometry has no {', '.join(missing)}, so a NIfTI or SEG cannot be placed on its "
                "slices; use PNG masks named by slice index instead",
            )
        positions = np.asarray(raw_positions, dtype=float)
        row_dir = np.asarray(orientation[:3], dtype=float)  # direction of increasing column index
        col_dir = np.asarray(orientation[3:], dtype=float)  # direction of increasing row index
        row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
        normal = np.cross(row_dir, col_dir)
        if len(positions) > 1:
            span = positions[-1] - positions[0]
            slice_step = float(np.linalg.norm(span)) / (len(positions) - 1)
            slice_dir = span / np.linalg.norm(span) if slice_step > 0 else normal
        else:
            slice_step, slice_dir = 0.0, normal
        return cls(
            shape=(len(instances), rows, columns),
            positions=positions,
            axes=np.stack([slice_dir, col_dir, row_dir]),
            spacing=(slice_step, float(spacing[0]), float(spacing[1])),
            series_instance_uid=str(geometry.series_instance_uid or ""),
            frame_of_reference_uid=geometry.frame_of_reference_uid or None,
            keys=keys,
        )

    def voxel_positions(self, index: np.ndarray) -> np.ndarray:
        """LPS positions of series voxels ``index`` (N, 3) as (slice, row, column)."""
        k = index[:, 0].astype(int)
        return (
            self.positions[k]
            + index[:, 1:2] * self.spacing[1] * self.axes[1]
            + index[:, 2:3] * self.spacing[2] * self.axes[2]
        )


def _tolerance(grid: _SeriesGrid) -> float:
    spacings = [s for s in grid.spacing if s > 0]
    return max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * min(spacings, default=0.0))


def _vec(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:+.{digits}f}" for v in values) + "]"


# --- NIfTI -----------------------------------------------------------------------------------------------


def masks_from_nifti(
    path: Path | str, geometry: SeriesGeometry, *, staging: Path | None = None
) -> VolumeMasks:
    """Read a NIfTI label volume (``.nii``/``.nii.gz``) and place it exactly on the series' slices.

    ``geometry`` is the stored series geometry (:class:`~server.contract.messages.SeriesGeometry`: rows, columns, pixel_spacing,
    image_orientation_patient, instances ordered by slice_index with image_position_patient). The
    voxels are transposed/flipped onto ``[slice][row][column]`` (never interpolated) when the NIfTI grid
    is the series grid up to axis order and direction; otherwise :class:`VolumeMaskError` names the
    difference (see the module docstring for the rules and tolerances). Label names come from a sidecar
    next to the file. The PNG slices are written into ``staging`` (default: a new private folder under
    the user's data dir); pass the result's ``folder`` to ``prepare()`` and its ``labels`` to the group.
    """
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    unreadable = (ImageFileError, OSError, ValueError, EOFError, AttributeError, ZLIB_NG_ERROR)
    with contextlib.ExitStack() as stack:
        try:
            image = _open_nifti(path, stack)
            affine = _nifti_affine(image, path.name)
        except FileNotFoundError:
            raise VolumeMaskError("unreadable", f"{path.name}: file not found") from None
        except unreadable as exc:
            raise VolumeMaskError("unreadable", f"{path.name}: not a readable NIfTI file ({exc})") from None
        streamed = _stage_nifti_slabs(image, affine, geometry, path, staging)
        if streamed is not None:
            return streamed
        try:
            # a new stream: zlib-ng's GzipFile cannot seek back once the fast path has read on (measured)
            data = np.asanyarray(_open_nifti(path, stack).dataobj)
        except FileNotFoundError:
            raise VolumeMaskError("unreadable", f"{path.name}: file not found") from None
        except unreadable as exc:
            raise VolumeMaskError("unreadable", f"{path.name}: not a readable NIfTI file ({exc})") from None
    labels = read_label_sidecar(path)
    return masks_from_array(
        data, affine, geometry, affine_space="RAS", labels=labels, staging=staging, name=path.name
    )


def _open_nifti(path: Path, stack: contextlib.ExitStack) -> Any:
    """The NIfTI image at ``path``; a gzipped one reads its voxels through one zlib-ng gzip stream.

    nibabel opens ``.gz`` with the standard library's ``gzip``, which inflates the benchmark's 131 MB
    volume (500 x 512 x 512, ``benchmarks/nifti_import.py``) in 0.19-0.37 s, about half of it the CRC-32
    computed in Python-side chunks; zlib-ng's ``gzip_ng`` reads the same file, CRC checked, in 0.03 s
    (measured on the 2-CPU dev machine). One stream for the whole read: slabs read one after another
    continue it (each seek is forward) instead of reopening the file. ``nib.load`` reads only the header
    here, to choose the image class (NIfTI-1 or -2); the stream is closed when ``stack`` closes.
    """
    import nibabel as nib
    from nibabel.filebasedimages import SerializableImage

    image = nib.load(path, keep_file_open=True)
    if not path.name.lower().endswith(".gz") or not isinstance(image, SerializableImage):
        return image
    stream = stack.enter_context(gzip_ng.open(path, "rb"))
    return type(image).from_stream(stream)


NIFTI_SLAB_SLICES = 16
"""Slices read from a NIfTI at a time while earlier ones are encoded (:func:`_stage_nifti_slabs`)."""


def _stage_nifti_slabs(
    image: Any, affine: np.ndarray, geometry: SeriesGeometry, path: Path, staging: Path | None
) -> VolumeMasks | None:
    """The fast path of :func:`masks_from_nifti`: decompress slabs of slices while a pool encodes the last.

    Taken only when the file's last axis (the slowest in its storage order, as ITK, nnU-Net and dcm2niix
    write) runs along the series' slices and every geometry check passes; each slab is checked by the
    same :func:`_as_labels`. Any failure (a check, a read error, a label value, the sidecar) removes what
    was written and returns ``None``, and :func:`masks_from_nifti` then takes the whole-volume path,
    which raises exactly the error it always did. The voxels and files are the same either way.
    """
    name = path.name
    proxy = image.dataobj
    shape = tuple(int(n) for n in getattr(proxy, "shape", ()))
    if len(shape) != 3:
        return None
    try:
        grid = _SeriesGrid.from_geometry(geometry)
        affine = np.asarray(affine, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            return None
        lps = _LPS_FROM_RAS @ affine
        order, flips, notes = _match_axes(lps, shape, grid, name)
        _check_positions(lps, order, flips, grid, name)
    except VolumeMaskError:
        return None
    if order[0] != 2:
        return None  # slices across the file's storage order: read it whole
    n_slices = grid.shape[0]
    volume = np.empty(grid.shape, dtype=np.uint8)
    folder = _staging_folder(staging, "nifti")
    write = _slice_writer(volume, folder)
    pool = ThreadPoolExecutor(max_workers=STAGING_WORKERS, thread_name_prefix="stage-slices")
    futures: list[tuple[int, Future[list[tuple[Path, MaskInfo]]]]] = []
    direct = _direct_reader(proxy, order)
    try:
        for start in range(0, n_slices, NIFTI_SLAB_SLICES):
            stop = min(n_slices, start + NIFTI_SLAB_SLICES)
            first = n_slices - stop if flips[0] else start  # flipped: file slice j is series slice n - 1 - j
            if direct is not None:
                slab = volume[first : first + stop - start]
                direct(slab, start)
                for axis in (a for a in range(3) if flips[a]):  # in place; numpy buffers the overlap
                    slab[...] = np.flip(slab, axis=axis)
            else:
                slab = np.transpose(np.asanyarray(proxy[:, :, start:stop]), (2, order[1], order[2]))
                if flips[1]:
                    slab = slab[:, ::-1]
                if flips[2]:
                    slab = slab[:, :, ::-1]
                volume[first : first + stop - start] = _as_labels(slab[::-1] if flips[0] else slab, name)
            futures.append((first, pool.submit(_write_range, write, range(first, first + stop - start))))
        labels = normalize_label_table(read_label_sidecar(path))
        known = dict(item for _, future in sorted(futures, key=lambda f: f[0]) for item in future.result())
    except Exception:  # the whole-volume path raises the precise error
        pool.shutdown(wait=True, cancel_futures=True)
        _remove_staged(folder, staging, n_slices)
        return None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        _remove_staged(folder, staging, n_slices)
        raise
    pool.shutdown(wait=True)
    return VolumeMasks(volume, folder, list(known), labels, "nifti", notes, known)


def _direct_reader(proxy: Any, order: tuple[int, int, int]) -> Callable[[np.ndarray, int], None] | None:
    """``read(slab, start)``: file slices ``start...`` inflated straight into ``slab`` of the volume.

    For a gzipped uint8 NIfTI without scaling whose axes are (column, row, slice) up to flips (ITK,
    nnU-Net and dcm2niix write these), a run of file slices is, byte for byte, a C-order block of
    ``[slice][row][column]``: ``readinto`` inflates it into the volume, skipping nibabel's own buffer
    and the copy out of it (the benchmark's 131 MB: 0.17 s -> 0.08 s of CPU, measured). uint8 needs no
    label check. ``None`` for anything else, which nibabel reads as before. A short read or a failed CRC
    raises, and the whole-volume path then reports the file as unreadable.
    """
    stream = getattr(proxy, "file_like", None)
    if (
        stream is None
        or order[1:] != (1, 0)
        or not hasattr(stream, "readinto")
        or getattr(proxy, "dtype", None) != np.uint8
        or getattr(proxy, "order", "F") != "F"
        or (float(proxy.slope), float(proxy.inter)) != (1.0, 0.0)
    ):
        return None
    offset, file_slices = int(proxy.offset), int(proxy.shape[2])

    def read(slab: np.ndarray, start: int) -> None:
        stream.seek(offset + start * slab[0].nbytes)
        if stream.readinto(slab.data.cast("B")) != slab.nbytes:
            raise EOFError("the file ends inside its voxel data")
        if start + len(slab) == file_slices:
            stream.read()  # on to the end: the gzip reader checks the CRC-32 and length there

    return read


def _remove_staged(folder: Path, staging: Path | None, n_slices: int) -> None:
    """Undo a failed staging: the whole new folder, or the slices written into a given one."""
    if staging is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for k in range(n_slices):
        with contextlib.suppress(OSError):
            (folder / f"mask_{k:04d}.png").unlink()


def _nifti_affine(image: Any, name: str) -> np.ndarray:
    """The voxel-to-RAS affine a NIfTI states, refusing one that states none or two different ones.

    nibabel falls back to an invented affine (voxel sizes around the centre) when neither the sform nor the
    qform is set: placing that on a patient would be a guess. When both are set they must agree (ITK reads
    one, nibabel the other): each of the volume's 8 corner voxels (so every voxel, the maps being affine)
    within :data:`POSITION_TOLERANCE_MM` as placed by either. Two corners alone would let an in-plane axis
    swap on a square grid cancel out.
    """
    header = image.header
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if not sform_code and not qform_code:
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: states no position in the patient (sform and qform codes are 0), so it cannot be "
            "placed on the series; write it with its affine",
        )
    if sform_code and qform_code:
        last = np.zeros(3)
        last[: min(3, len(image.shape))] = np.asarray(image.shape[:3], dtype=float) - 1
        corners = np.array([[*(last * np.array(bits)), 1.0] for bits in np.ndindex(2, 2, 2)])
        apart = float(np.max(np.linalg.norm((corners @ (sform - qform).T)[:, :3], axis=1)))
        if apart > POSITION_TOLERANCE_MM:
            raise VolumeMaskError(
                "geometry_mismatch",
                f"{name}: its sform and qform disagree by up to {apart:.3f} mm; readers differ in which they "
                "use, so it is refused rather than guessed",
            )
    return np.asarray(sform if sform_code else qform, dtype=float)


def masks_from_array(
    volume: np.ndarray,
    affine: np.ndarray,
    geometry: SeriesGeometry,
    *,
    affine_space: Literal["RAS", "LPS"],
    labels: Mapping[str, Any] | None = None,
    staging: Path | None = None,
    name: str = "the label volume",
) -> VolumeMasks:
    """Place a 3-D label array with its voxel-to-world ``affine`` on the series.

    ``affine_space`` is required and says which world the affine maps to: ``"RAS"`` (nibabel, NIfTI) or
    ``"LPS"`` (SimpleITK/ITK, DICOM). It cannot be told from the matrix: on a series grid centred in x and
    y (common for CT around the isocentre) an LPS affine read as RAS passes every check and the mask
    would be rotated 180 degrees in-plane, so there is no default (``ValueError`` for anything else).
    The same rules as :func:`masks_from_nifti` (it calls this with ``"RAS"``): for model output held in
    memory, e.g. ``upload_inference_result(array, affine=..., affine_space=...)``. ``labels`` is a label
    table or ``{"1": "liver"}``.
    """
    if affine_space not in ("RAS", "LPS"):
        raise ValueError(
            f"{name}: affine_space must be 'RAS' (nibabel, NIfTI) or 'LPS' (SimpleITK/ITK, DICOM), not "
            f"{affine_space!r}; it cannot be told from the affine itself"
        )
    grid = _SeriesGrid.from_geometry(geometry)
    data = np.asanyarray(volume)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeMaskError(
            "geometry_mismatch", f"{name} has {data.ndim} dimensions {data.shape}; a label volume has 3"
        )
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeMaskError("geometry_mismatch", f"{name}: the affine is not a finite 4x4 matrix")
    lps = _LPS_FROM_RAS @ affine if affine_space == "RAS" else affine
    order, flips, notes = _match_axes(lps, data.shape, grid, name)
    _check_positions(lps, order, flips, grid, name)
    placed = np.transpose(data, order)
    for axis, flip in enumerate(flips):
        if flip:
            placed = np.flip(placed, axis=axis)
    labels_u8 = _as_labels(placed, name)
    return _stage(labels_u8, normalize_label_table(labels), "nifti", notes, staging)


def _match_axes(
    lps: np.ndarray, shape: tuple[int, ...], grid: _SeriesGrid, name: str
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], list[str]]:
    """For each series axis, the NIfTI axis along it and whether it runs the other way; else refuse."""
    columns = lps[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if np.any(norms <= 0):
        raise VolumeMaskError("geometry_mismatch", f"{name}: the affine has a zero-length axis")
    directions = columns / norms  # column a: unit direction of NIfTI axis a (LPS)
    dots = grid.axes @ directions  # [series axis b, nifti axis a]
    order = [int(np.argmax(np.abs(dots[b]))) for b in range(3)]
    if sorted(order) != [0, 1, 2]:
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: its axes are oblique to the series (direction cosines of its axes, LPS: "
            f"{', '.join(_vec(directions[:, a]) for a in range(3))}; series slice/row/column axes: "
            f"{', '.join(_vec(grid.axes[b]) for b in range(3))}); it would have to be resampled, which is never done",
        )
    flips = (bool(dots[0, order[0]] < 0), bool(dots[1, order[1]] < 0), bool(dots[2, order[2]] < 0))
    for b in range(3):
        a = order[b]
        expected = grid.axes[b] * (-1.0 if flips[b] else 1.0)
        difference = float(np.max(np.abs(directions[:, a] - expected)))
        if difference > DIRECTION_TOLERANCE:
            angle = float(np.degrees(np.arccos(min(1.0, abs(float(dots[b, a]))))))
            raise VolumeMaskError(
                "geometry_mismatch",
                f"{name}: direction differs: its axis {a} (LPS {_vec(directions[:, a], 5)}) is {angle:.3f} degrees "
                f"from the series' {_AXIS_NAMES[b]} axis ({_vec(expected, 5)}); largest direction-cosine "
                f"difference {difference:.5f}, tolerance {DIRECTION_TOLERANCE:g}",
            )
    placed_shape = tuple(int(shape[order[b]]) for b in range(3))
    if placed_shape != grid.shape:
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: shape differs: its {shape[0]}x{shape[1]}x{shape[2]} voxels are {placed_shape[0]} slices of "
            f"{placed_shape[1]}x{placed_shape[2]} on the series' axes; the series has {grid.shape[0]} slices of "
            f"{grid.shape[1]}x{grid.shape[2]} (Rows x Columns)",
        )
    notes = []
    if tuple(order) != (0, 1, 2) or any(flips):
        moves = [f"axis {order[b]} -> {_AXIS_NAMES[b]}s{' (reversed)' if flips[b] else ''}" for b in range(3)]
        notes.append(
            f"{name}: voxels reordered exactly onto the series grid ({'; '.join(moves)}), not resampled"
        )
    return (order[0], order[1], order[2]), flips, notes


def _check_positions(
    lps: np.ndarray,
    order: tuple[int, int, int],
    flips: tuple[bool, bool, bool],
    grid: _SeriesGrid,
    name: str,
) -> None:
    """Refuse unless every corner voxel of every slice lands within the tolerance of its series voxel."""
    n_slices, rows, columns = grid.shape
    k = np.repeat(np.arange(n_slices), 4)
    r = np.tile([0, rows - 1, 0, rows - 1], n_slices)
    c = np.tile([0, 0, columns - 1, columns - 1], n_slices)
    series_index = np.stack([k, r, c], axis=1).astype(float)
    expected = grid.voxel_positions(series_index)
    nifti_index = np.zeros((len(k), 3))
    for b in range(3):
        size = grid.shape[b]
        values = series_index[:, b]
        nifti_index[:, order[b]] = (size - 1 - values) if flips[b] else values
    actual = nifti_index @ lps[:3, :3].T + lps[:3, 3]
    distance = np.linalg.norm(actual - expected, axis=1)
    tolerance = _tolerance(grid)
    worst = int(np.argmax(distance))
    if distance[worst] <= tolerance:
        return
    reasons = []
    norms = np.linalg.norm(lps[:3, :3], axis=0)
    for b in range(3):
        if grid.shape[b] < 2:
            continue
        theirs, ours = float(norms[order[b]]), grid.spacing[b]
        if abs(theirs - ours) * (grid.shape[b] - 1) > tolerance:
            reasons.append(
                f"spacing {_AXIS_STEPS[b]} differs: {theirs:.4f} mm in the file, {ours:.4f} mm in the series "
                f"(difference {theirs - ours:+.4f} mm)"
            )
    shift = actual[0] - expected[0]
    if float(np.linalg.norm(shift)) > tolerance:
        reasons.append(
            f"origin differs: slice 0's first voxel is {float(np.linalg.norm(shift)):.3f} mm away "
            f"(LPS shift {_vec(shift)} mm)"
        )
    if not reasons:
        reasons.append("the series' slices are not where the file's evenly spaced slices are")
    raise VolumeMaskError(
        "geometry_mismatch",
        f"{name} is not on the series grid: {'; '.join(reasons)}. Largest distance {float(distance[worst]):.3f} mm "
        f"at slice {int(k[worst])} (tolerance {tolerance:g} mm); it is never resampled",
    )


def _as_labels(volume: np.ndarray, name: str) -> np.ndarray:
    """The volume as uint8 labels; refuse a value that is not an integer 0..255, naming it."""
    if volume.dtype == np.uint8:
        return np.ascontiguousarray(volume)
    if volume.dtype.kind == "b":
        return np.ascontiguousarray(volume, dtype=np.uint8)
    if volume.dtype.kind not in "iuf":
        raise VolumeMaskError("bad_labels", f"{name}: voxels of type {volume.dtype} are not labels")
    if volume.dtype.kind == "f":
        bad = ~np.isfinite(volume) | (volume != np.round(volume))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise VolumeMaskError(
                "bad_labels",
                f"{name}: value {float(volume[where]):g} at slice {where[0]}, row {where[1]}, column {where[2]} is not a "
                "whole number; a label volume holds integer labels 0..255 (probabilities must be thresholded first)",
            )
    low, high = volume.min(), volume.max()
    if low < 0 or high > MAX_LABEL:
        value = low if low < 0 else high
        where = tuple(int(i) for i in np.argwhere(volume == value)[0])
        raise VolumeMaskError(
            "bad_labels",
            f"{name}: label {value:g} at slice {where[0]}, row {where[1]}, column {where[2]} is outside 0..{MAX_LABEL}",
        )
    return np.ascontiguousarray(volume, dtype=np.uint8)


# --- label sidecars ----------------------------------------------------------------------------------------

_TEXT_LABEL = re.compile(
    r"^\s*(\d+)\s+(?:(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+\d+\s+\d+\s+\"(.*)\"|(\S+)\s+(\d+)\s+(\d+)\s+(\d+)(?:\s+\d+)?)\s*$"
)


def sidecar_candidates(path: Path | str) -> list[Path]:
    """Where a label-name sidecar for ``path`` may be: ``<stem>.json``, ``<name>.json``, ``.txt``, ``.ctbl``."""
    path = Path(path)
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem
    return [path.with_name(stem + ext) for ext in (".json", ".txt", ".ctbl", ".label")] + [
        path.with_name(name + ".json")
    ]


def read_label_sidecar(path: Path | str) -> dict[str, dict[str, Any]] | None:
    """The label table from the first sidecar next to ``path`` that exists, or ``None``.

    Formats: JSON ``{"1": "liver"}`` / ``{"1": {"name": ..., "color": [r, g, b]}}`` / ``{"labels":
    {"liver": 1}}`` (nnU-Net); ITK-SNAP label description lines ``1 255 0 0 1 1 1 "liver"``; 3D Slicer
    colour table lines ``1 liver 255 0 0 255``. Label 0 (background) is dropped. A sidecar that exists
    but cannot be read raises :class:`VolumeMaskError` (a silently unnamed label would be worse).
    """
    for candidate in sidecar_candidates(path):
        if not candidate.is_file():
            continue
        text = candidate.read_text(encoding="utf-8", errors="replace")
        if candidate.suffix.lower() == ".json":
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise VolumeMaskError("bad_labels", f"{candidate.name}: not valid JSON ({exc})") from None
            if isinstance(raw, dict) and isinstance(raw.get("labels"), dict):
                raw = {str(v): k for k, v in raw["labels"].items() if isinstance(v, int)}
            return normalize_label_table(raw, candidate.name)
        table: dict[str, Any] = {}
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = _TEXT_LABEL.match(line)
            if match is None:
                raise VolumeMaskError(
                    "bad_labels", f"{candidate.name}: cannot read the label line {line.strip()!r}"
                )
            number = match.group(1)
            if match.group(5) is not None:  # ITK-SNAP
                rgb, label_name = match.group(2, 3, 4), match.group(5)
            else:  # 3D Slicer colour table
                rgb, label_name = match.group(7, 8, 9), match.group(6)
            table[number] = {"name": label_name, "color": [int(v) for v in rgb]}
        return normalize_label_table(table, candidate.name)
    return None


def normalize_label_table(raw: Any, where: str = "labels") -> dict[str, dict[str, Any]] | None:
    """``{"1": "liver"}`` or partial entries as the full group label table (name, category, type, color)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise VolumeMaskError("bad_labels", f"{where}: the label table must map label numbers to names")
    table: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise VolumeMaskError("bad_labels", f"{where}: {key!r} is not a label number") from None
        if number == 0:
            continue  # background
        if not 1 <= number <= MAX_LABEL:
            raise VolumeMaskError("bad_labels", f"{where}: label {number} is outside 1..{MAX_LABEL}")
        entry = (
            {"name": value} if isinstance(value, str) else dict(value) if isinstance(value, Mapping) else None
        )
        if entry is None or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise VolumeMaskError("bad_labels", f"{where}: label {number} has no name")
        name = entry["name"].strip()
        if len(name) > _MAX_NAME or _CONTROL.search(name):
            raise VolumeMaskError(
                "bad_labels", f"{where}: label {number}'s name must be 1..{_MAX_NAME} printable characters"
            )
        color = entry.get("color")
        if color is not None and (
            not isinstance(color, Sequence)
            or len(color) != 3
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        ):
            raise VolumeMaskError(
                "bad_labels", f"{where}: label {number}'s color must be [r, g, b], each 0..255"
            )
        codes = {}
        for part in ("category", "type"):
            concept = entry.get(part)
            if concept is not None and (
                not isinstance(concept, Mapping)
                or not all(
                    isinstance(concept.get(k), str) and concept[k] for k in ("code", "scheme", "meaning")
                )
            ):
                raise VolumeMaskError(
                    "bad_labels", f"{where}: label {number}'s {part} must be {{code, scheme, meaning}}"
                )
            codes[part] = None if concept is None else {k: concept[k] for k in ("code", "scheme", "meaning")}
        table[str(number)] = {"name": name, **codes, "color": None if color is None else list(color)}
    return table or None


# --- DICOM SEG ---------------------------------------------------------------------------------------------


def masks_from_seg(path: Path | str, geometry: SeriesGeometry, *, staging: Path | None = None) -> VolumeMasks:
    """Read a DICOM Segmentation (highdicom) and place its frames on the series' slices.

    Refused (:class:`VolumeMaskError`): a SEG of another series (ReferencedSeriesSequence or
    FrameOfReferenceUID), another image size, a frame referencing an instance outside the series or
    lying off every slice, two segments on one pixel (naming the slice), more than 255 segments, a
    FRACTIONAL SEG. Segment ``i`` (in SegmentSequence order) becomes label ``i``; the label table takes
    the segments' labels, coded category/type and recommended colours.
    """
    import highdicom as hd
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    grid = _SeriesGrid.from_geometry(geometry)
    try:
        seg = hd.seg.segread(path)
    except FileNotFoundError:
        raise VolumeMaskError("unreadable", f"{path.name}: file not found") from None
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, OSError) as exc:
        raise VolumeMaskError(
            "unreadable", f"{path.name}: not a readable DICOM Segmentation ({exc})"
        ) from None
    _check_seg_series(seg, grid, path.name)
    seg_type = str(getattr(seg.segmentation_type, "value", seg.segmentation_type))
    if seg_type == "FRACTIONAL":
        raise VolumeMaskError(
            "bad_labels",
            f"{path.name}: a FRACTIONAL SEG holds probabilities, not labels; threshold it into a BINARY SEG first",
        )
    tolerance = _tolerance(grid)
    placement = _frame_placement(seg, grid, tolerance, path.name)
    # A LABELMAP SEG may describe segment 0: the background, which is no label.
    described = [item for item in seg.SegmentSequence if int(item.SegmentNumber) != 0]
    numbers = [int(item.SegmentNumber) for item in described]
    if len(numbers) > MAX_LABEL:
        raise VolumeMaskError(
            "bad_labels", f"{path.name}: {len(numbers)} segments; at most {MAX_LABEL} labels"
        )
    label_of = {number: i + 1 for i, number in enumerate(numbers)}
    names = {
        i + 1: str(item.get("SegmentLabel", "") or f"Segment {number}")
        for i, (number, item) in enumerate(zip(numbers, described, strict=True))
    }
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    volume = np.zeros(grid.shape, dtype=np.uint8)
    for f, frame_item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = _frame_slice(frame_item, grid, placement, tolerance, f + 1, path.name)
        frame = placement.apply(pixels[f])
        if seg_type == "LABELMAP":
            _place_labelmap(volume, k, frame, label_of, path.name)
            continue
        identification = frame_item.get("SegmentIdentificationSequence") or _shared(
            seg, "SegmentIdentificationSequence"
        )
        if not identification:
            raise VolumeMaskError("unreadable", f"{path.name}: frame {f + 1} names no segment")
        number = int(identification[0].ReferencedSegmentNumber)
        if number not in label_of:
            raise VolumeMaskError(
                "unreadable", f"{path.name}: frame {f + 1} refers to segment {number}, which is not described"
            )
        label = label_of[number]
        inside = frame > 0
        clash = inside & (volume[k] != 0) & (volume[k] != label)
        if clash.any():
            other = int(volume[k][clash][0])
            raise VolumeMaskError(
                "segments_overlap",
                f"{path.name}: segments {names[other]!r} and {names[label]!r} overlap on slice {k} "
                f"({int(clash.sum())} pixels); a mask slice holds one label per pixel",
            )
        volume[k][inside] = label
    table = {str(label): _segment_entry(seg, number, names[label]) for number, label in label_of.items()}
    return _stage(volume, table, "seg", [], staging)


def _shared(seg: Any, keyword: str) -> Any:
    """A functional group from the SEG's shared groups (highdicom puts per-SEG constants there), or None."""
    shared = seg.get("SharedFunctionalGroupsSequence")
    return shared[0].get(keyword) if shared else None


def _check_seg_series(seg: Any, grid: _SeriesGrid, name: str) -> None:
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        referenced |= {str(item.SeriesInstanceUID) for item in study.get("ReferencedSeriesSequence", [])}
    if referenced and grid.series_instance_uid not in referenced:
        raise VolumeMaskError(
            "wrong_series",
            f"{name}: the SEG segments series {', '.join(sorted(referenced))}, not this annotation's series "
            f"{grid.series_instance_uid}",
        )
    frame_of_reference = str(seg.get("FrameOfReferenceUID", "") or "")
    if (
        frame_of_reference
        and grid.frame_of_reference_uid
        and frame_of_reference != grid.frame_of_reference_uid
    ):
        raise VolumeMaskError(
            "wrong_series",
            f"{name}: the SEG is in frame of reference {frame_of_reference}, the series in {grid.frame_of_reference_uid}",
        )


@dataclass(frozen=True, slots=True)
class _FramePlacement:
    """How a SEG frame's pixel grid lies on the series' slice grid (exact transposes and flips only)."""

    order: tuple[int, int]  # frame axis along the series' rows, frame axis along its columns
    flips: tuple[bool, bool]  # reversed along the series' rows / columns
    corner: tuple[int, int]  # series (row, column) of the frame's first pixel

    def apply(self, frame: np.ndarray) -> np.ndarray:
        placed = np.transpose(frame, self.order)
        if self.flips[0]:
            placed = placed[::-1]
        if self.flips[1]:
            placed = placed[:, ::-1]
        return placed


_SAME_IN_EVERY_FRAME = 1e-6
"""Largest difference between the orientation or pixel spacing values two frames of one SEG may state."""


def _frame_functional_value(seg: Any, sequence: str, keyword: str, name: str) -> list[float] | None:
    """``keyword`` of the functional group ``sequence`` (e.g. PlaneOrientationSequence) for every frame.

    The standard allows it in the shared group or in each frame's group. Every frame that states it must
    state the shared value (or the first frame's, within :data:`_SAME_IN_EVERY_FRAME`), and without a shared
    value every frame must state it: otherwise the frames do not lie the same way and it is refused naming
    the frame. ``None`` when no group states it.
    """

    def read(group: Any) -> list[float] | None:
        items = group.get(sequence) if group is not None else None
        value = items[0].get(keyword) if items else None
        return None if value is None else [float(v) for v in value]

    shared = seg.get("SharedFunctionalGroupsSequence")
    reference = read(shared[0]) if shared else None
    source = "the shared functional group" if reference is not None else ""
    missing = 0
    for f, item in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or [], start=1):
        value = read(item)
        if value is None:
            missing = missing or f
        elif reference is None:
            reference, source = value, f"frame {f}"
        elif len(value) != len(reference) or not np.allclose(
            value, reference, rtol=0.0, atol=_SAME_IN_EVERY_FRAME
        ):
            raise VolumeMaskError(
                "geometry_mismatch",
                f"{name}: frame {f} has {keyword} {_vec(value, 5)}, {source} {_vec(reference, 5)}; every frame "
                "must lie on the series the same way",
            )
    if missing and reference is not None and source != "the shared functional group":
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: frame {missing} states no {keyword} while {source} does; every frame must state it",
        )
    return reference


def _frame_placement(seg: Any, grid: _SeriesGrid, tolerance: float, name: str) -> _FramePlacement:
    """Match the SEG's plane orientation and pixel spacing with the series'; refuse what is not exact.

    A SEG frame may lie on the slice mirrored or transposed (dcmqi keeps the orientation of the image it
    was given): that is placed exactly. Another angle or another pixel spacing is refused. Orientation and
    spacing come from the shared functional group, else from the per-frame groups (the same in every frame).
    A frame with a position but no orientation anywhere is refused: its pixels' directions are unknown.
    """
    _, rows, columns = grid.shape
    orientation = _frame_functional_value(seg, "PlaneOrientationSequence", "ImageOrientationPatient", name)
    if orientation is None:
        for f, item in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or [], start=1):
            if item.get("PlanePositionSequence"):
                raise VolumeMaskError(
                    "unreadable",
                    f"{name}: frame {f} has a position (PlanePositionSequence) but no ImageOrientationPatient in "
                    "the shared or its own functional groups, so which way its pixels run is unknown",
                )
        if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
            raise VolumeMaskError(
                "geometry_mismatch",
                f"{name}: its frames are {seg.Rows}x{seg.Columns}, the series' images {rows}x{columns}",
            )
        return _FramePlacement((0, 1), (False, False), (0, 0))
    frame_dirs = np.asarray(orientation, dtype=float).reshape(2, 3)[
        ::-1
    ]  # along frame rows, along frame columns
    dots = grid.axes[1:] @ frame_dirs.T  # [series row/column axis, frame axis]
    order = (int(np.argmax(np.abs(dots[0]))), int(np.argmax(np.abs(dots[1]))))
    flips = (bool(dots[0, order[0]] < 0), bool(dots[1, order[1]] < 0))
    expected = np.stack([grid.axes[1 + b] * (-1.0 if flips[b] else 1.0) for b in range(2)])
    difference = float(np.max(np.abs(frame_dirs[list(order)] - expected))) if order[0] != order[1] else 2.0
    if difference > DIRECTION_TOLERANCE:
        ours = np.concatenate([grid.axes[2], grid.axes[1]])
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: ImageOrientationPatient {_vec(orientation, 5)} is not the series' {_vec(ours, 5)} up to "
            f"mirroring (largest difference {difference:.5f}, tolerance {DIRECTION_TOLERANCE:g})",
        )
    frame_shape = (int(seg.Rows), int(seg.Columns))
    if (frame_shape[order[0]], frame_shape[order[1]]) != (rows, columns):
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: its frames are {seg.Rows}x{seg.Columns}, the series' images {rows}x{columns}",
        )
    spacing = _frame_functional_value(seg, "PixelMeasuresSequence", "PixelSpacing", name)
    if spacing is not None:
        for b, label in enumerate(("rows", "columns")):
            theirs, ours_mm = spacing[order[b]], grid.spacing[1 + b]
            if abs(theirs - ours_mm) * (grid.shape[1 + b] - 1) > tolerance:
                raise VolumeMaskError(
                    "geometry_mismatch",
                    f"{name}: spacing between {label} differs: {theirs:.4f} mm in the SEG, {ours_mm:.4f} mm in the "
                    f"series (difference {theirs - ours_mm:+.4f} mm); it is never resampled",
                )
    corner = (rows - 1 if flips[0] else 0, columns - 1 if flips[1] else 0)
    return _FramePlacement(order, flips, corner)


def _frame_slice(
    item: Any, grid: _SeriesGrid, placement: _FramePlacement, tolerance: float, frame: int, name: str
) -> int:
    """The slice index of one SEG frame: by referenced SOP Instance UID, else by plane position.

    When the frame has a position too, it must lie on the referenced slice (within the tolerance).
    """
    position = None
    planes = item.get("PlanePositionSequence")
    if planes:
        corner = np.asarray(planes[0].ImagePositionPatient, dtype=float)
        row, column = placement.corner
        position = corner - row * grid.spacing[1] * grid.axes[1] - column * grid.spacing[2] * grid.axes[2]
    sources = [s for d in item.get("DerivationImageSequence", []) for s in d.get("SourceImageSequence", [])]
    if sources:
        source = sources[0]
        sop = str(source.ReferencedSOPInstanceUID)
        number = source.get("ReferencedFrameNumber")
        key = (sop, int(number) if number not in (None, "") else None)
        k = grid.keys.get(key)
        if k is None and key[1] is None:
            matches = [i for (uid, _), i in grid.keys.items() if uid == sop]
            k = matches[0] if len(matches) == 1 else None
        if k is None:
            raise VolumeMaskError(
                "wrong_series",
                f"{name}: frame {frame} references instance {sop}{'' if key[1] is None else f' frame {key[1]}'}, "
                "which is not a slice of this series",
            )
        if position is not None and (off := float(np.linalg.norm(position - grid.positions[k]))) > tolerance:
            raise VolumeMaskError(
                "geometry_mismatch",
                f"{name}: frame {frame} references slice {k} but lies {off:.3f} mm from it (tolerance {tolerance:g} mm)",
            )
        return k
    if position is None:
        raise VolumeMaskError("unreadable", f"{name}: frame {frame} references no image and has no position")
    distances = np.linalg.norm(grid.positions - position, axis=1)
    k = int(np.argmin(distances))
    if distances[k] > tolerance:
        raise VolumeMaskError(
            "geometry_mismatch",
            f"{name}: frame {frame} at {_vec(position)} (LPS) lies on no slice of the series: nearest is slice {k}, "
            f"{float(distances[k]):.3f} mm away (tolerance {tolerance:g} mm)",
        )
    return k


def _place_labelmap(
    volume: np.ndarray, k: int, frame: np.ndarray, label_of: dict[int, int], name: str
) -> None:
    values = np.unique(frame)
    lookup = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    for value in values:
        if int(value) == 0:
            continue
        if int(value) not in label_of:
            raise VolumeMaskError(
                "unreadable", f"{name}: slice {k} holds segment {int(value)}, which is not described"
            )
        lookup[int(value)] = label_of[int(value)]
    labels = lookup[frame]
    clash = (labels != 0) & (volume[k] != 0) & (volume[k] != labels)
    if clash.any():
        raise VolumeMaskError(
            "segments_overlap", f"{name}: two frames give different segments to one pixel on slice {k}"
        )
    np.copyto(volume[k], labels, where=labels != 0)


def _segment_entry(seg: Any, number: int, label_name: str) -> dict[str, Any]:
    """One group label-table entry from a SEG segment description."""
    description = seg.get_segment_description(number)

    def code(concept: Any) -> dict[str, str] | None:
        if concept is None:
            return None
        return {
            "code": str(concept.value),
            "scheme": str(concept.scheme_designator),
            "meaning": str(concept.meaning),
        }

    color = None
    lab = description.get("RecommendedDisplayCIELabValue")
    if lab is not None:
        from highdicom.color import CIELabColor

        color = list(CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb(clip=True))
    return {
        "name": label_name,
        "category": code(description.segmented_property_category),
        "type": code(description.segmented_property_type),
        "color": color,
    }


# --- staging ------------------------------------------------------------------------------------------------


STALE_STAGING_SECONDS = 24 * 3600
"""Staging folders older than this are left over from a killed process: removed by :func:`staging_root`."""


def staging_root() -> Path:
    """The private folder (0700) under the user's data dir where imported volumes become PNG slices.

    Each import writes into its own sub-folder, deleted by :meth:`VolumeMasks.cleanup`; folders left by a
    killed process (patient data) are removed here once older than :data:`STALE_STAGING_SECONDS`.
    """
    root = private_dir(data_dir() / "staging")
    cutoff = time.time() - STALE_STAGING_SECONDS
    for child in root.iterdir():
        with contextlib.suppress(OSError):
            if child.is_dir() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
    return root


def _stage(
    volume: np.ndarray,
    labels: dict[str, dict[str, Any]] | None,
    source_format: str,
    notes: list[str],
    staging: Path | None,
) -> VolumeMasks:
    """Write ``volume`` as ``mask_{k:04d}.png`` slices (0600) in a private folder (0700)."""
    folder = _staging_folder(staging, source_format)
    try:
        known = _write_slices(volume, folder)
    except BaseException:
        if staging is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return VolumeMasks(volume, folder, list(known), labels, source_format, notes, known)


def _staging_folder(staging: Path | None, source_format: str) -> Path:
    """``staging`` made private (0700), or a new private folder under :func:`staging_root`."""
    if staging is None:
        return Path(tempfile.mkdtemp(prefix=f"{source_format}-", dir=staging_root()))  # mkdtemp: 0700
    return private_dir(Path(staging))


STAGING_WORKERS = 2
"""Threads encoding and writing slices (zlib-ng and file writes release the GIL); the dev machine has 2 CPUs.
With the stdlib's zlib, 500 slices of 512x512 encoded in 0.29 s in one thread and 0.25 s in two; with
zlib-ng's ``Z_RLE`` (:func:`encode_label_png`) they take ~0.06 s of CPU, and two threads still gave the
lower NIfTI import time (``benchmarks/nifti_import.py``, best of 9 on a loaded machine: 0.70 s, one
thread 0.86 s)."""


def _write_slices(volume: np.ndarray, folder: Path) -> dict[Path, MaskInfo]:
    """Encode and write every slice of the uint8 ``volume``; what each written file holds, in slice order."""
    write = _slice_writer(volume, folder)
    with ThreadPoolExecutor(max_workers=STAGING_WORKERS, thread_name_prefix="stage-slices") as pool:
        chunks = [
            range(k, min(k + NIFTI_SLAB_SLICES, len(volume)))
            for k in range(0, len(volume), NIFTI_SLAB_SLICES)
        ]
        return dict(
            item for written in pool.map(lambda ks: _write_range(write, ks), chunks) for item in written
        )


def _write_range(
    write: Callable[[int], tuple[Path, MaskInfo]], indexes: range
) -> list[tuple[Path, MaskInfo]]:
    """``write`` each slice of ``indexes``: one pool task per slab, not per slice (fewer GIL hand-overs)."""
    return [write(k) for k in indexes]


def _slice_writer(volume: np.ndarray, folder: Path) -> Callable[[int], tuple[Path, MaskInfo]]:
    """``write(k)``: encode slice ``k`` of the uint8 ``volume`` as ``mask_{k:04d}.png`` (0600) in ``folder``.

    It returns the path and what the file holds, from exactly the bytes written (as
    :func:`pacs_mask_desktop.core.masks.read_mask` would report them). Empty slices are all the same
    bytes, encoded once. Thread-safe: slices are written from a pool.
    """
    _, rows, columns = volume.shape
    empty_png = encode_label_png(np.zeros((rows, columns), dtype=np.uint8))
    empty_md5 = hashlib.md5(empty_png, usedforsecurity=False).hexdigest()

    def write(k: int) -> tuple[Path, MaskInfo]:
        labels = present_labels(volume[k])
        if labels:
            data = encode_label_png(np.ascontiguousarray(volume[k]))
            md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
        else:
            data, md5_hex = empty_png, empty_md5
        path = folder / f"mask_{k:04d}.png"
        _write_private(path, data)
        info = MaskInfo(
            filename=path.name,
            path=path,
            width=columns,
            height=rows,
            labels=labels,
            empty=not labels,
            size_bytes=len(data),
            md5_hex=md5_hex,
            mode="L",
            bit_depth=8,
        )
        return path, info

    return write


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (0600, whatever the umask).

    A new file is created 0600 (a umask only removes bits); a file already there (a given staging folder
    written again) keeps its mode through ``O_CREAT``, so its mode is set again.
    """
    binary = getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | binary, 0o600)
        existed = False
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | binary)
        existed = True
    try:
        if existed and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    if not hasattr(os, "fchmod"):
        os.chmod(path, 0o600)
