"""A dropped NIfTI label volume or DICOM SEG file, turned into the PNG mask slices the app already handles.

The window keeps one :class:`VolumeStage`. When the masks to check are a single ``.nii``/``.nii.gz`` or
DICOM SEG file, :func:`stage_volume` (called from the ``prepare`` worker) places it on the annotation's
stored series geometry with :mod:`pacs_mask_desktop.core.volume_masks` (the local series' geometry only
for an annotation without one) and returns the private staging folder of ``mask_0000.png`` ... slices.
``prepare()``, the overlay and the upload then work on those slices exactly as on dropped PNGs.

The conversion is kept while the same file is used for the same annotation (checking the masks and
then uploading them convert once), and deleted (patient data) when another file replaces it, the masks
are cleared or the window closes. Nothing here touches a widget: it runs on pool threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

from pacs_mask_desktop.core.dicom_series import Series
from pacs_mask_desktop.core.plan import PreparedUpload, Problem
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.volume_masks import (
    LABELMAP_SEG_SOP_CLASS_UID,
    NIFTI_SUFFIXES,
    SEG_SOP_CLASS_UID,
    VolumeMaskError,
    VolumeMasks,
    annotation_geometry,
    masks_from_file,
)
from server.contract.messages import SeriesGeometry

FILE_FILTER = "Masks (*.png *.nii *.nii.gz *.dcm);;PNG masks (*.png);;NIfTI label volumes (*.nii *.nii.gz);;DICOM SEG (*.dcm)"
"""The "Add mask files" dialog filter: PNG slices, NIfTI label volumes and DICOM SEG files."""


def is_nifti(path: Path) -> bool:
    """True for a ``.nii``/``.nii.gz`` file name."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_seg_file(path: Path) -> bool:
    """True when ``path`` is a DICOM Segmentation (its SOP Class UID, read from the header only)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM, unreadable: the caller treats it as something else
        return False
    return str(header.get("SOPClassUID", "")) in (SEG_SOP_CLASS_UID, LABELMAP_SEG_SOP_CLASS_UID)


def is_volume_input(path: Path) -> bool:
    """True for a mask input that is a label volume (NIfTI, or a ``.dcm`` named as a mask to import)."""
    return path.is_file() and (is_nifti(path) or path.suffix.lower() == ".dcm")


class VolumeStage:
    """The current conversion of a dropped volume file (thread-safe; one conversion runs at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._masks: VolumeMasks | None = None
        self._stale = False  # cleanup() came while a conversion ran: drop it at the next call

    def masks_for(
        self, path: Path, annotation_id: int | None, api: Any, series: Series | None
    ) -> VolumeMasks:
        """``path`` placed on the annotation's series (reused while file and annotation stay the same).

        Raises :class:`VolumeMaskError` (``no_geometry`` when neither the server nor the open series
        gives a geometry); an ``ApiError`` when the server cannot be asked.
        """
        stat = path.stat()
        key = (
            str(path.resolve()),
            stat.st_mtime_ns,
            stat.st_size,
            annotation_id,
            api is not None,
            series.series_instance_uid if series is not None else None,
        )
        with self._lock:
            if self._stale:
                self._drop()
            if key == self._key and self._masks is not None and self._masks.folder.is_dir():
                return self._masks
            self._drop()
            geometry = self._geometry(annotation_id, api, series)
            if geometry is None:
                raise VolumeMaskError("no_geometry", _no_geometry_text(annotation_id, api))
            self._masks = masks_from_file(path, geometry)
            self._key = key
            return self._masks

    @staticmethod
    def _geometry(annotation_id: int | None, api: Any, series: Series | None) -> SeriesGeometry | None:
        if api is not None and annotation_id is not None:
            return annotation_geometry(api, annotation_id, series)
        if series is not None and series.ordered_by == "geometry":
            return geometry_from_series(series)
        return None

    def _drop(self) -> None:
        if self._masks is not None:
            self._masks.cleanup()
        self._masks = None
        self._key = None
        self._stale = False

    def cleanup(self) -> None:
        """Delete the staged slices (masks cleared, window closing); never waits for a running conversion
        (the GUI thread calls it): that one is dropped at the next call instead."""
        if not self._lock.acquire(blocking=False):
            self._stale = True
            return
        try:
            self._drop()
        finally:
            self._lock.release()


def _no_geometry_text(annotation_id: int | None, api: Any) -> str:
    if api is None or annotation_id is None:
        return (
            "Pick the annotation first: a NIfTI or DICOM SEG file is placed on the annotation's series by its "
            "geometry (or open the DICOM series it belongs to)."
        )
    return (
        f"Annotation {annotation_id} has no stored series geometry, and no DICOM series with slice positions is "
        "open: a NIfTI or DICOM SEG file is placed on the series by its geometry. Open the annotation's DICOM "
        "series folder, or use an annotation created from its series (from a folder or from the PACS)."
    )


def stage_volume(
    stage: VolumeStage, paths: Sequence[Path], annotation_id: int | None, api: Any, series: Series | None
) -> VolumeMasks | PreparedUpload | None:
    """The staged slices of the one volume file among ``paths``; ``None`` when there is none (PNG input).

    A refusal comes back as a :class:`PreparedUpload` holding one problem of the whole group whose
    message is the importer's (the measured difference, the slice, or the missing geometry).
    """
    volumes = [Path(p) for p in paths if is_volume_input(Path(p))]
    if not volumes:
        return None
    if len(volumes) > 1 or len(paths) > 1:
        names = ", ".join(Path(p).name for p in paths)
        return _refused(
            "volume_mixed",
            f"Add one NIfTI or DICOM SEG file on its own (not together with other masks): {names}.",
        )
    try:
        return stage.masks_for(volumes[0], annotation_id, api, series)
    except VolumeMaskError as exc:
        return _refused(exc.code, f"{volumes[0].name}: {exc.message}")


def _refused(code: str, message: str) -> PreparedUpload:
    return PreparedUpload(None, [Problem(None, code, message)], [])
