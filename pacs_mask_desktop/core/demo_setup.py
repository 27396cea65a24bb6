"""``--demo``: a realistic sample written once into the data dir and registered on the server.

:func:`ensure_demo` writes a synthetic CT series (default 120 slices of 512x512, proper geometry, see
``core.demo``) and its ground-truth masks into ``folder`` the first time, records what it wrote in a
small ``demo.json`` (written last, so an interrupted first run is redone rather than half-used), and
makes sure the server has an annotation for the series (reusing one that names the same Series
Instance UID). No Qt: the desktop app runs it in a worker; tests and scripts call it directly.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from server.contract.messages import AnnotationOut, SeriesGeometry

DEMO_MANIFEST = "demo.json"
DEMO_DESCRIPTION = "Demo: synthetic CT abdomen (liver + lesion)"


class DemoCancelled(Exception):
    """The caller's cancel event was set while the demo data was being written."""


@dataclass(frozen=True, slots=True)
class DemoData:
    """Where the demo lives and which annotation it belongs to."""

    series_dir: Path
    masks_dir: Path
    annotation_id: int
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    slices: int
    size: int


def _read_manifest(folder: Path, slices: int, size: int) -> dict[str, Any] | None:
    """The manifest of a complete earlier run with these dimensions, else ``None``."""
    try:
        manifest = json.loads((folder / DEMO_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("slices") != slices or manifest.get("size") != size:
        return None
    series_dir, masks_dir = folder / "series", folder / "masks"
    if len(list(series_dir.glob("*.dcm"))) != slices or len(list(masks_dir.glob("*.png"))) != slices:
        return None
    return manifest


def write_demo_files(
    folder: Path, *, slices: int = 120, size: int = 512, seed: int = 7, cancel: threading.Event | None = None
) -> dict[str, Any]:
    """Write (or find) the demo series and masks in ``folder``; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder, slices, size)
    if manifest is not None:
        return manifest
    series_dir, masks_dir = folder / "series", folder / "masks"
    (folder / DEMO_MANIFEST).unlink(missing_ok=True)
    for stale in (series_dir, masks_dir):
        shutil.rmtree(stale, ignore_errors=True)
    write_synthetic_ct(series_dir, slices=slices, size=size, seed=seed)
    if cancel is not None and cancel.is_set():
        raise DemoCancelled
    series = load_series(series_dir, cancel=cancel)
    write_masks_for_series(series, masks_dir)
    manifest = {
        "slices": slices,
        "size": size,
        "seed": seed,
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "patient_id": series.patient_id,
    }
    tmp = folder / (DEMO_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.replace(folder / DEMO_MANIFEST)
    return manifest


def ensure_annotation(
    api: ApiClient,
    study_instance_uid: str,
    series_instance_uid: str,
    *,
    patient_id: str | None = None,
    description: str | None = None,
    series: SeriesGeometry | None = None,
) -> AnnotationOut:
    """The server's annotation for this series, created when there is none (with ``series``, its geometry)."""
    for item in api.list_annotations(series_instance_uid):
        if item.series_instance_uid == series_instance_uid:
            return item
    return api.create_annotation(
        study_instance_uid, series_instance_uid, patient_id=patient_id, description=description, series=series
    )


def ensure_demo(
    api: ApiClient,
    folder: Path,
    *,
    slices: int = 120,
    size: int = 512,
    seed: int = 7,
    cancel: threading.Event | None = None,
) -> DemoData:
    """Create the demo once (series, masks, annotation) and return where everything is.

    Blocking (a first run writes ~60 MB in a second or two): call it from a worker.
    """
    folder = Path(folder)
    manifest = write_demo_files(folder, slices=slices, size=size, seed=seed, cancel=cancel)
    annotation = ensure_annotation(
        api,
        manifest["study_instance_uid"],
        manifest["series_instance_uid"],
        patient_id=manifest.get("patient_id") or None,
        description=DEMO_DESCRIPTION,
        series=geometry_from_series(load_series(folder / "series")),  # the server records the geometry
    )
    return DemoData(
        series_dir=folder / "series",
        masks_dir=folder / "masks",
        annotation_id=int(annotation.id),
        series_instance_uid=manifest["series_instance_uid"],
        study_instance_uid=manifest["study_instance_uid"],
        patient_id=manifest.get("patient_id", ""),
        slices=slices,
        size=size,
    )


def demo_summary(demo: DemoData) -> dict[str, Any]:
    """A JSON-ready description (for logs and scripts)."""
    data = asdict(demo)
    data["series_dir"] = str(demo.series_dir)
    data["masks_dir"] = str(demo.masks_dir)
    return data
