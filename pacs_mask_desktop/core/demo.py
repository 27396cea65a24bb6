"""Synthetic but realistic demo and test data: a CT series, matching masks, bad inputs, a toy model.

Everything here is made with numpy, pydicom and Pillow only, so demos and tests need no downloads.

The phantom is analytic: a torso ellipse (subcutaneous fat -100 HU, soft tissue 40 HU), two lungs
(-800 HU) in the upper half, a spine (700 HU), a liver-like ellipsoid (60 HU, label 1) in the lower
half and a lesion (100 HU, label 2) inside it over a few slices, air (-1000 HU) outside, Gaussian
noise (sigma 12 HU). Organ extents are defined along the *normalised* z of the volume, so even a
12-slice 64x64 test series holds every structure. Because the anatomy is a formula, masks are
regenerated exactly from any series written by :func:`write_synthetic_ct` (its seed is stored in
ImageComments).

:func:`threshold_model` is a demo "AI model" (HU band + largest 3-D connected component). It is for
exercising the AI upload path, never for clinical use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs_mask_desktop.core.dicom_series import Series, load_series

PHANTOM_TAG = "pacs-mask synthetic phantom v1"
DEFAULT_LABEL_MAP: Mapping[str, int] = {"liver": 1, "lesion": 2}
SLICE_SPACING_MM = 2.5
FIELD_OF_VIEW_MM = 400.0
NOISE_SIGMA_HU = 12.0
RESCALE_INTERCEPT = -1024


@dataclass(frozen=True, slots=True)
class _Anatomy:
    """Where the organs are, in mm in-plane and normalised z (0 = first slice, 1 = last)."""

    liver_center: tuple[float, float, float]
    liver_axes: tuple[float, float, float]
    lesion_center: tuple[float, float, float]
    lesion_axes: tuple[float, float, float]
    lung_start: float

    @classmethod
    def from_seed(cls, seed: int) -> _Anatomy:
        """Small per-seed variation, so different seeds look like different patients."""
        rng = np.random.default_rng([seed, 1])
        jitter = rng.uniform(-1.0, 1.0, size=6)
        liver = (-65.0 + 6 * jitter[0], 10.0 + 5 * jitter[1], 0.35 + 0.03 * jitter[2])
        axes = (75.0 * (1 + 0.08 * jitter[3]), 60.0 * (1 + 0.08 * jitter[4]), 0.25)
        lesion = (liver[0] - 12.0, liver[1] + 6.0, liver[2] - 0.02 + 0.02 * jitter[5])
        return cls(liver, axes, lesion, (18.0, 18.0, 0.09), 0.5)


class _Phantom:
    """Per-slice HU and label images of the analytic phantom on one pixel grid."""

    def __init__(self, anatomy: _Anatomy, x_mm: np.ndarray, y_mm: np.ndarray) -> None:
        self.anatomy = anatomy
        x, y = np.meshgrid(x_mm.astype(np.float32), y_mm.astype(np.float32))
        body = (x / 170.0) ** 2 + (y / 120.0) ** 2
        base = np.full(x.shape, -1000.0, dtype=np.float32)
        base[body <= 1.0] = -100.0  # subcutaneous fat
        self.inner = body <= 0.9**2
        base[self.inner] = 40.0  # soft tissue
        base[(x / 16.0) ** 2 + ((y - 80.0) / 16.0) ** 2 <= 1.0] = 700.0  # vertebral body
        self.base = base
        self.lungs = np.minimum(
            ((x - 85.0) / 55.0) ** 2 + ((y + 15.0) / 75.0) ** 2,
            ((x + 85.0) / 55.0) ** 2 + ((y + 15.0) / 75.0) ** 2,
        )
        (lx, ly, _), (la, lb, _) = anatomy.liver_center, anatomy.liver_axes
        self.liver = ((x - lx) / la) ** 2 + ((y - ly) / lb) ** 2
        (ex, ey, _), (ea, eb, _) = anatomy.lesion_center, anatomy.lesion_axes
        self.lesion = ((x - ex) / ea) ** 2 + ((y - ey) / eb) ** 2

    def labels(self, t: float) -> np.ndarray:
        """uint8 labels at normalised z ``t``: 0 background, 1 liver, 2 lesion."""
        out = np.zeros(self.base.shape, dtype=np.uint8)
        a = self.anatomy
        liver_r2 = 1.0 - ((t - a.liver_center[2]) / a.liver_axes[2]) ** 2
        if liver_r2 > 0:
            out[(self.liver <= liver_r2) & self.inner] = 1
        lesion_r2 = 1.0 - ((t - a.lesion_center[2]) / a.lesion_axes[2]) ** 2
        if lesion_r2 > 0:
            out[(self.lesion <= lesion_r2) & (out == 1)] = 2
        return out

    def hounsfield(self, t: float, labels: np.ndarray) -> np.ndarray:
        """Noise-free HU at normalised z ``t`` given that slice's labels."""
        hu = self.base.copy()
        if t > self.anatomy.lung_start:
            grow = min(1.0, (t - self.anatomy.lung_start) / 0.15)
            hu[(self.lungs <= grow**2) & self.inner] = -800.0
        hu[labels == 1] = 60.0
        hu[labels == 2] = 100.0
        return hu


def _grid(size: int) -> tuple[np.ndarray, float]:
    """Pixel-centre coordinates (mm) along one axis, and the pixel spacing."""
    spacing = FIELD_OF_VIEW_MM / size
    return -FIELD_OF_VIEW_MM / 2 + spacing / 2 + spacing * np.arange(size), spacing


def _noise_bank(rng: np.random.Generator, size: int, count: int = 4) -> np.ndarray:
    return (rng.standard_normal((count, size, size), dtype=np.float32) * NOISE_SIGMA_HU).astype(np.float32)


def _ds(number: float) -> str:
    return pydicom.valuerep.format_number_as_ds(float(number))


def _common_header(ds: Dataset, *, study_uid: str, series_uid: str, seed: int, size: int) -> None:
    """Patient/study/series/image-pixel attributes shared by the classic and enhanced writers."""
    now = datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"Demo^Phantom{seed}"
    ds.PatientID = f"DEMO-{seed:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = f"DEMO{seed:06d}"
    ds.StudyDescription = "Synthetic CT abdomen (demo)"
    ds.SeriesDescription = "Synthetic phantom 2.5 mm"
    ds.SeriesNumber = 1
    ds.Modality = "CT"
    ds.Manufacturer = "pacs-mask demo"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"
    ds.ImageComments = f"{PHANTOM_TAG} seed={seed}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _save(ds: Dataset, path: Path, sop_class: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.save_as(path, enforce_file_format=True)


def _slice_hu(phantom: _Phantom, t: float, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stored int16 pixel values (HU - intercept) of one noisy slice."""
    hu = phantom.hounsfield(t, phantom.labels(t))
    shift = rng.integers(0, hu.shape[0], size=2)
    hu += np.roll(noise[rng.integers(len(noise))], tuple(int(s) for s in shift), axis=(0, 1))
    stored = np.rint(hu - RESCALE_INTERCEPT)
    return np.clip(stored, -32768, 32767).astype("<i2")


def write_synthetic_ct(
    folder: Path | str, *, slices: int = 120, size: int = 512, seed: int = 0
) -> list[Path]:
    """Write a synthetic axial CT series (classic CT Image Storage, one file per slice) into ``folder``.

    Explicit VR little endian, uncompressed int16 with RescaleIntercept -1024 / slope 1, fresh
    Study/Series/SOP UIDs, ImagePositionPatient stepping +2.5 mm in z. File names are random UID-like
    strings, and InstanceNumber runs head to feet (1 = highest z) as scanners often do, so only
    geometric ordering gives index 0 = lowest z. Returns the paths in geometry order (index order).
    About 4 ms a 512x512 slice.
    """
    if slices < 1 or size < 8:
        raise ValueError("need at least 1 slice of at least 8x8 pixels")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    coords, spacing = _grid(size)
    phantom = _Phantom(_Anatomy.from_seed(seed), coords, coords)
    noise = _noise_bank(rng, size)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    z0 = -SLICE_SPACING_MM * (slices - 1) / 2
    paths: list[Path] = []
    for i in range(slices):
        t = i / (slices - 1) if slices > 1 else 0.5
        z = z0 + i * SLICE_SPACING_MM
        ds = Dataset()
        _common_header(ds, study_uid=study_uid, series_uid=series_uid, seed=seed, size=size)
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = slices - i
        ds.ImagePositionPatient = [_ds(coords[0]), _ds(coords[0]), _ds(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = _ds(z)
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
        ds.SliceThickness = _ds(SLICE_SPACING_MM)
        ds.KVP = 120
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = _slice_hu(phantom, t, noise, rng).tobytes()
        path = out / f"2.25.{int.from_bytes(rng.bytes(12), 'big')}.dcm"
        _save(ds, path, CTImageStorage)
        paths.append(path)
    return paths


def write_synthetic_enhanced_ct(
    path: Path | str, *, frames: int = 12, size: int = 64, seed: int = 0, reverse_frames: bool = True
) -> Path:
    """Write the phantom as one multi-frame Enhanced CT file (per-frame PlanePositionSequence).

    With ``reverse_frames`` the frames are stored top-down (frame 1 = highest z), so a reader that
    trusts frame order instead of per-frame geometry gets the volume upside down.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    coords, spacing = _grid(size)
    phantom = _Phantom(_Anatomy.from_seed(seed), coords, coords)
    noise = _noise_bank(rng, size, count=2)
    order = list(range(frames))[::-1] if reverse_frames else list(range(frames))
    z0 = -SLICE_SPACING_MM * (frames - 1) / 2
    ds = Dataset()
    _common_header(ds, study_uid=generate_uid(), series_uid=generate_uid(), seed=seed, size=size)
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.FrameOfReferenceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing), _ds(spacing)]
    measures.SliceThickness = _ds(SLICE_SPACING_MM)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = Dataset()
    transform.RescaleIntercept = RESCALE_INTERCEPT
    transform.RescaleSlope = 1
    transform.RescaleType = "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    pixels = []
    for i in order:
        t = i / (frames - 1) if frames > 1 else 0.5
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [_ds(coords[0]), _ds(coords[0]), _ds(z0 + i * SLICE_SPACING_MM)]
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
        pixels.append(_slice_hu(phantom, t, noise, rng))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.stack(pixels).tobytes()
    _save(ds, target, EnhancedCTImageStorage)
    return target


def _phantom_seed(series: Series) -> int:
    """The seed stored by the writers, or ``ValueError`` for a series that is not the phantom."""
    header = pydicom.dcmread(series[0].path, stop_before_pixels=True)
    match = re.search(rf"{re.escape(PHANTOM_TAG)} seed=(\d+)", str(header.get("ImageComments", "")))
    if match is None:
        raise ValueError("not a synthetic series written by write_synthetic_ct / write_synthetic_enhanced_ct")
    return int(match.group(1))


def write_masks_for_series(
    series: Series | Path | str,
    out_folder: Path | str,
    *,
    label_map: Mapping[str, int] = DEFAULT_LABEL_MAP,
) -> list[Path]:
    """Write ground-truth masks for a synthetic series: ``mask_0000.png``... in geometry order.

    8-bit grayscale PNGs whose value is the label from ``label_map`` (default liver=1, lesion=2;
    leave ``lesion`` out to count lesion pixels as liver, map a name to 0 to drop it). Slices without
    liver are written too, as empty masks - real exports have them. Returns the paths in index order.
    """
    loaded = series if isinstance(series, Series) else load_series(series)
    seed = _phantom_seed(loaded)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    first = loaded[0]
    spacing = loaded.pixel_spacing or (FIELD_OF_VIEW_MM / loaded.rows, FIELD_OF_VIEW_MM / loaded.columns)
    origin = first.image_position or (0.0, 0.0, 0.0)
    x_mm = origin[0] + spacing[1] * np.arange(loaded.columns)
    y_mm = origin[1] + spacing[0] * np.arange(loaded.rows)
    phantom = _Phantom(_Anatomy.from_seed(seed), x_mm, y_mm)
    positions = [
        ref.position if ref.position is not None else float(i) for i, ref in enumerate(loaded.slices)
    ]
    low, high = min(positions), max(positions)
    liver_value = label_map.get("liver", 0)
    lookup = np.array([0, liver_value, label_map.get("lesion", liver_value)], dtype=np.uint8)
    paths: list[Path] = []
    for i, position in enumerate(positions):
        t = (position - low) / (high - low) if high > low else 0.5
        path = out / f"mask_{i:04d}.png"
        Image.fromarray(lookup[phantom.labels(t)], mode="L").save(path, compress_level=6)
        paths.append(path)
    return paths


def write_bad_masks(folder: Path | str, *, size: int = 64) -> dict[str, Path]:
    """Write one file of each bad-input kind (plus a few good ones around them) for tests and demos.

    Returns ``{kind: path}``. Good: ``good_0``, ``good_1``, ``good_3`` (indexes 0, 1, 3, so index 2 is
    a ``gap``). Bad: ``rgb``, ``rgba``, ``text`` (a text file named .png), ``jpeg`` (JPEG bytes named
    .png), ``wrong_size``, ``duplicate`` (``slice-1.png``, index 1 again), ``bad_filename`` (a space),
    ``no_index`` (no digits), ``not_png_extension`` (a .txt next to the masks).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 1
    paths = {
        "good_0": out / "mask_0000.png",
        "good_1": out / "mask_0001.png",
        "good_3": out / "mask_0003.png",
        "rgb": out / "mask_0004.png",
        "rgba": out / "mask_0005.png",
        "text": out / "mask_0006.png",
        "jpeg": out / "mask_0007.png",
        "wrong_size": out / "mask_0008.png",
        "duplicate": out / "slice-1.png",
        "bad_filename": out / "mask 0009.png",
        "no_index": out / "mask.png",
        "not_png_extension": out / "notes.txt",
    }
    for kind in ("good_0", "good_1", "good_3", "duplicate", "bad_filename", "no_index"):
        Image.fromarray(mask, mode="L").save(paths[kind])
    Image.fromarray(np.stack([mask * 255] * 3, axis=-1), mode="RGB").save(paths["rgb"])
    Image.fromarray(np.stack([mask * 255] * 4, axis=-1), mode="RGBA").save(paths["rgba"])
    paths["text"].write_text("this is not an image\n", encoding="utf-8")
    Image.fromarray(mask * 255, mode="L").save(paths["jpeg"], format="JPEG")
    Image.fromarray(np.zeros((size + 8, size), dtype=np.uint8), mode="L").save(paths["wrong_size"])
    paths["not_png_extension"].write_text("annotator notes\n", encoding="utf-8")
    return paths


@dataclass(frozen=True, slots=True)
class ModelResult:
    """Output of :func:`threshold_model`: one uint8 label mask per slice (index order) and a score."""

    masks: list[np.ndarray]
    confidence: float
    labels: Mapping[str, int]
    voxels: int


def threshold_model(
    volume: Series | np.ndarray | Sequence[np.ndarray],
    *,
    low: float = 50.0,
    high: float = 150.0,
    lesion_above: float | None = 82.0,
    smooth: int = 5,
    block: int | None = None,
    margin: float = 5.0,
) -> ModelResult:
    """Demo segmentation "model" (NOT clinical): HU band + largest 3-D connected component.

    1. Each slice is box-smoothed (``smooth`` px) to tame noise; a block-averaged low-resolution
       copy (``block`` px, default size // 128) is thresholded to ``[low, high]`` HU.
    2. The largest 6-connected 3-D component of that low-res volume is kept (label propagation with
       pointer jumping, numpy only: scipy is not a dependency).
    3. Full resolution: smoothed pixels in the band inside the (dilated) component are label 1 (liver);
       those above ``lesion_above`` HU are label 2 (lesion).

    ``confidence`` is the fraction of segmented pixels whose smoothed HU lies at least ``margin`` HU
    inside the band: a crude stand-in for a model's score. About 1 s for 120 slices of 512x512.
    """
    count = len(volume)
    if count == 0:
        raise ValueError("empty volume")

    def slice_hu(i: int) -> np.ndarray:
        return np.asarray(volume.pixel_array(i) if isinstance(volume, Series) else volume[i], np.float32)

    first = slice_hu(0)
    height, width = first.shape
    step = block if block is not None else max(1, min(height, width) // 128)
    low_res = np.stack([_block_mean(slice_hu(i), step) for i in range(count)])
    component = _largest_component((low_res >= low) & (low_res <= high))
    masks: list[np.ndarray] = []
    inside = 0
    total = 0
    for i in range(count):
        mask = np.zeros((height, width), dtype=np.uint8)
        if component[i].any():
            region = _upsample(_dilate2d(component[i]), step, height, width)
            smoothed = _box_mean(slice_hu(i), smooth)
            selected = region & (smoothed >= low) & (smoothed <= high)
            mask[selected] = 1
            if lesion_above is not None:
                mask[selected & (smoothed > lesion_above)] = 2
            values = smoothed[selected]
            total += values.size
            inside += int(np.count_nonzero((values >= low + margin) & (values <= high - margin)))
        masks.append(mask)
    confidence = inside / total if total else 0.0
    return ModelResult(masks, round(confidence, 4), {"liver": 1, "lesion": 2}, total)


def _block_mean(image: np.ndarray, step: int) -> np.ndarray:
    """Mean over ``step`` x ``step`` blocks (edges padded by repetition)."""
    if step == 1:
        return image
    h, w = image.shape
    ph, pw = -h % step, -w % step
    padded = np.pad(image, ((0, ph), (0, pw)), mode="edge") if ph or pw else image
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).mean(axis=(1, 3))


def _box_mean(image: np.ndarray, k: int) -> np.ndarray:
    """``k`` x ``k`` box filter through summed-area tables (O(1) per pixel)."""
    if k <= 1:
        return image
    r = k // 2
    padded = np.pad(image, ((r + 1, r), (r + 1, r)), mode="edge").astype(np.float64)
    padded[0, :] = 0.0
    padded[:, 0] = 0.0
    table = padded.cumsum(0).cumsum(1)
    total = table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]
    return (total / (k * k)).astype(np.float32)


def _dilate2d(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _upsample(mask: np.ndarray, step: int, height: int, width: int) -> np.ndarray:
    if step == 1:
        return mask
    return np.repeat(np.repeat(mask, step, axis=0), step, axis=1)[:height, :width]


def _largest_component(foreground: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean volume (any dimensionality).

    Every foreground voxel starts labelled with its own flat index; each round takes the minimum over
    face neighbours, then pointer-jumps (``label = label[label]``) so labels travel far per round.
    A label is always the index of a voxel of the same component, hence jumping is safe.
    """
    if not foreground.any():
        return foreground.copy()
    size = foreground.size
    dtype = np.int32 if size < 2**31 - 1 else np.int64
    sentinel = dtype(size)
    labels = np.where(foreground, np.arange(size, dtype=dtype).reshape(foreground.shape), sentinel)
    background = ~foreground
    while True:
        updated = labels.copy()
        for axis in range(labels.ndim):
            head = [slice(None)] * labels.ndim
            tail = [slice(None)] * labels.ndim
            head[axis], tail[axis] = slice(1, None), slice(None, -1)
            np.minimum(updated[tuple(head)], labels[tuple(tail)], out=updated[tuple(head)])
            np.minimum(updated[tuple(tail)], labels[tuple(head)], out=updated[tuple(tail)])
        updated[background] = sentinel
        flat = updated.reshape(-1)
        selected = np.flatnonzero(flat != sentinel)
        while True:
            current = flat[selected]
            jumped = flat[current]
            if np.array_equal(jumped, current):
                break
            flat[selected] = jumped
        if np.array_equal(updated, labels):
            return labels == np.bincount(labels[foreground]).argmax()
        labels = updated
