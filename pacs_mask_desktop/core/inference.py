"""The AI side: upload an inference result in-process, and a demo model run end to end.

Inference code calls :func:`upload_inference_result` with a folder of PNG label masks, numpy label
arrays, a NIfTI/DICOM SEG file or a 3-D array with its affine; it goes through the same checks, engine and journal as the desktop app and ``pacs-mask
watch``, so retries, resume and exactly-once completion are the same everywhere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, UploadResult
from pacs_mask_desktop.core.masks import write_label_pngs
from pacs_mask_desktop.core.paths import resolve_server
from pacs_mask_desktop.core.plan import Problem, prepare
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.core.series_geometry import GeometryFormatError, fetch_annotation_series
from pacs_mask_desktop.core.upload_run import upload_with_journal
from pacs_mask_desktop.core.volume_masks import (
    NO_GEOMETRY_MESSAGE,
    VolumeMaskError,
    VolumeMasks,
    annotation_geometry,
    is_volume_file,
    masks_from_array,
    masks_from_file,
    normalize_label_table,
)

MANIFEST = "manifest.json"
DONE_MARKER = ".done"


class InvalidResult(Exception):
    """The result cannot be uploaded as it is; ``problems`` lists every reason (nothing was sent)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "; ".join(f"{p.filename or '-'}: {p.message}" for p in problems[:10])
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"{len(problems)} problem(s): {lines}{more}")


def upload_inference_result(
    masks: Path | str | Sequence[np.ndarray] | np.ndarray,
    *,
    annotation_id: int,
    model_name: str,
    version: str,
    confidence: float | None = None,
    params: Mapping[str, Any] | None = None,
    series: Path | str | None = None,
    server: str | None = None,
    token: str | None = None,
    workers: int = 8,
    on_event: Callable[[SliceEvent | GroupEvent], None] | None = None,
    policy: RetryPolicy | None = None,
    affine: np.ndarray | None = None,
    affine_space: Literal["RAS", "LPS"] | None = None,
    labels: Mapping[str, Any] | None = None,
) -> UploadResult:
    """Upload one model output as a group with ``source="ai"``; raises :class:`InvalidResult` on bad input.

    ``masks`` is a folder of PNG label maps, a sequence of 2-D label arrays in slice order, a NIfTI
    (``.nii``/``.nii.gz``) or DICOM SEG file, or a 3-D label array with its ``affine`` (4x4 voxel-to-world)
    and ``affine_space``, required with an affine: ``"RAS"`` (nibabel) or ``"LPS"`` (SimpleITK/ITK); it
    cannot be told from the matrix (on a grid centred in x and y the wrong one rotates the mask 180 degrees
    in-plane and still fits), so an affine without it is :class:`InvalidResult`. Volumes are placed
    exactly on the annotation's series grid (:mod:`pacs_mask_desktop.core.volume_masks`: never resampled;
    another grid is :class:`InvalidResult` naming the measured difference); ``labels`` (``{"1": "liver"}`` or full entries) names the labels when
    the file's sidecar or segments do not. The
    server and token default to ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN`` or the embedded server.
    ``policy`` sets how long to wait for an unreachable server (default about 2 minutes); the result
    is then ``incomplete`` with ``error_code`` ``unreachable``, and calling again resumes.
    The masks (and ``series``) are checked against the annotation's series as the server recorded it:
    another series, another size or a slice outside it is :class:`InvalidResult`, and nothing is sent.
    """
    if affine is not None and affine_space not in ("RAS", "LPS"):
        raise InvalidResult(
            [
                Problem(
                    None,
                    "invalid_field",
                    f"affine_space must be 'RAS' (nibabel) or 'LPS' (SimpleITK/ITK) with an affine, not "
                    f"{affine_space!r}; it cannot be told from the affine itself",
                )
            ]
        )
    temp: Path | None = None
    if affine is None and not isinstance(masks, (str, Path)):
        temp = Path(tempfile.mkdtemp(prefix="pacs-mask-result-"))
        write_label_pngs(list(masks), temp)  # a 3-D array is a sequence of 2-D slices (views, no copy)
        masks = temp
    try:
        target = resolve_server(server, token)
        with ApiClient(target.url, target.token, policy=policy) as api:
            # The annotation's recorded series checks the masks (and ``series``) before anything is sent.
            try:
                stored = fetch_annotation_series(api, annotation_id)
                series_uid = (  # an older annotation without geometry: ``series`` must still be its series
                    api.get_annotation(annotation_id).series_instance_uid if stored is None else None
                )
            except (ApiError, GeometryFormatError) as exc:
                return UploadResult(
                    "incomplete", None, str(exc), error_code=getattr(exc, "code", "bad_geometry")
                )
            volume = _stage_volume(api, masks, affine, affine_space, labels, annotation_id, series)
            if volume is not None:
                folder: Path | str = volume.folder
            elif isinstance(masks, (str, Path)):  # PNGs: given as a folder, or written to ``temp`` above
                folder = masks
            else:  # an array is either staged (with an affine) or written to ``temp`` (without)
                raise TypeError("the masks were neither staged nor written as PNGs")
            try:
                prepared = prepare(
                    folder,
                    annotation_id=annotation_id,
                    model_name=model_name,
                    version=version,
                    source="ai",
                    confidence=confidence,
                    params=params,
                    series=series,
                    annotation_series=stored,
                    annotation_series_uid=series_uid,
                    labels=(volume.labels or normalize_label_table(labels))
                    if volume is not None
                    else normalize_label_table(labels),
                    known_slices=volume.known_slices if volume is not None else None,
                )
                if prepared.plan is None:  # not prepared.ok
                    raise InvalidResult(prepared.problems)
                source_path = str(masks) if isinstance(masks, (str, Path)) else "array"
                return upload_with_journal(
                    api, prepared.plan, source_path=source_path, workers=workers, on_event=on_event
                )
            finally:
                if volume is not None:
                    volume.cleanup()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _stage_volume(
    api: ApiClient,
    masks: Any,
    affine: np.ndarray | None,
    affine_space: Literal["RAS", "LPS"] | None,
    labels: Mapping[str, Any] | None,
    annotation_id: int,
    series: Path | str | None,
) -> VolumeMasks | None:
    """A NIfTI/SEG file or a 3-D array + affine staged as PNG slices on the series grid; ``None`` for PNGs."""
    is_file = isinstance(masks, (str, Path)) and is_volume_file(masks)
    if affine is None and not is_file:
        return None
    name = Path(masks).name if is_file else None
    try:
        geometry = annotation_geometry(api, annotation_id, series)
        if geometry is None:
            raise VolumeMaskError("no_geometry", NO_GEOMETRY_MESSAGE)
        if is_file:
            return masks_from_file(masks, geometry)
        if affine_space is None:  # run_inference refuses an affine without its space before this
            raise ValueError("affine_space ('RAS' or 'LPS') is needed with an affine")
        return masks_from_array(
            np.asarray(masks),
            np.asarray(affine),
            geometry,
            affine_space=affine_space,
            labels=normalize_label_table(labels),
        )
    except VolumeMaskError as exc:
        raise InvalidResult([Problem(name, exc.code, exc.message)]) from None


def write_result_folder(
    folder: Path,
    masks: Sequence[np.ndarray],
    manifest: Mapping[str, Any],
) -> Path:
    """Write a result folder the way an inference server should: PNGs and manifest, then ``.done`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    write_label_pngs(masks, folder)
    (folder / MANIFEST).write_text(json.dumps(dict(manifest), indent=2), encoding="utf-8")
    (folder / DONE_MARKER).touch()
    return folder


def run_demo_inference(
    series_folder: Path,
    *,
    annotation_id: int,
    server: str,
    token: str,
    version: str = "1.0",
    workers: int = 8,
    out_folder: Path | None = None,
    on_note: Callable[[str], None] = lambda _text: None,
    policy: RetryPolicy | None = None,
) -> UploadResult:
    """Segment a series with the demo threshold model and upload the result through the worker path.

    The result folder (manifest, PNGs, ``.done``) is written exactly as an inference server would drop
    it, then handed to the same :class:`~pacs_mask_desktop.core.watch.Watcher` code that ``pacs-mask
    watch`` runs, so the demo exercises the real AI flow.
    """
    from pacs_mask_desktop.core.demo import threshold_model
    from pacs_mask_desktop.core.dicom_series import load_series
    from pacs_mask_desktop.core.watch import Watcher

    series = load_series(series_folder)
    on_note(f"running the demo model on {len(series)} slices …")
    model = threshold_model(series)
    params = {
        "method": "hu-threshold+largest-component",
        "low_hu": 50.0,
        "high_hu": 150.0,
        "lesion_above_hu": 82.0,
    }
    inbox = Path(tempfile.mkdtemp(prefix="pacs-mask-inbox-"))
    folder = inbox / f"demo-{annotation_id}-{version}"
    write_result_folder(
        folder,
        model.masks,
        {
            "annotation_id": annotation_id,
            "model_name": "demo-threshold",
            "version": version,
            "confidence": round(float(model.confidence), 4),
            "params": params,
            "series": str(series_folder.resolve()),
        },
    )
    on_note(f"model confidence {model.confidence:.3f}; uploading {len(model.masks)} masks …")
    watcher = Watcher(
        inbox, server=server, token=token, workers=workers, log=lambda _line: None, policy=policy
    )
    try:
        outcome = watcher.process(folder)
    finally:
        if out_folder is not None:
            shutil.copytree(folder, out_folder, dirs_exist_ok=True)
        shutil.rmtree(inbox, ignore_errors=True)
    return outcome
