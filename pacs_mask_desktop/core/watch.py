"""``pacs-mask watch``: upload every finished inference result folder exactly once.

An inference server drops ``INBOX/<result>/`` with PNG slices and ``manifest.json``
(``annotation_id``, ``model_name``, ``version``, optional ``confidence``, ``params``, ``series``) and
writes ``.done`` last. Instead of PNG slices the folder may hold one label volume named by the
manifest's ``"masks"`` (``"seg.nii.gz"``, a ``.nii`` or a DICOM SEG ``.dcm``): it is placed exactly on the
annotation's series grid (``core.volume_masks``; refused with the measured difference otherwise) and
uploaded as the same PNG slices. The worker:

- only touches folders that have ``.done`` (a folder still being written is left alone);
- uploads through the engine and its journal, so a restart continues a pending group and never makes a
  second one for the same (annotation, model, version);
- writes ``.uploaded`` (JSON: group id, time) when the group is complete, or ``.failed`` (JSON: every
  problem) for results that can never be uploaded as they are; transient failures are retried on the
  next scan;
- moves uploaded folders to ``--archive`` when given;
- logs one JSON line per event on stdout.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.dicom_series import Series, SeriesError
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.inference import DONE_MARKER, MANIFEST
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.core.series_geometry import GeometryFormatError, fetch_annotation_series
from pacs_mask_desktop.core.upload_run import upload_with_journal
from pacs_mask_desktop.core.volume_masks import (
    NO_GEOMETRY_MESSAGE,
    VolumeMaskError,
    VolumeMasks,
    annotation_geometry,
    masks_from_file,
)

UPLOADED_MARKER = ".uploaded"
FAILED_MARKER = ".failed"
REFUSED_CODES = frozenset(
    {
        "duplicate_group",
        "annotation_not_found",
        "invalid_slices",
        "slice_count_mismatch",
        "entity_too_large",
        "invalid_request",
        "geometry_mismatch",
    }
)
"""Server refusals that name a problem of the result itself: retrying the folder cannot help."""


class ManifestError(ValueError):
    """The manifest is missing or says something the worker cannot use."""


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; raises :class:`ManifestError` naming every problem."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST} must hold a JSON object")
    problems = []
    if not isinstance(data.get("annotation_id"), int) or isinstance(data.get("annotation_id"), bool):
        problems.append("annotation_id must be an integer")
    for key in ("model_name", "version"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"{key} must be a non-empty string")
    confidence = data.get("confidence")
    if confidence is not None and (not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1):
        problems.append("confidence must be a number from 0 to 1")
    if data.get("params") is not None and not isinstance(data["params"], dict):
        problems.append("params must be a JSON object")
    if data.get("series") is not None and not isinstance(data["series"], str):
        problems.append("series must be a path")
    masks = data.get("masks")
    if masks is not None and (
        not isinstance(masks, str)
        or Path(masks).is_absolute()
        or ".." in Path(masks).parts
        or not masks.lower().endswith((".nii", ".nii.gz", ".dcm"))
    ):
        problems.append("masks must name a .nii, .nii.gz or DICOM SEG .dcm file inside the result folder")
    if problems:
        raise ManifestError(f"{MANIFEST}: " + "; ".join(problems))
    return data


class Watcher:
    """Scans an inbox folder and uploads finished results (see the module docstring)."""

    def __init__(
        self,
        inbox: Path,
        *,
        server: str,
        token: str,
        archive: str | Path | None = None,
        workers: int = 8,
        cancel: threading.Event | None = None,
        log: Callable[[str], None] | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.inbox = inbox
        self.policy = policy or RetryPolicy()  # how long an upload waits for an unreachable server
        self.server = server
        self.token = token
        self.archive = Path(archive) if archive else None
        self.workers = workers
        self.cancel = cancel or threading.Event()
        self._log = log or (lambda line: print(line, file=sys.stdout, flush=True))

    def event(self, event: str, **fields: Any) -> None:
        """Log one JSON line."""
        payload = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        self._log(json.dumps(payload, default=str))

    def pending_folders(self) -> list[Path]:
        """Result folders that are finished (``.done``) and not yet handled, oldest first."""
        if not self.inbox.is_dir():
            return []
        found = [
            p
            for p in self.inbox.iterdir()
            if p.is_dir()
            and (p / DONE_MARKER).exists()
            and not (p / UPLOADED_MARKER).exists()
            and not (p / FAILED_MARKER).exists()
        ]
        return sorted(found, key=lambda p: ((p / DONE_MARKER).stat().st_mtime, p.name))

    def scan_once(self) -> list[UploadResult]:
        """Handle every finished folder once."""
        results = []
        for folder in self.pending_folders():
            if self.cancel.is_set():
                break
            outcome = self.process(folder)
            if outcome is not None:
                results.append(outcome)
        return results

    def run(self, interval: float = 2.0) -> None:
        """Scan until cancelled."""
        self.event("watch.started", inbox=str(self.inbox), server=self.server)
        while not self.cancel.is_set():
            self.scan_once()
            self.cancel.wait(interval)
        self.event("watch.stopped", inbox=str(self.inbox))

    def process(self, folder: Path) -> UploadResult:
        """Upload one result folder and mark it; returns how the upload ended."""
        self.event("result.found", folder=folder.name)
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            self._mark_failed(folder, [{"filename": MANIFEST, "code": "bad_manifest", "message": str(exc)}])
            return UploadResult("invalid", None, str(exc))
        series = manifest.get("series")
        if series is not None and not Path(series).is_absolute():
            series = str(folder / series)
        try:  # the annotation's recorded series: masks and the manifest's series are checked against it
            stored, series_uid = self._annotation_series(manifest["annotation_id"])
        except (ApiError, GeometryFormatError) as exc:
            code = getattr(exc, "code", "bad_geometry")
            if code in REFUSED_CODES:
                self._mark_failed(folder, [{"filename": None, "code": code, "message": str(exc)}])
                return UploadResult("invalid", None, str(exc), error_code=code)
            self.event(
                "upload.incomplete", folder=folder.name, group_id=None, message=str(exc), retry="next scan"
            )
            return UploadResult("incomplete", None, str(exc), error_code=code)
        volume = None
        if manifest.get("masks") is not None:
            try:
                volume = self._volume(folder / manifest["masks"], manifest["annotation_id"], series)
            except VolumeMaskError as exc:
                self._mark_failed(
                    folder, [{"filename": manifest["masks"], "code": exc.code, "message": exc.message}]
                )
                return UploadResult("invalid", None, exc.message, error_code=exc.code)
            except SeriesError as exc:
                message = f"cannot open the DICOM series: {exc}"
                self._mark_failed(folder, [{"filename": None, "code": "series_error", "message": message}])
                return UploadResult("invalid", None, message, error_code="series_error")
            except ApiError as exc:  # the geometry was just read: a server hiccup, retried next scan
                self.event(
                    "upload.incomplete",
                    folder=folder.name,
                    group_id=None,
                    message=str(exc),
                    retry="next scan",
                )
                return UploadResult("incomplete", None, str(exc), error_code=exc.code)
        try:
            return self._prepare_and_upload(folder, manifest, series, (stored, series_uid), volume)
        finally:
            if volume is not None:
                volume.cleanup()

    def _volume(self, path: Path, annotation_id: int, series: str | None) -> VolumeMasks:
        """The manifest's NIfTI/SEG ``masks`` file staged as PNG slices on the annotation's series grid."""
        with ApiClient(self.server, self.token, policy=self.policy) as api:
            geometry = annotation_geometry(api, annotation_id, series)
        if geometry is None:
            raise VolumeMaskError("no_geometry", NO_GEOMETRY_MESSAGE)
        return masks_from_file(path, geometry)

    def _prepare_and_upload(
        self,
        folder: Path,
        manifest: dict[str, Any],
        series: str | None,
        recorded: tuple[Series | None, str | None],
        volume: Any,
    ) -> UploadResult:
        """Check the result's PNG slices (or the staged volume's) and upload them; mark the folder.

        ``recorded`` is the annotation's stored series and its SeriesInstanceUID (:meth:`_annotation_series`).
        """
        stored, series_uid = recorded
        prepared = prepare(
            volume.folder if volume is not None else folder,
            annotation_id=manifest["annotation_id"],
            model_name=manifest["model_name"],
            version=manifest["version"],
            source="ai",
            confidence=manifest.get("confidence"),
            params=manifest.get("params"),
            series=series,
            annotation_series=stored,
            annotation_series_uid=series_uid,
            labels=volume.labels if volume is not None else None,
            known_slices=volume.known_slices if volume is not None else None,
        )
        if not prepared.ok:
            problems = [
                {"filename": p.filename, "code": p.code, "message": p.message} for p in prepared.problems
            ]
            self._mark_failed(folder, problems)
            return UploadResult("invalid", None, f"{len(problems)} problem(s); see {FAILED_MARKER}")
        result = self._upload(folder, prepared.plan)
        if result.ok:
            (folder / UPLOADED_MARKER).write_text(
                json.dumps({"group_id": result.group_id, "at": datetime.now(UTC).isoformat()}),
                encoding="utf-8",
            )
            self.event(
                "upload.complete",
                folder=folder.name,
                group_id=result.group_id,
                sent=result.uploaded,
                skipped=result.skipped,
                seconds=round(result.seconds, 2),
            )
            self._archive(folder)
        elif result.error_code in REFUSED_CODES:
            self._mark_failed(
                folder, [{"filename": None, "code": result.error_code, "message": result.message}]
            )
        else:
            self.event(
                "upload.incomplete",
                folder=folder.name,
                group_id=result.group_id,
                message=result.message,
                failed=result.failed,
                retry="next scan",
            )
        return result

    def _upload(self, folder: Path, plan: Any) -> UploadResult:
        def on_event(event: SliceEvent | GroupEvent) -> None:
            if isinstance(event, GroupEvent) and event.kind in ("opened", "resumed"):
                self.event(f"group.{event.kind}", folder=folder.name, group_id=event.group_id)
            elif isinstance(event, SliceEvent) and event.state in (SliceState.FAILED, SliceState.RETRYING):
                self.event(
                    f"slice.{event.state.value}",
                    folder=folder.name,
                    filename=event.filename,
                    attempt=event.attempt,
                    error=event.error,
                )

        try:
            with ApiClient(self.server, self.token, policy=self.policy) as api:
                self.event("upload.started", folder=folder.name, slices=len(plan.slices))
                return upload_with_journal(
                    api,
                    plan,
                    source_path=str(folder),
                    workers=self.workers,
                    on_event=on_event,
                    cancel=self.cancel,
                )
        except ApiError as exc:
            return UploadResult("incomplete", None, exc.message, error_code=exc.code)

    def _annotation_series(self, annotation_id: int) -> tuple[Series | None, str | None]:
        """The annotation's series as the server recorded it (``None`` for an older annotation), and for
        such an older one its SeriesInstanceUID, which the manifest's series folder must still have."""
        with ApiClient(self.server, self.token, policy=self.policy) as api:
            stored = fetch_annotation_series(api, annotation_id)
            if stored is not None:
                return stored, stored.series_instance_uid
            return None, api.get_annotation(annotation_id).series_instance_uid

    def _mark_failed(self, folder: Path, problems: list[dict[str, Any]]) -> None:
        (folder / FAILED_MARKER).write_text(json.dumps({"problems": problems}, indent=2), encoding="utf-8")
        self.event("result.invalid", folder=folder.name, problems=problems)

    def _archive(self, folder: Path) -> None:
        if self.archive is None:
            return
        self.archive.mkdir(parents=True, exist_ok=True)
        target = self.archive / folder.name
        if target.exists():
            target = self.archive / f"{folder.name}-{int(time.time())}"
        shutil.move(str(folder), target)
        self.event("result.archived", folder=folder.name, to=str(target))
