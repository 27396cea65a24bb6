"""Work the main window runs in its thread pool: each function takes the worker's context first.

Kept apart from the window so what runs off the GUI thread is visible at a glance: reading a folder,
loading a series (headers only), checking masks with ``prepare()``, reading the resume journal,
looking up what an interrupted upload needs, writing the demo. None of them touches a widget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo_setup import DemoData, ensure_demo
from pacs_mask_desktop.core.dicom_series import Series, load_series
from pacs_mask_desktop.core.journal import Journal, JournalEntry
from pacs_mask_desktop.core.plan import PreparedUpload, prepare
from pacs_mask_desktop.core.series_geometry import fetch_annotation_series
from pacs_mask_desktop.ui.volume_stage import VolumeStage, is_nifti, is_seg_file, stage_volume
from pacs_mask_desktop.ui.workers import WorkContext
from server.contract.messages import AnnotationOut, GroupOut

SERIES_CACHE_FRAMES = 32
"""Decoded frames a series keeps (the viewer keeps a few more); a 1000-slice series never sits whole."""


def classify_paths(_context: WorkContext, paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[str]]:
    """Split dropped paths into DICOM series folders and mask inputs (files or folders of PNGs)."""
    series: list[Path] = []
    masks: list[Path] = []
    ignored: list[str] = []
    for path in paths:
        if path.is_dir():
            try:
                has_png = any(c.suffix.lower() == ".png" for c in path.iterdir() if c.is_file())
            except OSError as exc:
                ignored.append(f"{path.name}: {exc.strerror or exc}")
                continue
            (masks if has_png else series).append(path)
        elif path.is_file():
            if path.suffix.lower() == ".png" or is_nifti(path) or is_seg_file(path):
                masks.append(path)  # a NIfTI/SEG volume is staged as PNG slices by prepare_task
            elif path.parent not in series:
                series.append(path.parent)
        else:
            ignored.append(f"{path}: not found")
    return series, masks, ignored


def throttled(context: WorkContext, interval: float = 0.1) -> Callable[[int, int], None]:
    """A ``(done, total)`` progress callback that reports at most every ``interval`` s (and at the end)."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= interval:
            last[0] = now
            context.report((done, total))

    return report


def load_series_task(context: WorkContext, folder: Path) -> Series:
    return load_series(
        folder, cache_size=SERIES_CACHE_FRAMES, on_progress=throttled(context), cancel=context.cancel
    )


def prepare_task(
    context: WorkContext,
    paths: list[Path],
    fields: dict[str, Any],
    series: Series | None,
    api: ApiClient | None = None,
    stage: VolumeStage | None = None,
    *,
    defer_decode: bool = False,
) -> PreparedUpload:
    """``prepare()`` the masks; with ``api``, against the annotation's series as the server recorded it.

    ``defer_decode`` (the upload's own check) checks headers, names and indexes here and leaves decoding
    the pixels to the upload, which runs it alongside the PUTs (``core.plan``: checking while sending).

    With ``stage``, a single NIfTI/DICOM SEG file is first placed on the annotation's series geometry
    and staged as PNG slices (:mod:`pacs_mask_desktop.ui.volume_stage`); its label table goes with the plan.
    """
    volume = None
    if stage is not None:
        staged = stage_volume(stage, paths, fields["annotation_id"] if api is not None else None, api, series)
        if isinstance(staged, PreparedUpload):
            return staged
        volume = staged
    stored = fetch_annotation_series(api, fields["annotation_id"]) if api is not None else None
    series_uid = (  # an older annotation without geometry: the open series must still be its series
        api.get_annotation(fields["annotation_id"]).series_instance_uid
        if api is not None and stored is None
        else None
    )
    prepared = prepare(
        [volume.folder] if volume is not None else paths,
        annotation_id=fields["annotation_id"],
        model_name=fields["model_name"],
        version=fields["version"],
        source=fields["source"],
        series=series,
        on_progress=throttled(context),
        cancel=context.cancel,
        annotation_series=stored,
        annotation_series_uid=series_uid,
        labels=volume.labels if volume is not None else None,
        known_slices=volume.known_slices if volume is not None else None,
        defer_decode=defer_decode,
    )
    if volume is not None:
        prepared.warnings.extend(volume.notes)
    return prepared


def unfinished_uploads(_context: WorkContext, journal_path: Path) -> list[JournalEntry]:
    if not journal_path.exists():
        return []
    with Journal(journal_path) as journal:
        return journal.unfinished()


def forget_upload(_context: WorkContext, journal_path: Path, group_id: str) -> None:
    with Journal(journal_path) as journal:
        journal.forget(group_id)


def resume_lookup(
    _context: WorkContext, api: ApiClient, entry: JournalEntry
) -> tuple[AnnotationOut, GroupOut]:
    group = api.group_with_slices(entry.group_id).group
    return api.get_annotation(entry.annotation_id), group


def demo_task(
    context: WorkContext, api: ApiClient, folder: Path, slices: int, size: int
) -> tuple[DemoData, AnnotationOut]:
    demo = ensure_demo(api, folder, slices=slices, size=size, cancel=context.cancel)
    return demo, api.get_annotation(demo.annotation_id)
