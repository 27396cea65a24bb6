"""``pacs-mask``: the headless uploader for scripts and AI inference machines.

Exit codes a script can trust: 0 everything done; 1 the upload ended incomplete (some slices failed,
the group stays pending and a re-run resumes); 2 bad input (nothing was sent), including an annotation
or group that does not exist, in every command (and, for ``compare`` and ``review``, two groups that cannot
be compared or findings that do not fit the group); 3 the server refused or could not be reached (an upload
gives up after ``--give-up-after`` seconds without an answer and prints the command that resumes it);
4 the PACS (DICOMweb) is down, too slow, refused the credentials or answered something malformed
(``pacs …``, ``annotations --from-pacs``, ``send``); 130 cancelled (Ctrl+C; a re-run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pacs_mask_desktop import __version__
from pacs_mask_desktop.core import lean_imports  # noqa: F401 - before httpx (core.api_client) loads
from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.paths import NoToken, resolve_server
from pacs_mask_desktop.core.plan import PreparedUpload, prepare
from pacs_mask_desktop.core.progress import ProgressCounter, human_bytes
from pacs_mask_desktop.core.retry import DEFAULT_GIVE_UP_AFTER, RetryPolicy
from server.contract import messages
from server.contract.errors import PACS_PREFIX, ErrorCode

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table as RichTable

# Start-up: each command imports what it needs, when it needs it. rich loads only when something is
# printed for people; the upload engine (pycurl, tenacity) when an upload starts; pydicom only for a
# DICOM series folder, stored series geometry or a NIfTI/SEG volume; httpx without its own CLI
# (core.lean_imports). Measured here (2-CPU machine under load, load average ~8, median of 5 runs):
#
# | `pacs-mask upload --help`          | before | after |
# |------------------------------------|--------|-------|
# | process CPU seconds (user + sys)   | 1.46   | 0.65  |
# | modules loaded                     | 642    | 338   |
# | pydicom / rich / httpx CLI loaded  | yes    | no    |
#
# -X importtime before (cumulative ms, one run under load): core.plan 2697 (pydicom 1853, numpy 593),
# core.api_client 850 (httpx 642, of it httpx._main with rich/click/pygments ~40 %), rich.console 360,
# core.upload 152. numpy and PIL still load with core.masks (the header checks live there); moving the
# header and filename rules to a numpy-free module would take them off the path to the first PUT.


def Table(*args: Any, **kwargs: Any) -> RichTable:  # stands in for rich's class
    """A ``rich.table.Table``, imported on first use: most runs print no table (``--json``, pipes)."""
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


LOG_WIDTH = 160
EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT, EXIT_SERVER, EXIT_CANCELLED = 0, 1, 2, 3, 130
EXIT_PACS = 4
"""The PACS (DICOMweb) is down, too slow, refused the credentials or answered something malformed."""
NOT_FOUND_CODES = frozenset({ErrorCode.ANNOTATION_NOT_FOUND, ErrorCode.GROUP_NOT_FOUND})
"""Server answers meaning "the id you gave does not exist": bad input (exit 2) in every command."""


class CliError(Exception):
    """A failure to report in one line with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Output:
    """Prints for people (rich, on stderr for progress) or one JSON document for machines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    @cached_property
    def out(self) -> Console:
        """stdout for people (rich, imported when first needed: ``--json`` runs never load it)."""
        return self._console(stderr=False)

    @cached_property
    def err(self) -> Console:
        """stderr for people: progress, notes, problems."""
        return self._console(stderr=True)

    @staticmethod
    def _console(*, stderr: bool) -> Console:
        from rich.console import Console

        console = Console(stderr=stderr, highlight=False, soft_wrap=not stderr)
        if not console.is_terminal:
            console.width = LOG_WIDTH  # tables in logs and pipes keep their columns whole
        return console

    def data(self, payload: Any, human: Any = None) -> None:
        """Print ``payload`` as JSON, or ``human`` (a rich renderable or text) for people."""
        if self.as_json:
            print(json.dumps(msgspec.to_builtins(payload, enc_hook=str), indent=2, default=str))
        elif human is not None:
            self.out.print(human)

    def note(self, text: str) -> None:
        """A line for people only (stderr, so stdout stays clean for pipes)."""
        if not self.as_json:
            self.err.print(text)


# --- helpers shared by commands ------------------------------------------------------------------------


def _policy(args: argparse.Namespace) -> RetryPolicy:
    """The retry budget from ``--give-up-after`` (the one setting shared with the worker and the app)."""
    return RetryPolicy(args.give_up_after) if args.give_up_after is not None else RetryPolicy()


def _client(args: argparse.Namespace) -> ApiClient:
    try:
        target = resolve_server(args.server, args.token)
    except NoToken as exc:
        raise CliError(str(exc), EXIT_SERVER) from None
    return ApiClient(target.url, target.token, policy=_policy(args))


def _require_annotation(api: ApiClient, annotation_id: int) -> messages.AnnotationOut:
    """The annotation's row; stop with exit 2 before any work when the annotation does not exist."""
    try:
        return api.get_annotation(annotation_id)
    except ApiError as exc:
        if exc.status == 404:
            message = f"Annotation {annotation_id} does not exist on {api.base_url}."
            raise CliError(message, EXIT_BAD_INPUT) from None
        raise


def resume_command(argv: Sequence[str]) -> str:
    """The command line that resumes this run, for people to copy; a ``--token`` value is shown as ***."""
    shown: list[str] = []
    hide_next = False
    for item in argv:
        if hide_next:
            shown.append("***")
            hide_next = False
        elif item == "--token":
            shown.append(item)
            hide_next = True
        elif item.startswith("--token="):
            shown.append("--token=***")
        else:
            shown.append(item)
    return "pacs-mask " + shlex.join(shown)


def _problems_report(prepared: PreparedUpload, out: Output) -> None:
    if out.as_json:
        out.data(
            {
                "status": "invalid",
                "problems": [
                    {"filename": p.filename, "code": p.code, "message": p.message} for p in prepared.problems
                ],
            }
        )
        return
    table = Table(title=f"{len(prepared.problems)} problem(s) — nothing was sent", title_justify="left")
    table.add_column("file")
    table.add_column("problem")
    table.add_column("details")
    for p in prepared.problems:
        table.add_row(p.filename or "—", p.code, p.message)
    out.err.print(table)


def run_upload(
    api: ApiClient,
    prepared: PreparedUpload,
    out: Output,
    *,
    workers: int,
    source_path: str | None,
    cancel: threading.Event,
) -> UploadResult:
    """Upload a prepared plan with a progress bar (or silently with ``--json``)."""
    from pacs_mask_desktop.core.upload_run import upload_with_journal

    assert prepared.plan is not None
    plan = prepared.plan
    counter = ProgressCounter()
    # rich's progress bar (~25 ms of imports) only when a person watches: not with --json, not in a pipe
    progress = _progress_bar(out) if not out.as_json and out.err.is_terminal else None
    task: TaskID | None = (
        progress.add_task("upload", total=len(plan.slices), rate=0.0, bytes="", extra="")
        if progress
        else None
    )
    total = human_bytes(plan.total_bytes)  # once: a sum over every slice, not per event
    failures: list[str] = []

    def on_event(event: SliceEvent | GroupEvent) -> None:
        counter.feed(event)
        if isinstance(event, GroupEvent):
            if event.kind in ("opened", "resumed", "completing"):
                out.note(f"{event.message}")
            return
        if event.state is SliceState.FAILED:
            failures.append(event.filename)
        if progress is None or task is None or event.state in (SliceState.QUEUED, SliceState.UPLOADING):
            return  # no bar (--json, a pipe), or nothing on it changes: 3 events a slice at 10,000 slices
        extra = []
        if counter.retries:
            extra.append(f"{counter.retries} retries")
        if counter.failed:
            extra.append(f"[red]{counter.failed} failed[/red]")
        progress.update(
            task,
            completed=counter.finished,
            rate=counter.rate(),
            bytes=f"{human_bytes(counter.bytes_done)}/{total}",
            extra=" ".join(extra),
        )

    with progress or nullcontext():  # the summary (sent, already there, failed, ...) is printed by _report
        return upload_with_journal(
            api, plan, source_path=source_path, workers=workers, on_event=on_event, cancel=cancel
        )


def _progress_bar(out: Output) -> Progress:
    """The upload's progress bar on stderr: slices, rate, bytes, retries and failures, time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(complete_style="green", finished_style="green"),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>5.0f} slices/s"),
        TextColumn("{task.fields[bytes]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out.err,
        transient=False,
    )


def _report(result: UploadResult, out: Output, argv: Sequence[str] | None = None) -> int:
    resume = None
    resumable = result.status == "cancelled" or (
        result.status == "incomplete" and (result.group_id is not None or result.error_code == "unreachable")
    )
    if argv is not None and resumable:
        resume = resume_command(argv)  # the journal keeps what landed: the same command sends the rest
    if out.as_json:
        out.data({**result.as_dict(), "resume_command": resume})
    else:
        rate = result.uploaded / result.seconds if result.seconds else 0.0
        colour = {"complete": "green", "cancelled": "yellow"}.get(result.status, "red")
        out.err.print(f"[{colour}]{result.status}[/{colour}]: {result.message}")
        out.err.print(
            f"sent {result.uploaded}, already there {result.skipped}, failed {len(result.failed)}; "
            f"{human_bytes(result.bytes_sent)} in {result.seconds:.1f} s ({rate:.0f} slices/s)"
        )
        if result.failed:
            table = Table(title="failed slices", title_justify="left")
            table.add_column("file")
            table.add_column("reason")
            for name, reason in sorted(result.failed.items()):
                table.add_row(name, reason)
            out.err.print(table)
        if result.problems:
            table = Table(
                title=f"{len(result.problems)} problem(s) found while uploading — nothing was completed",
                title_justify="left",
            )
            for column in ("file", "problem", "details"):
                table.add_column(column)
            for p in result.problems:
                table.add_row(p["filename"] or "—", p["code"], p["message"])
            out.err.print(table)
        if result.not_sent:
            out.err.print(f"not sent: {result.not_sent} slice(s) were not tried after giving up")
        if resume is not None:
            hidden = " (with your token where *** stands)" if "***" in resume else ""
            out.err.print(f"To resume, run the same command again{hidden}:")
            out.err.print(resume, markup=False, highlight=False, soft_wrap=True)
        if result.group_id:
            out.out.print(result.group_id)
    if result.status == "incomplete" and result.error_code in (*NOT_FOUND_CODES, "invalid_masks"):
        return EXIT_BAD_INPUT
    if result.status == "incomplete" and result.error_code is not None:
        return EXIT_SERVER  # refused as a whole (or unreachable): not something a plain re-run fixes
    return {"complete": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(result.status, EXIT_INCOMPLETE)


def _install_cancel(cancel: threading.Event, out: Output) -> None:
    def handler(_signum: int, _frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        out.note("cancelling… (slices already sent are kept; run again to resume)")
        cancel.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


# --- commands ------------------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace, out: Output) -> int:
    """Check the masks, then upload them as one group."""
    params = _json_arg(args.params, "--params")
    api = _client(args)
    with api:
        args.annotation_series_uid = _require_annotation(api, args.annotation).series_instance_uid
        if args.series == PACS_SERIES:
            series = stored = _stored_series(api, args.annotation)
        else:  # the annotation's recorded series checks the masks and --series FOLDER (None if unknown)
            series, stored = args.series, _annotation_series(api, args.annotation)
        out.note(f"checking {', '.join(str(p) for p in args.masks)} …")
        volume = _volume_masks(api, args, series)
        if isinstance(volume, PreparedUpload):
            _problems_report(volume, out)
            return EXIT_BAD_INPUT
        try:
            return _upload_checked(api, args, out, params, series, stored, volume)
        finally:
            if volume is not None:
                volume.cleanup()


def _volume_masks(api: ApiClient, args: argparse.Namespace, series: Any) -> Any:
    """For one ``.nii``/``.nii.gz``/SEG ``.dcm`` file: its slices staged as PNGs (``VolumeMasks``), or the
    refusal as a ``PreparedUpload`` of problems; ``None`` for PNG files and folders."""
    if len(args.masks) != 1 or Path(args.masks[0]).is_dir() or str(args.masks[0]).lower().endswith(".png"):
        return None  # PNG slices: no need to load the volume readers (numpy, pydicom, nibabel)
    from pacs_mask_desktop.core.dicom_series import SeriesError
    from pacs_mask_desktop.core.plan import Problem
    from pacs_mask_desktop.core.volume_masks import (
        NO_GEOMETRY_MESSAGE,
        VolumeMaskError,
        annotation_geometry,
        is_volume_file,
        masks_from_file,
    )

    if len(args.masks) != 1 or not is_volume_file(args.masks[0]):
        return None
    name = Path(args.masks[0]).name
    try:
        geometry = annotation_geometry(api, args.annotation, series)
        if geometry is None:
            raise VolumeMaskError("no_geometry", NO_GEOMETRY_MESSAGE)
        return masks_from_file(args.masks[0], geometry)
    except VolumeMaskError as exc:
        return PreparedUpload(None, [Problem(name, exc.code, exc.message)], [])
    except SeriesError as exc:
        return PreparedUpload(
            None, [Problem(None, "series_error", f"cannot open the DICOM series: {exc}")], []
        )


def _upload_checked(
    api: ApiClient, args: argparse.Namespace, out: Output, params: Any, series: Any, stored: Any, volume: Any
) -> int:
    """``prepare()`` the masks (PNG files/folders, or a staged volume's slices), then upload them."""
    prepared = prepare(
        [volume.folder] if volume is not None else args.masks,
        annotation_id=args.annotation,
        model_name=args.model,
        version=args.version,
        source=args.source,
        confidence=args.confidence,
        params=params,
        series=series,
        match=args.match,
        require_all_slices=args.require_all_slices,
        annotation_series=stored,
        annotation_series_uid=args.annotation_series_uid,
        labels=volume.labels if volume is not None else None,
        known_slices=volume.known_slices if volume is not None else None,
        defer_decode=True,  # headers now, pixels while the PUTs run (core.plan: checking while sending)
    )
    if volume is not None:
        for note in volume.notes:
            out.note(note)
    if not prepared.ok:
        _problems_report(prepared, out)
        return EXIT_BAD_INPUT
    for warning in prepared.warnings:
        out.note(f"[yellow]note:[/yellow] {warning}")
    cancel = threading.Event()
    _install_cancel(cancel, out)
    result = run_upload(
        api, prepared, out, workers=args.workers, source_path=str(args.masks[0]), cancel=cancel
    )
    return _report(result, out, args.argv)


UPLOAD_DESCRIPTION = """\
Check mask slices, then upload them as one group. Nothing is sent while any problem is left.

Slice order: the number in a mask's file name (mask_0000.png -> 0) is the slice index, and slice
index 0 is the first position along the slice normal (row cosines x column cosines of
ImageOrientationPatient), ascending - not InstanceNumber, not file order. For a head-first axial CT
the normal points to the head (+z, LPS "S"):

      head  ^   slice n-1   highest z
            |   ...
            |   slice 1
      feet  |   slice 0     lowest z: the feet-most slice is mask_0000.png

When the server knows the annotation's series (annotations --create / --from-pacs), the masks are
checked against it before anything is sent: the same series (SeriesInstanceUID) as --series, the
size (Rows x Columns), the index range and the SOP Instance UIDs; exit 2 names every slice that
does not fit.

A NIfTI (.nii, .nii.gz) or DICOM SEG (.dcm) label volume is accepted instead of PNG slices. It is
placed on the annotation's series grid (the stored geometry, else the --series folder) by exact
transposes and flips only, never resampled: another direction, shape, spacing or origin (tolerance
1e-3 in direction cosines, 0.01 mm or 1 % of the smallest voxel spacing in position), a SEG of another
series or overlapping segments is refused with the measured difference (exit 2). Label names come
from a sidecar next to a NIfTI (seg.json: {"1": "liver"}) or from the SEG's segments.
"""

PACS_SERIES = "pacs"
"""``upload --series pacs``: check the masks against the annotation's series as the server stored it."""


def _stored_series(api: ApiClient, annotation_id: int) -> Any:
    """The annotation's series geometry from the server, as a headers-only Series for :func:`prepare`."""
    from pacs_mask_desktop.core.series_geometry import GeometryFormatError, series_from_geometry

    try:
        geometry = api.annotation_series(annotation_id)
    except ApiError as exc:
        if exc.code == ErrorCode.SERIES_GEOMETRY_UNKNOWN:
            raise CliError(
                f"Annotation {annotation_id} has no stored series geometry, so --series pacs cannot check the "
                "masks; create the annotation with --from-pacs, or pass the DICOM series folder.",
                EXIT_BAD_INPUT,
            ) from None
        raise
    try:
        return series_from_geometry(geometry)
    except GeometryFormatError as exc:
        raise CliError(str(exc), EXIT_SERVER) from None


def _annotation_series(api: ApiClient, annotation_id: int) -> Any:
    """The annotation's recorded series (headers only), or ``None`` for an older annotation without one.

    As :func:`~pacs_mask_desktop.core.series_geometry.fetch_annotation_series`, but the series readers
    (numpy, pydicom) are imported only when the server has a geometry to read.
    """
    geometry = api.stored_geometry(annotation_id)
    if geometry is None:
        return None
    from pacs_mask_desktop.core.series_geometry import GeometryFormatError, series_from_geometry

    try:
        return series_from_geometry(geometry)
    except GeometryFormatError as exc:
        raise CliError(str(exc), EXIT_SERVER) from None


def _pacs_client(api: ApiClient | None) -> Any:
    """A PACS client from ``PACS_MASK_DICOMWEB_*``, else the URL the server advertises (``/api/config``)."""
    from pacs_mask_desktop.core.pacs import PacsClient

    config = None
    if not os.environ.get("PACS_MASK_DICOMWEB_URL") and api is not None:
        config = api.server_config()
    return PacsClient.from_env(config)


def cmd_pacs(args: argparse.Namespace, out: Output) -> int:
    """Search the PACS (QIDO-RS): ``pacs studies`` by patient/accession, ``pacs series STUDY_UID``."""
    from pacs_mask_desktop.core.pacs import PacsError

    api = None if os.environ.get("PACS_MASK_DICOMWEB_URL") else _client(args)
    try:
        with _pacs_client(api) as pacs:
            if args.pacs_command == "studies":
                studies = pacs.search_studies(
                    patient_id=args.patient_id,
                    patient_name=args.patient_name,
                    accession_number=args.accession,
                    date_from=args.date_from,
                    date_to=args.date_to,
                    modality=args.modality,
                )
                noun = "study" if len(studies) == 1 else "studies"
                table = Table(title=f"{len(studies)} {noun} on {pacs.url}", title_justify="left")
                for column in (
                    "study uid",
                    "patient id",
                    "patient",
                    "date",
                    "accession",
                    "modalities",
                    "series",
                    "images",
                    "description",
                ):
                    table.add_column(column, no_wrap=column.endswith("uid"))  # UIDs are copied whole
                for st in studies:
                    table.add_row(
                        st.study_instance_uid,
                        st.patient_id or "",
                        st.patient_name or "",
                        st.study_date or "",
                        st.accession_number or "",
                        "/".join(st.modalities),
                        _count(st.series_count),
                        _count(st.instance_count),
                        st.description or "",
                    )
                out.data({"items": [st.as_dict() for st in studies]}, table)
            else:
                series = pacs.search_series(args.study)
                table = Table(title=f"{len(series)} series of study {args.study}", title_justify="left")
                for column in ("series uid", "number", "modality", "images", "description"):
                    table.add_column(column, no_wrap=column.endswith("uid"))
                for se in series:
                    table.add_row(
                        se.series_instance_uid,
                        _count(se.series_number),
                        se.modality or "",
                        _count(se.instance_count),
                        se.description or "",
                    )
                out.data({"items": [se.as_dict() for se in series]}, table)
    except PacsError as exc:
        raise CliError(exc.message, EXIT_BAD_INPUT if exc.kind == "not_configured" else EXIT_PACS) from None
    finally:
        if api is not None:
            api.close()
    return EXIT_OK


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _create_from_pacs(api: ApiClient, args: argparse.Namespace, out: Output) -> int:
    """``annotations --from-pacs SERIES_UID``: the server reads the series from its PACS; id on stdout."""
    try:
        row = api.create_annotation_from_pacs(
            args.from_pacs, study_instance_uid=args.study, description=args.description
        )
    except ApiError as exc:
        if exc.code == ErrorCode.PACS_SERIES_NOT_FOUND or exc.status == 422:
            raise CliError(f"Cannot create an annotation: {exc.message}", EXIT_BAD_INPUT) from None
        if exc.code.startswith(PACS_PREFIX):
            raise CliError(f"Cannot create an annotation: {exc.message}", EXIT_PACS) from None
        raise
    out.note(
        f"created annotation {row.id} for series {row.series_instance_uid} "
        f"({row.slice_count} slices of {row.columns}x{row.rows}, from the PACS)"
    )
    out.data(row, str(row.id))  # stdout: the id alone, for scripts (ID=$(pacs-mask annotations …))
    return EXIT_OK


def cmd_annotations(args: argparse.Namespace, out: Output) -> int:
    """List or search annotations; ``--create`` registers one for a series folder, ``--from-pacs`` for a
    PACS series."""
    with _client(args) as api:
        if args.from_pacs:
            return _create_from_pacs(api, args, out)
        if args.create:
            from pacs_mask_desktop.core.dicom_series import SeriesError, load_series

            try:
                series = load_series(Path(args.create))
            except SeriesError as exc:
                raise CliError(f"Cannot create an annotation: {exc}", EXIT_BAD_INPUT) from None
            from pacs_mask_desktop.core.series_geometry import geometry_from_series

            row = api.create_annotation(
                series.study_instance_uid,
                series.series_instance_uid,
                series.patient_id,
                args.description or series.description,
                series=geometry_from_series(series),
            )
            out.note(
                f"created annotation {row.id} for series {row.series_instance_uid} "
                f"({row.slice_count} slices of {row.columns}x{row.rows}, from the folder)"
            )
            out.data(row, str(row.id))  # stdout: the id alone, for scripts (ID=$(pacs-mask annotations …))
            return EXIT_OK
        items = api.list_annotations(args.search)
    table = Table()
    for column in ("id", "patient", "description", "series", "groups", "created"):
        table.add_column(column)
    for a in items:
        table.add_row(
            str(a.id),
            a.patient_id or "",
            a.description or "",
            a.series_instance_uid,
            str(a.group_count),
            a.created_at.isoformat()[:19],
        )
    out.data({"items": items}, table)
    return EXIT_OK


def cmd_groups(args: argparse.Namespace, out: Output) -> int:
    """The mask groups of an annotation with their inference metadata."""
    with _client(args) as api:
        items = api.list_groups(args.annotation)
        opened = {g.id: g for g in api.groups_with_volumes(items)}  # their volumes, computed once
        items = [opened.get(g.id, g) for g in items]
    table = Table(title=f"mask groups of annotation {args.annotation}", title_justify="left")
    for column in (
        "id",
        "model",
        "version",
        "source",
        "status",
        "slices",
        "confidence",
        "review",
        "volume (mL)",
        "extent",
        "created",
    ):
        # id, model and version stay whole (scripts and people copy them); the rest wrap when narrow.
        table.add_column(
            column,
            no_wrap=column in ("id", "model", "version"),
            min_width={"id": 36, "created": 19}.get(column),
        )
    for g in items:
        volumes, extents = _volume_cells(g.volumes)
        table.add_row(
            g.id,
            g.model_name,
            g.version,
            g.source,
            g.status,
            str(g.slice_count),
            "" if g.confidence is None else f"{g.confidence:.3f}",
            g.review_status or "",
            volumes,
            extents,
            f"{g.created_by} {g.created_at.isoformat()[:19]}",
        )
    out.data({"items": items}, table)
    return EXIT_OK


def cmd_slices(args: argparse.Namespace, out: Output) -> int:
    """The slices of one group."""
    with _client(args) as api:
        found = api.group_with_slices(args.group)
    table = Table(title=f"group {args.group} ({found.group.status})", title_justify="left")
    for column in ("index", "file", "size", "w×h", "labels", "md5"):
        table.add_column(column)
    for m in found.items:
        table.add_row(
            str(m.slice_index),
            m.filename,
            human_bytes(m.size_bytes),
            f"{m.width}×{m.height}",
            m.label or "",
            m.checksum,
        )
    out.data(found, table)
    return EXIT_OK


def cmd_download(args: argparse.Namespace, out: Output) -> int:
    """Download every slice of a group through the view route, verifying each checksum."""
    import hashlib

    target = Path(args.folder)
    if target.exists() and not target.is_dir():
        raise CliError(f"{target} exists and is not a folder.", EXIT_BAD_INPUT)
    bad: list[str] = []
    with _client(args) as api:
        found = api.group_with_slices(args.group)
        items, same = _download_plan(found.items, target, overwrite=args.overwrite)
        target.mkdir(parents=True, exist_ok=True)
        from rich.progress import Progress

        with Progress(console=out.err, disable=out.as_json or not out.err.is_terminal) as progress:
            task = progress.add_task("download", total=len(items))
            for m in items:
                data = api.view(args.group, filename=m.filename)
                if hashlib.md5(data, usedforsecurity=False).hexdigest() != m.checksum:
                    bad.append(m.filename)
                    continue
                tmp = target / f".{m.filename}.part"
                tmp.write_bytes(data)
                tmp.replace(target / m.filename)
                progress.advance(task)
    out.data(
        {
            "group_id": args.group,
            "folder": str(target),
            "downloaded": len(items) - len(bad),
            "already_there": len(same),
            "checksum_mismatch": bad,
        },
        f"downloaded {len(items) - len(bad)} slice(s) to {target}"
        + (f"; {len(same)} identical file(s) were already there" if same else ""),
    )
    if bad:
        out.err.print(
            f"[red]{len(bad)} slice(s) did not match their checksum and were not written:[/red] {bad}"
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def _md5_file(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _download_plan(
    items: list[messages.MaskOut], target: Path, *, overwrite: bool
) -> tuple[list[messages.MaskOut], list[str]]:
    """The slices to fetch, and the files already in ``target`` with the same bytes (left as they are).

    A different file of the same name is never replaced silently: without ``overwrite`` the download
    stops before fetching anything (exit 2) and names them.
    """
    fetch: list[messages.MaskOut] = []
    same: list[str] = []
    differ: list[str] = []
    for m in items:
        path = target / m.filename
        if not path.exists():
            fetch.append(m)
        elif path.is_file() and _md5_file(path) == m.checksum:
            same.append(m.filename)
        elif overwrite and path.is_file():
            fetch.append(m)
        else:
            differ.append(m.filename)
    if differ:
        names = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise CliError(
            f"{len(differ)} file(s) in {target} differ from the group's slices of the same name ({names}); "
            "nothing was downloaded. Choose an empty folder, or pass --overwrite to replace them.",
            EXIT_BAD_INPUT,
        )
    return fetch, same


def cmd_delete(args: argparse.Namespace, out: Output) -> int:
    """Delete a group (objects, then rows). Asks first unless ``--yes``."""
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("Refusing to delete without --yes when not run interactively.", EXIT_BAD_INPUT)
        answer = input(f"Delete mask group {args.group} and all its slices? Type 'delete' to confirm: ")
        if answer.strip() != "delete":
            out.note("not deleted")
            return EXIT_CANCELLED
    with _client(args) as api:
        result = api.delete_group(args.group)
    out.data(
        result,
        f"deleted group {result.id}: {result.deleted_objects} object(s), {result.deleted_slices} row(s)",
    )
    return EXIT_OK


def _pacs_refusal(exc: ApiError) -> CliError | None:
    """A PACS failure the server reports (``pacs_*`` codes) as exit 4, else ``None``."""
    if exc.code.startswith(PACS_PREFIX):
        return CliError(exc.message, EXIT_PACS)
    return None


def cmd_export_seg(args: argparse.Namespace, out: Output) -> int:
    """Build (once, on the server) the group's DICOM SEG and save it to ``OUT.dcm``."""
    target = Path(args.out)
    if target.is_dir() or (target.exists() and not args.overwrite):
        raise CliError(f"{target} exists; pass --overwrite to replace it.", EXIT_BAD_INPUT)
    with _client(args) as api:
        seg = api.build_seg(args.group)
        api.download_seg(args.group, target)
    out.data(
        {**msgspec.structs.asdict(seg), "path": str(target)},
        f"DICOM SEG of group {args.group}: {seg.segments} segment(s), {seg.frames} frame(s), "
        f"{human_bytes(seg.size)} -> {target} (SOP Instance UID {seg.sop_instance_uid})",
    )
    return EXIT_OK


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    """Store the group's DICOM SEG in the server's PACS (STOW-RS); a group already sent is not re-sent."""
    with _client(args) as api:
        try:
            sent = api.send_seg(args.group)
        except ApiError as exc:
            raise _pacs_refusal(exc) or exc from None
    out.data(
        sent,
        f"sent DICOM SEG {sent.sop_instance_uid} to {sent.pacs_url} at {msgspec.to_builtins(sent.sent_at)}",
    )
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    """Upload every finished inference result folder dropped into a directory, exactly once."""
    from pacs_mask_desktop.core.watch import Watcher

    target = resolve_server(args.server, args.token)
    cancel = threading.Event()
    _install_cancel(cancel, out)
    watcher = Watcher(
        Path(args.folder),
        server=target.url,
        token=target.token,
        archive=args.archive,
        workers=args.workers,
        cancel=cancel,
        policy=_policy(args),
    )
    if args.once:
        watcher.scan_once()
    else:
        watcher.run(interval=args.interval)
    return EXIT_OK


def cmd_infer_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the built-in demo model on a series and upload its masks through the worker path."""
    from pacs_mask_desktop.core.dicom_series import SeriesError
    from pacs_mask_desktop.core.inference import run_demo_inference

    target = resolve_server(args.server, args.token)
    with _client(args) as api:
        _require_annotation(api, args.annotation)  # before the model runs, not after
    try:
        result = run_demo_inference(
            Path(args.series),
            annotation_id=args.annotation,
            server=target.url,
            token=target.token,
            version=args.version,
            workers=args.workers,
            out_folder=Path(args.keep) if args.keep else None,
            on_note=out.note,
            policy=_policy(args),
        )
    except SeriesError as exc:
        raise CliError(f"Cannot read the series: {exc}", EXIT_BAD_INPUT) from None
    return _report(result, out, args.argv)


def _volume_cells(volumes: dict[str, messages.LabelVolume] | None) -> tuple[str, str]:
    """Per label, one line each: the volume in mL (or voxels without geometry) and the slice extent."""
    if not volumes:
        return ("" if volumes is None else "empty"), ""
    amounts, extents = [], []
    for label, v in sorted(volumes.items(), key=lambda item: int(item[0])):
        amount = f"{v.volume_ml:.2f} mL" if v.volume_ml is not None else f"{v.voxels} voxels"
        amounts.append(f"{label}: {amount}")
        extents.append(f"{label}: {v.first_slice}-{v.last_slice}")
    return "\n".join(amounts), "\n".join(extents)


WORST_SLICES = 10
"""Slices listed under "worst slices" by ``pacs-mask compare``."""


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def cmd_compare(args: argparse.Namespace, out: Output) -> int:
    """Two complete groups of one annotation compared: Dice, voxels and mL per label, totals, worst slices."""
    with _client(args) as api:
        try:
            result = api.compare(args.a, args.b)
        except ApiError as exc:
            if exc.code == ErrorCode.NOT_COMPARABLE:
                raise CliError(exc.message, EXIT_BAD_INPUT) from None
            raise
    if out.as_json:
        out.data(result)
        return EXIT_OK
    table = Table(title=f"{args.a} (a) vs {args.b} (b)", title_justify="left")
    for column in ("label", "dice", "voxels a", "voxels b", "mL a", "mL b", "mL b-a"):
        table.add_column(column, justify="left" if column == "label" else "right")
    rows = sorted(result.labels.items(), key=lambda item: int(item[0]))
    for name, row in [*rows, ("total", result.totals)]:
        table.add_row(
            name,
            _number(row.dice, 3),
            str(row.voxels_a),
            str(row.voxels_b),
            _number(row.volume_a_ml, 2),
            _number(row.volume_b_ml, 2),
            _number(row.volume_diff_ml, 2),
            end_section=name == rows[-1][0] if rows else False,
        )
    out.data(result, table)
    worst = sorted(
        (s for s in result.slices if s.dice is not None and s.dice < 1.0),
        key=lambda s: (s.dice, s.slice_index),
    )[:WORST_SLICES]
    if worst:
        slices = Table(title=f"worst slices (of {len(result.slices)} with a mask)", title_justify="left")
        for column in ("slice", "dice", "labels (dice, voxels a/b)"):
            slices.add_column(column)
        for s in worst:
            detail = ", ".join(
                f"{label}: {_number(v.dice, 3) or '-'} ({v.voxels_a}/{v.voxels_b})"
                for label, v in sorted(s.labels.items(), key=lambda item: int(item[0]))
            )
            slices.add_row(str(s.slice_index), _number(s.dice, 3), detail)
        out.data(result, slices)
    elif result.slices:
        out.data(result, "Every slice with a mask agrees exactly (Dice 1).")
    return EXIT_OK


def _finding(value: str) -> messages.FindingIn:
    """``SLICE:LABEL:COMMENT`` (LABEL empty or ``-``: the whole slice; the comment may hold colons)."""
    parts = value.split(":", 2)
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"{value!r} is not SLICE:LABEL:COMMENT (e.g. 37:2:edge missed)")
    slice_text, label_text = parts[0].strip(), parts[1].strip()
    if not slice_text.isdigit() or not (label_text in ("", "-") or label_text.isdigit()):
        raise argparse.ArgumentTypeError(
            f"{value!r}: SLICE must be a slice index and LABEL a label value 1..255, or empty for the whole slice"
        )
    label = None if label_text in ("", "-") else int(label_text)
    return messages.FindingIn(
        slice_index=int(slice_text), label=label, comment=parts[2] if len(parts) > 2 else ""
    )


def cmd_review(args: argparse.Namespace, out: Output) -> int:
    """Approve or reject a complete group, with per-slice findings (reviewer; four eyes on approvals)."""
    decision: messages.Decision = "approved" if args.approve else "rejected"
    with _client(args) as api:
        try:
            group = api.review(
                args.group,
                decision,
                args.comment or "",
                findings=args.finding or None,
                override_four_eyes=args.override_four_eyes,
            )
        except ApiError as exc:
            if exc.status == 422:
                raise CliError(f"The review was not recorded: {exc.message}", EXIT_BAD_INPUT) from None
            raise
    findings = len(group.findings)
    out.data(
        group,
        f"{group.id}: {decision} by {group.reviewed_by}"
        + (f" with {findings} finding(s)" if findings else "")
        + f" (review {len(group.reviews)} of this group)",
    )
    return EXIT_OK


def _json_arg(value: str | None, flag: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} must be a JSON object: {exc}", EXIT_BAD_INPUT) from None
    if not isinstance(parsed, dict):
        raise CliError(f"{flag} must be a JSON object", EXIT_BAD_INPUT)
    return parsed


def _seconds(value: str) -> float:
    try:
        return RetryPolicy(float(value)).give_up_after
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="server URL (default: PACS_MASK_SERVER or the embedded server)")
    common.add_argument("--token", help="API token (default: PACS_MASK_TOKEN or the embedded server's token)")
    common.add_argument("--json", action="store_true", help="print one JSON document for machines")
    common.add_argument(
        "--give-up-after",
        type=_seconds,
        metavar="SECONDS",
        help="stop when the server or storage has not answered for this long "
        f"(default {DEFAULT_GIVE_UP_AFTER:g}); the journal keeps what landed and the same command resumes",
    )

    parser = argparse.ArgumentParser(
        prog="pacs-mask", description="Upload and manage PACS segmentation masks."
    )
    parser.add_argument("--version", action="version", version=f"pacs-mask {__version__}")
    # The common options work before the command too (``pacs-mask --json groups …``); argparse would
    # let a subcommand's defaults overwrite them, so they land under other names and are merged in main().
    parser.add_argument("--server", dest="global_server", help=argparse.SUPPRESS)
    parser.add_argument("--token", dest="global_token", help=argparse.SUPPRESS)
    parser.add_argument("--json", dest="global_json", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "upload",
        parents=[common],
        help="check and upload a folder of mask slices",
        description=UPLOAD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--annotation", type=int, required=True)
    up.add_argument("--model", required=True, help="model name, or a label for manual masks")
    up.add_argument("--version", required=True)
    up.add_argument("--source", choices=["manual", "ai"], default="manual")
    up.add_argument(
        "--series",
        help="DICOM series folder to check the masks against, or 'pacs': the annotation's series as the "
        "server stored it (Rows/Columns, slice range, SOP UIDs; slice 0 = first position along the normal)",
    )
    up.add_argument("--confidence", type=float)
    up.add_argument("--params", help="inference parameters as a JSON object")
    up.add_argument("--match", choices=["auto", "instance_number", "sop_uid"], default="auto")
    up.add_argument("--require-all-slices", action="store_true", help="every series slice needs a mask")
    up.add_argument("--workers", type=int, default=8, help="parallel PUTs (default 8)")
    up.add_argument(
        "masks",
        nargs="+",
        help="mask PNG files or folders, or one NIfTI (.nii, .nii.gz) or DICOM SEG (.dcm) label volume",
    )
    up.set_defaults(func=cmd_upload)

    ann = sub.add_parser("annotations", parents=[common], help="list, search or create annotations")
    ann.add_argument("--search")
    ann.add_argument("--create", metavar="SERIES_DIR", help="create an annotation for this DICOM series")
    ann.add_argument(
        "--from-pacs",
        metavar="SERIES_UID",
        help="create an annotation for this PACS series (the server reads its headers over DICOMweb)",
    )
    ann.add_argument("--study", metavar="STUDY_UID", help="with --from-pacs: the series' study (optional)")
    ann.add_argument("--description")
    ann.set_defaults(func=cmd_annotations)

    pacs = sub.add_parser("pacs", help="search the PACS over DICOMweb (PACS_MASK_DICOMWEB_*)")
    pacs_sub = pacs.add_subparsers(dest="pacs_command", required=True)
    studies = pacs_sub.add_parser("studies", parents=[common], help="search studies")
    studies.add_argument("--patient-id")
    studies.add_argument("--patient-name", help="part of the patient's name (or a DICOM wildcard pattern)")
    studies.add_argument("--accession", help="accession number")
    studies.add_argument("--date-from", metavar="YYYYMMDD")
    studies.add_argument("--date-to", metavar="YYYYMMDD")
    studies.add_argument("--modality", help="e.g. CT, MR")
    studies.set_defaults(func=cmd_pacs)
    pacs_series = pacs_sub.add_parser("series", parents=[common], help="list the series of a study")
    pacs_series.add_argument("study", metavar="STUDY_UID")
    pacs_series.set_defaults(func=cmd_pacs)

    groups = sub.add_parser("groups", parents=[common], help="list the mask groups of an annotation")
    groups.add_argument("--annotation", type=int, required=True)
    groups.set_defaults(func=cmd_groups)

    slices = sub.add_parser("slices", parents=[common], help="list the slices of a group")
    slices.add_argument("group")
    slices.set_defaults(func=cmd_slices)

    dl = sub.add_parser("download", parents=[common], help="download a group's slices to a folder")
    dl.add_argument("group")
    dl.add_argument("folder")
    dl.add_argument("--overwrite", action="store_true", help="replace files of the same name that differ")
    dl.set_defaults(func=cmd_download)

    rm = sub.add_parser("delete", parents=[common], help="delete a group (admin)")
    rm.add_argument("group")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_delete)

    export = sub.add_parser("export-seg", parents=[common], help="save a complete group as a DICOM SEG file")
    export.add_argument("group")
    export.add_argument("out", metavar="OUT.dcm")
    export.add_argument("--overwrite", action="store_true", help="replace OUT.dcm if it exists")
    export.set_defaults(func=cmd_export_seg)

    send = sub.add_parser(
        "send", parents=[common], help="store a group's DICOM SEG in the PACS (approved groups)"
    )
    send.add_argument("group")
    send.set_defaults(func=cmd_send)

    cmp = sub.add_parser(
        "compare", parents=[common], help="compare two complete groups of one annotation (Dice, volumes)"
    )
    cmp.add_argument("a", metavar="GROUP_A")
    cmp.add_argument("b", metavar="GROUP_B")
    cmp.set_defaults(func=cmd_compare)

    rev = sub.add_parser("review", parents=[common], help="approve or reject a complete group (reviewer)")
    rev.add_argument("group")
    verdict = rev.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true")
    verdict.add_argument("--reject", action="store_true", help="needs --comment")
    rev.add_argument("--comment", help="what was checked, or what is wrong")
    rev.add_argument(
        "--finding",
        action="append",
        type=_finding,
        metavar="SLICE:LABEL:COMMENT",
        help="a finding on one slice (LABEL empty for the whole slice), e.g. 37:2:lesion edge missed; repeatable",
    )
    rev.add_argument(
        "--override-four-eyes",
        action="store_true",
        help="admin only: approve a group you uploaded yourself (recorded in the audit log)",
    )
    rev.set_defaults(func=cmd_review)

    watch = sub.add_parser("watch", parents=[common], help="upload inference results dropped into a folder")
    watch.add_argument("folder")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between scans")
    watch.add_argument("--once", action="store_true", help="scan once and exit")
    watch.add_argument("--archive", help="move uploaded result folders here (default: leave them, marked)")
    watch.add_argument("--workers", type=int, default=8)
    watch.set_defaults(func=cmd_watch)

    demo = sub.add_parser("infer-demo", parents=[common], help="run the demo model on a series and upload")
    demo.add_argument("--annotation", type=int, required=True)
    demo.add_argument("--series", required=True)
    demo.add_argument("--version", default="1.0")
    demo.add_argument("--workers", type=int, default=8)
    demo.add_argument("--keep", metavar="DIR", help="keep the result folder here")
    demo.set_defaults(func=cmd_infer_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pacs-mask``."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.server = args.server or args.global_server
    args.token = args.token or args.global_token
    args.json = args.json or args.global_json
    out = Output(args.json)
    try:
        return int(args.func(args, out))
    except CliError as exc:
        out.err.print(f"[red]error:[/red] {exc}")
        return exc.code
    except NoToken as exc:
        out.err.print(f"[red]error:[/red] {exc}")
        return EXIT_SERVER
    except ApiError as exc:
        out.err.print(f"[red]error:[/red] {exc.message}")
        if out.as_json:
            print(
                json.dumps(
                    {"status": "error", "error": exc.code, "message": exc.message, "details": exc.details}
                )
            )
        return EXIT_BAD_INPUT if exc.code in NOT_FOUND_CODES else EXIT_SERVER
    except KeyboardInterrupt:
        out.err.print("cancelled")
        return EXIT_CANCELLED


if __name__ == "__main__":
    raise SystemExit(main())
