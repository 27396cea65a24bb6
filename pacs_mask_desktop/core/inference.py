"""The AI side: upload an inference result in-process, and a demo model run end to end.

Inference code calls :func:`upload_inference_result` with a folder of PNG label masks or with numpy
label arrays; it goes through the same checks, engine and journal as the desktop app and ``pacs-mask
watch``, so retries, resume and exactly-once completion are the same everywhere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.paths import journal_path, resolve_server
from pacs_mask_desktop.core.plan import Problem, prepare
from pacs_mask_desktop.core.upload import UploadEngine

MANIFEST = "manifest.json"
DONE_MARKER = ".done"


class InvalidResult(Exception):
    """The result cannot be uploaded as it is; ``problems`` lists every reason (nothing was sent)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "; ".join(f"{p.filename or '-'}: {p.message}" for p in problems[:10])
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"{len(problems)} problem(s): {lines}{more}")


def write_label_pngs(masks: Sequence[np.ndarray], folder: Path, *, prefix: str = "mask") -> list[Path]:
    """Write label arrays as 8-bit (or 16-bit when labels exceed 255) grayscale PNGs named by index."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, mask in enumerate(masks):
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"mask {index} has shape {array.shape}; label maps are 2-D")
        if array.min(initial=0) < 0:
            raise ValueError(f"mask {index} has negative labels")
        dtype = np.uint8 if array.max(initial=0) <= 255 else np.uint16
        path = folder / f"{prefix}_{index:04d}.png"
        Image.fromarray(array.astype(dtype)).save(path, format="PNG", optimize=False, compress_level=6)
        paths.append(path)
    return paths


def upload_inference_result(
    masks: Path | str | Sequence[np.ndarray],
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
) -> UploadResult:
    """Upload one model output as a group with ``source="ai"``; raises :class:`InvalidResult` on bad input.

    ``masks`` is a folder of PNG label maps or a sequence of 2-D label arrays in slice order. The
    server and token default to ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN`` or the embedded server.
    """
    temp: Path | None = None
    if not isinstance(masks, (str, Path)):
        temp = Path(tempfile.mkdtemp(prefix="pacs-mask-result-"))
        write_label_pngs(masks, temp)
        masks = temp
    try:
        prepared = prepare(
            masks, annotation_id=annotation_id, model_name=model_name, version=version, source="ai",
            confidence=confidence, params=params, series=series,
        )
        if not prepared.ok:
            raise InvalidResult(prepared.problems)
        target = resolve_server(server, token)
        journal = Journal(journal_path())
        with ApiClient(target.url, target.token) as api:
            engine = UploadEngine(api, journal, workers=workers, on_event=on_event)
            try:
                return engine.run(prepared.plan, source_path=str(masks))  # type: ignore[arg-type]
            finally:
                engine.close()
                journal.close()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


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
    params = {"method": "hu-threshold+largest-component", "low_hu": 50.0, "high_hu": 150.0, "lesion_above_hu": 82.0}
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
    watcher = Watcher(inbox, server=server, token=token, workers=workers, log=lambda _line: None)
    try:
        outcome = watcher.process(folder)
    finally:
        if out_folder is not None:
            shutil.copytree(folder, out_folder, dirs_exist_ok=True)
        shutil.rmtree(inbox, ignore_errors=True)
    return outcome
