"""``pacs-mask``: the headless uploader for scripts and AI inference machines.

Exit codes a script can trust: 0 everything done; 1 the upload ended incomplete (some slices failed,
the group stays pending and a re-run resumes); 2 bad input (nothing was sent); 3 the server refused
or could not be reached; 130 cancelled (Ctrl+C; a re-run resumes).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pacs_mask_desktop import __version__
from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.paths import NoToken, journal_path, resolve_server
from pacs_mask_desktop.core.plan import PreparedUpload, prepare
from pacs_mask_desktop.core.progress import ProgressCounter, human_bytes
from pacs_mask_desktop.core.upload import UploadEngine

LOG_WIDTH = 160
EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT, EXIT_SERVER, EXIT_CANCELLED = 0, 1, 2, 3, 130


class CliError(Exception):
    """A failure to report in one line with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Output:
    """Prints for people (rich, on stderr for progress) or one JSON document for machines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)
        for console in (self.out, self.err):
            if not console.is_terminal:
                console.width = LOG_WIDTH  # tables in logs and pipes keep their columns whole

    def data(self, payload: Any, human: Any = None) -> None:
        """Print ``payload`` as JSON, or ``human`` (a rich renderable or text) for people."""
        if self.as_json:
            print(json.dumps(payload, indent=2, default=str))
        elif human is not None:
            self.out.print(human)

    def note(self, text: str) -> None:
        """A line for people only (stderr, so stdout stays clean for pipes)."""
        if not self.as_json:
            self.err.print(text)


# --- helpers shared by commands ------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    try:
        target = resolve_server(args.server, args.token)
    except NoToken as exc:
        raise CliError(str(exc), EXIT_SERVER) from None
    return ApiClient(target.url, target.token)


def _journal() -> Journal:
    return Journal(journal_path())


def _problems_report(prepared: PreparedUpload, out: Output) -> None:
    if out.as_json:
        out.data(
            {
                "status": "invalid",
                "problems": [{"filename": p.filename, "code": p.code, "message": p.message} for p in prepared.problems],
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
    assert prepared.plan is not None
    plan = prepared.plan
    counter = ProgressCounter()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(complete_style="green", finished_style="green"),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>5.0f} slices/s"),
        TextColumn("{task.fields[bytes]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out.err,
        disable=out.as_json or not out.err.is_terminal,
        transient=False,
    )
    task = progress.add_task("upload", total=len(plan.slices), rate=0.0, bytes="", extra="")
    failures: list[str] = []

    def on_event(event: SliceEvent | GroupEvent) -> None:
        counter.feed(event)
        if isinstance(event, GroupEvent):
            if event.kind in ("opened", "resumed", "completing"):
                out.note(f"{event.message}")
            return
        if event.state is SliceState.FAILED:
            failures.append(event.filename)
        extra = []
        if counter.retries:
            extra.append(f"{counter.retries} retries")
        if counter.failed:
            extra.append(f"[red]{counter.failed} failed[/red]")
        progress.update(
            task,
            completed=counter.finished,
            rate=counter.rate(),
            bytes=f"{human_bytes(counter.bytes_done)}/{human_bytes(plan.total_bytes)}",
            extra=" ".join(extra),
        )

    engine = UploadEngine(api, _journal(), workers=workers, on_event=on_event, cancel=cancel)
    try:
        with progress:
            result = engine.run(plan, source_path=source_path)
    finally:
        engine.close()
        if engine.journal is not None:
            engine.journal.close()
    return result  # the summary (sent, already there, failed, bytes, time) is printed once by _report


def _report(result: UploadResult, out: Output) -> int:
    if out.as_json:
        out.data(result.as_dict())
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
        if result.group_id:
            out.out.print(result.group_id)
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
        try:
            api.get_annotation(args.annotation)
        except ApiError as exc:
            if exc.status == 404:
                raise CliError(f"Annotation {args.annotation} does not exist on {api.base_url}.", EXIT_BAD_INPUT) from None
            raise
        out.note(f"checking {', '.join(str(p) for p in args.masks)} …")
        prepared = prepare(
            args.masks,
            annotation_id=args.annotation,
            model_name=args.model,
            version=args.version,
            source=args.source,
            confidence=args.confidence,
            params=params,
            series=args.series,
            match=args.match,
            require_all_slices=args.require_all_slices,
        )
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
    return _report(result, out)


def cmd_annotations(args: argparse.Namespace, out: Output) -> int:
    """List or search annotations; ``--create`` registers one for a series folder."""
    with _client(args) as api:
        if args.create:
            from pacs_mask_desktop.core.dicom_series import load_series

            series = load_series(Path(args.create))
            row = api.create_annotation(
                series.study_instance_uid, series.series_instance_uid, series.patient_id, args.description
                or series.description,
            )
            out.data(row, f"created annotation {row['id']} for series {row['series_instance_uid']}")
            return EXIT_OK
        items = api.list_annotations(args.search)
    table = Table()
    for column in ("id", "patient", "description", "series", "groups", "created"):
        table.add_column(column)
    for a in items:
        table.add_row(
            str(a["id"]), a["patient_id"] or "", a["description"] or "", a["series_instance_uid"],
            str(a["group_count"]), a["created_at"][:19],
        )
    out.data({"items": items}, table)
    return EXIT_OK


def cmd_groups(args: argparse.Namespace, out: Output) -> int:
    """The mask groups of an annotation with their inference metadata."""
    with _client(args) as api:
        items = api.list_groups(args.annotation)
    table = Table(title=f"mask groups of annotation {args.annotation}", title_justify="left")
    for column in ("id", "model", "version", "source", "status", "slices", "confidence", "review", "created"):
        table.add_column(column)
    for g in items:
        table.add_row(
            g["id"], g["model_name"], g["version"], g["source"], g["status"], str(g["slice_count"]),
            "" if g["confidence"] is None else f"{g['confidence']:.3f}", g["review_status"] or "",
            f"{g['created_by']} {g['created_at'][:19]}",
        )
    out.data({"items": items}, table)
    return EXIT_OK


def cmd_slices(args: argparse.Namespace, out: Output) -> int:
    """The slices of one group."""
    with _client(args) as api:
        found = api.group_with_slices(args.group)
    table = Table(title=f"group {args.group} ({found['group']['status']})", title_justify="left")
    for column in ("index", "file", "size", "w×h", "labels", "md5"):
        table.add_column(column)
    for m in found["items"]:
        table.add_row(
            str(m["slice_index"]), m["filename"], human_bytes(m["size_bytes"]), f"{m['width']}×{m['height']}",
            m["label"] or "", m["checksum"],
        )
    out.data(found, table)
    return EXIT_OK


def cmd_download(args: argparse.Namespace, out: Output) -> int:
    """Download every slice of a group through the view route, verifying each checksum."""
    import hashlib

    target = Path(args.folder)
    target.mkdir(parents=True, exist_ok=True)
    bad: list[str] = []
    with _client(args) as api:
        found = api.group_with_slices(args.group)
        items = found["items"]
        with Progress(console=out.err, disable=out.as_json or not out.err.is_terminal) as progress:
            task = progress.add_task("download", total=len(items))
            for m in items:
                data = api.view(args.group, filename=m["filename"])
                if hashlib.md5(data, usedforsecurity=False).hexdigest() != m["checksum"]:
                    bad.append(m["filename"])
                    continue
                tmp = target / f".{m['filename']}.part"
                tmp.write_bytes(data)
                tmp.replace(target / m["filename"])
                progress.advance(task)
    out.data(
        {"group_id": args.group, "folder": str(target), "downloaded": len(items) - len(bad), "checksum_mismatch": bad},
        f"downloaded {len(items) - len(bad)} slice(s) to {target}",
    )
    if bad:
        out.err.print(f"[red]{len(bad)} slice(s) did not match their checksum and were not written:[/red] {bad}")
        return EXIT_INCOMPLETE
    return EXIT_OK


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
    out.data(result, f"deleted group {result['id']}: {result['deleted_objects']} object(s), {result['deleted_slices']} row(s)")
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    """Upload every finished inference result folder dropped into a directory, exactly once."""
    from pacs_mask_desktop.core.watch import Watcher

    target = resolve_server(args.server, args.token)
    cancel = threading.Event()
    _install_cancel(cancel, out)
    watcher = Watcher(
        Path(args.folder), server=target.url, token=target.token, archive=args.archive, workers=args.workers,
        cancel=cancel,
    )
    if args.once:
        watcher.scan_once()
    else:
        watcher.run(interval=args.interval)
    return EXIT_OK


def cmd_infer_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the built-in demo model on a series and upload its masks through the worker path."""
    from pacs_mask_desktop.core.inference import run_demo_inference

    target = resolve_server(args.server, args.token)
    result = run_demo_inference(
        Path(args.series), annotation_id=args.annotation, server=target.url, token=target.token,
        version=args.version, workers=args.workers, out_folder=Path(args.keep) if args.keep else None,
        on_note=out.note,
    )
    return _report(result, out)


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


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="server URL (default: PACS_MASK_SERVER or the embedded server)")
    common.add_argument("--token", help="API token (default: PACS_MASK_TOKEN or the embedded server's token)")
    common.add_argument("--json", action="store_true", help="print one JSON document for machines")

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

    up = sub.add_parser("upload", parents=[common], help="check and upload a folder of mask slices")
    up.add_argument("--annotation", type=int, required=True)
    up.add_argument("--model", required=True, help="model name, or a label for manual masks")
    up.add_argument("--version", required=True)
    up.add_argument("--source", choices=["manual", "ai"], default="manual")
    up.add_argument("--series", help="DICOM series folder to check the masks against")
    up.add_argument("--confidence", type=float)
    up.add_argument("--params", help="inference parameters as a JSON object")
    up.add_argument("--match", choices=["auto", "instance_number", "sop_uid"], default="auto")
    up.add_argument("--require-all-slices", action="store_true", help="every series slice needs a mask")
    up.add_argument("--workers", type=int, default=8, help="parallel PUTs (default 8)")
    up.add_argument("masks", nargs="+", help="mask PNG files or folders")
    up.set_defaults(func=cmd_upload)

    ann = sub.add_parser("annotations", parents=[common], help="list, search or create annotations")
    ann.add_argument("--search")
    ann.add_argument("--create", metavar="SERIES_DIR", help="create an annotation for this DICOM series")
    ann.add_argument("--description")
    ann.set_defaults(func=cmd_annotations)

    groups = sub.add_parser("groups", parents=[common], help="list the mask groups of an annotation")
    groups.add_argument("--annotation", type=int, required=True)
    groups.set_defaults(func=cmd_groups)

    slices = sub.add_parser("slices", parents=[common], help="list the slices of a group")
    slices.add_argument("group")
    slices.set_defaults(func=cmd_slices)

    dl = sub.add_parser("download", parents=[common], help="download a group's slices to a folder")
    dl.add_argument("group")
    dl.add_argument("folder")
    dl.set_defaults(func=cmd_download)

    rm = sub.add_parser("delete", parents=[common], help="delete a group (admin)")
    rm.add_argument("group")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_delete)

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
            print(json.dumps({"status": "error", "error": exc.code, "message": exc.message, "details": exc.details}))
        return EXIT_SERVER
    except KeyboardInterrupt:
        out.err.print("cancelled")
        return EXIT_CANCELLED


if __name__ == "__main__":
    raise SystemExit(main())
