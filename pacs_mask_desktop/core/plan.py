"""Upload planning: check every mask before anything is sent, and say everything that is wrong at once.

:func:`prepare` reads and hashes the masks (in a thread pool), matches each to a slice and returns a
:class:`PreparedUpload`: either a ready :class:`UploadPlan` or the complete list of :class:`Problem`,
plus one :class:`MaskRow` per input file for the desktop table (and its jump-to-problem).

Slice indexes
    With a series, a slice index is the 0-based position in the geometry-ordered series (see
    ``dicom_series``). Without one, it is the number in the file name as written.

Matching (``match``)
    ``"auto"``: a name whose stem contains a SOP Instance UID of the series matches that slice;
    otherwise the last number in the stem is the slice index (``mask_0042.png`` -> 42).
    ``"instance_number"``: the last number in the stem is the DICOM InstanceNumber (series required).
    ``"sop_uid"``: the stem must contain the slice's SOP Instance UID (series required).

The annotation's series (``annotation_series``)
    The server records each annotation's series geometry (``GET /api/annotations/{id}/series``, as a
    headers-only Series from :func:`pacs_mask_desktop.core.series_geometry.series_from_geometry`).
    Every caller passes it when the server knows it; masks are then matched and checked against it
    (size = Rows/Columns, index inside the series, SOP Instance UIDs), with or without a local folder.
    A local ``series`` that is another series (SeriesInstanceUID), or the same series with other
    slices or another order, is a ``wrong_series`` / ``series_differs`` problem: nothing is sent.

Gaps
    With a series, slices that have no mask are listed in ``missing_slices`` as a warning: partial
    volumes (an organ on 40 of 300 slices) are normal. Only with ``require_all_slices=True`` do they
    become ``missing_index`` problems. Without a series nothing says how long the volume is, so a
    hole between the smallest and largest file-name index (0, 1, 3) is a ``missing_index`` problem;
    indexes need not start at 0.

Empty masks are legitimate (no finding on that slice): they are planned, flagged ``empty`` per slice
and counted, never problems.

Checking while sending (``defer_decode=True``, the CLI)
    Every file is still read, hashed and checked before anything is sent: PNG signature, IHDR size, bit
    depth and colour type, file names, slice indexes, duplicates, gaps and the series match, so every
    such problem is listed at once and nothing is sent. Only the pixels (labels present, empty slices)
    are decoded later, by the plan's :class:`PixelCheck`, which the upload engine runs in parallel with
    the PUTs and waits for before ``complete``: a file that fails to decode then stops the group from
    being completed (it stays pending and resumable: a file that fails is never signed or sent) and every
    such problem is listed. When the cheap
    checks already found a problem, the pixels of the other files are decoded at once too, so the list
    is as complete as without deferring.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from pacs_mask_desktop.core.masks import (
    CONTENT_TYPE,
    PLAIN_PNG_CHUNKS,
    MaskError,
    MaskInfo,
    decode_mask,
    png_chunks,
    present_labels,
    read_mask,
    read_mask_header,
    slice_index_from_filename,
)
from server.contract.groups import MAX_SLICES, Source, group_fields_problems
from server.contract.naming import filename_problem, slice_index_problem

if TYPE_CHECKING:  # pydicom and numpy load only when a series is really opened (CLI start-up)
    from pacs_mask_desktop.core.dicom_series import Series

MatchMode = Literal["auto", "instance_number", "sop_uid"]
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "manifest.json"})
"""Skipped when a folder is expanded, as are hidden dot-files: operating-system litter and the
``manifest.json`` sidecar of an AI result folder (see ``core.inference``). Compared lower-cased."""

# Measured on the 2-CPU dev machine, 1000 masks 512x512 (demo phantom), min of 5: plain loop 0.60 s,
# 1 worker 0.68 s, 2 workers 0.39 s, 4 workers 0.39 s, 8 workers 0.37 s -> threads pay (~1.6x).
DEFAULT_WORKERS = min(8, (os.cpu_count() or 1) + 2)
CHECK_WORKERS = max(1, min(2, os.cpu_count() or 1))
"""Threads of a :class:`PixelCheck`: Pillow's decoder, zlib and numpy release the GIL, so on two cores
two decoders run beside the PUT threads (libcurl waits outside the GIL too)."""
_FAST_CHUNKS = PLAIN_PNG_CHUNKS | {b"PLTE", b"tRNS"}
"""Chunks :func:`_fast_labels` reads past; with any other the file is decoded in full."""
HEADER_WORKERS = 2
"""Threads reading headers only (``defer_decode``): a header check is ~25 us of CPU, so more threads
only take turns at the GIL (with the desktop app's GUI thread among them); two still overlap the
waits of a slow disk or network share."""
_HEADER_CHUNK = 64
_DECODE_CHUNK = 8

try:  # zlib-ng inflates these highly compressible rows ~3.7x faster than the stdlib (1000 slices here)
    from zlib_ng.zlib_ng import decompress as _inflate
    from zlib_ng.zlib_ng import error as _zlib_ng_error

    # the stub (zlib_ng.pyi) declares ``error: Exception``, an instance; at run time it is the class
    _InflateError = cast("type[Exception]", _zlib_ng_error)
except ImportError:  # pragma: no cover - the stdlib is the fallback
    _inflate = zlib.decompress
    _InflateError = zlib.error

STATUS_ORDER = (
    "unreadable",
    "not_a_mask",
    "bad_filename",
    "no_index",
    "no_matching_slice",
    "size_mismatch",
    "duplicate",
    "empty",
    "ok",
)
"""Row statuses, most severe first; a row shows the most severe of its problems."""
UPLOADABLE_STATUSES = ("ok", "empty")
"""Row statuses that do not block an upload (an empty mask is uploaded as "no finding")."""

_UID_TOKEN = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){3,}(?![0-9])")


class PrepareCancelled(Exception):
    """``prepare`` stopped because its ``cancel`` event was set."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that blocks the upload. ``filename`` is ``None`` for problems of the whole group.

    Codes: ``unreadable``, ``not_a_mask``, ``bad_filename``, ``size_mismatch``, ``no_matching_slice``,
    ``duplicate_slice_index``, ``duplicate_filename``, ``missing_index``, ``empty_input``, ``no_index``,
    ``not_found`` (a given file or folder does not exist),
    ``invalid_field``, ``series_error``, ``series_required``, ``too_many_slices``, ``wrong_series``,
    ``series_differs``.
    """

    filename: str | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MaskRow:
    """One input file as the desktop table shows it; ``status`` is one of :data:`STATUS_ORDER`."""

    filename: str
    slice_index: int | None
    status: str
    message: str
    path: Path | None = None
    labels: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedSlice:
    """A mask ready to sign, PUT and complete: what the server needs, computed from the exact bytes.

    ``frame_number`` (1-based) is set when the slice is a frame of a multi-frame DICOM file, where the
    SOP Instance UID alone does not name the slice.
    """

    filename: str
    path: Path
    size: int
    md5_hex: str
    content_md5_b64: str
    content_type: str
    slice_index: int
    sop_instance_uid: str | None
    width: int
    height: int
    labels: tuple[int, ...]
    empty: bool
    frame_number: int | None = None


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """Everything needed to create the group and upload it; ``slices`` are sorted by slice index."""

    annotation_id: int
    model_name: str
    version: str
    source: Source
    confidence: float | None
    params: dict[str, Any] | None
    slices: tuple[PlannedSlice, ...]
    expected_slices: int
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_slice_count: int | None = None
    labels: dict[str, Any] | None = None
    """The group's label table (``POST /api/mask-group`` ``labels``), e.g. from a NIfTI sidecar or SEG segments."""
    pixel_check: PixelCheck | None = None
    """Set by ``prepare(defer_decode=True)``: the slices whose pixels are still to be decoded (their
    ``labels``/``empty`` are placeholders until :meth:`PixelCheck.apply`); the engine runs it."""

    @property
    def total_bytes(self) -> int:
        """Bytes to upload in all."""
        return sum(s.size for s in self.slices)

    @property
    def empty_count(self) -> int:
        """How many planned masks have no label at all."""
        return sum(1 for s in self.slices if s.empty)


@dataclass(slots=True)
class PreparedUpload:
    """The answer of :func:`prepare`: ``plan`` when ``problems`` is empty, else ``plan`` is ``None``."""

    plan: UploadPlan | None
    problems: list[Problem]
    rows: list[MaskRow]
    missing_slices: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    series: Series | None = None

    @property
    def ok(self) -> bool:
        """True when there is a plan to upload."""
        return self.plan is not None

    def first_problem_row(self) -> int | None:
        """Index in ``rows`` of the first row that blocks the upload (for jump-to-problem)."""
        return next((i for i, row in enumerate(self.rows) if row.status not in UPLOADABLE_STATUSES), None)


@dataclass(slots=True)
class _Entry:
    """Working state of one input file while planning."""

    path: Path
    info: MaskInfo | None = None
    slice_index: int | None = None
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (status, code, message)
    read: bool = True
    deferred: bool = False  # only the header was checked; the pixels are decoded while uploading

    def add(self, status: str, code: str, message: str) -> None:
        self.problems.append((status, code, message))


def prepare(
    masks: Path | str | Iterable[Path | str],
    *,
    annotation_id: int,
    model_name: str,
    version: str,
    source: Source = "manual",
    confidence: float | None = None,
    params: Mapping[str, Any] | None = None,
    series: Series | Path | str | None = None,
    match: MatchMode = "auto",
    require_all_slices: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    max_workers: int | None = None,
    ignore_names: Iterable[str] = (),
    annotation_series: Series | None = None,
    annotation_series_uid: str | None = None,
    labels: Mapping[str, Any] | None = None,
    known_slices: Mapping[Path, MaskInfo] | None = None,
    defer_decode: bool = False,
) -> PreparedUpload:
    """Check masks and group fields and return a plan, or every problem found (never only the first).

    ``masks`` are files and/or folders; a folder contributes its ``*.png`` files (sorted, not
    recursive) and any other file in it is reported as a problem rather than silently dropped
    (hidden dot-files, :data:`IGNORED_NAMES` and ``ignore_names`` are skipped). ``series`` is a loaded :class:`Series`
    or a DICOM folder. ``annotation_series`` is the annotation's series as the server recorded it
    (see the module docstring): when given, masks are checked against it and ``series`` must be it.
    Without it, ``annotation_series_uid`` (the annotation's SeriesInstanceUID) must be ``series``' UID.
    ``labels`` is the group's label table (names, codes, colours of label numbers), sent when the group
    is created; NIfTI/SEG imports (``core.volume_masks``) give one. Masks are read and hashed in a thread pool; ``on_progress(done, total)`` is
    called on the calling thread for every file (as each chunk of files is done), and setting ``cancel`` raises
    :class:`PrepareCancelled`. Blocking: run it from a worker, not the GUI thread.

    ``known_slices`` is only for files this process has just written into its private staging folder
    (``VolumeMasks.known_slices`` of a NIfTI/SEG import): path -> the :class:`MaskInfo` of the exact
    bytes written, so they are not read and decoded again. A path given there whose file's size on disk
    differs is read as usual. Names, slice indexes, sizes against the series, duplicates and gaps are
    checked for these files exactly as for any other.

    ``defer_decode`` checks only each PNG's header here and leaves decoding the pixels to the plan's
    :class:`PixelCheck`, which the upload engine runs while sending (see the module docstring).
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    problems += _check_group_fields(annotation_id, model_name, version, source, confidence, params)
    if match not in ("auto", "instance_number", "sop_uid"):
        problems.append(Problem(None, "invalid_field", f"unknown match mode {match!r}"))

    loaded: Series | None = None
    if series is not None and not isinstance(series, str | Path):
        loaded = series
    elif series is not None:
        from pacs_mask_desktop.core.dicom_series import SeriesError, load_series

        try:
            loaded = load_series(series, cancel=cancel)
        except SeriesError as exc:
            if cancel is not None and cancel.is_set():
                raise PrepareCancelled from exc
            problems.append(Problem(None, "series_error", f"cannot open the DICOM series: {exc}"))
    if loaded is not None:
        warnings += loaded.warnings
    local = loaded
    if annotation_series is not None:
        if loaded is not None and (mismatch := series_mismatch(loaded, annotation_series, annotation_id)):
            problems.append(Problem(None, *mismatch))
        loaded = annotation_series  # the server's slice order is the one complete checks
    elif loaded is not None and (wrong := series_uid_mismatch(loaded, annotation_series_uid, annotation_id)):
        problems.append(Problem(None, *wrong))  # no stored geometry: the annotation's UID still decides
    if match != "auto" and loaded is None:
        problems.append(
            Problem(None, "series_required", f"matching by {match} needs the DICOM series; open it first")
        )

    ignored = IGNORED_NAMES | {name.lower() for name in ignore_names}
    entries = _expand_inputs([masks] if isinstance(masks, str | Path) else list(masks), ignored, warnings)
    if not entries:
        problems.append(Problem(None, "empty_input", "no mask files were given (or the folders hold none)"))

    _read_all(entries, on_progress, cancel, max_workers, known_slices or {}, defer_decode)
    for entry in entries:
        if entry.read and (name_problem := filename_problem(entry.path.name)) is not None:
            entry.add("bad_filename", "bad_filename", name_problem)
        if not entry.read:
            continue
        entry.slice_index, why = _match(entry.path.name, loaded, match)
        if entry.info is None:
            continue  # unreadable: its claimed index still places the row, no further noise
        if why is not None:
            entry.add(why[0], *why)
        elif loaded is not None:
            _check_size(entry, loaded)
    _check_duplicates(entries)

    missing: list[int] = []
    matched = sorted({e.slice_index for e in entries if e.slice_index is not None})
    if loaded is not None:
        missing = sorted(set(range(len(loaded))) - set(matched))
        if missing and require_all_slices:
            problems.append(
                Problem(
                    None,
                    "missing_index",
                    f"{len(missing)} of {len(loaded)} series slices have no mask: {_ranges(missing)}",
                )
            )
        elif missing:
            warnings.append(f"{len(missing)} of {len(loaded)} series slices have no mask (partial volume)")
    elif matched and match == "auto":
        gaps = sorted(set(range(matched[0], matched[-1] + 1)) - set(matched))
        if gaps:
            problems.append(
                Problem(
                    None,
                    "missing_index",
                    f"slice indexes jump over {_ranges(gaps)} (files present "
                    f"for {matched[0]}..{matched[-1]}); add the missing masks or open the series",
                )
            )
    if len(entries) > MAX_SLICES:
        problems.append(Problem(None, "too_many_slices", f"{len(entries)} masks; at most {MAX_SLICES}"))
    if problems or any(e.problems for e in entries):
        _decode_deferred(entries, cancel, max_workers)  # nothing will be sent: list pixel problems now too

    for entry in entries:
        problems += [Problem(entry.path.name, code, message) for _, code, message in entry.problems]
    rows = sorted((_row(e) for e in entries), key=_row_order)
    plan = (
        None
        if problems
        else _build_plan(entries, loaded, annotation_id, model_name, version, source, confidence, params)
    )
    if plan is not None and labels:
        plan = replace(plan, labels=dict(labels))
    if plan is not None and (deferred := {e.path.name for e in entries if e.deferred}):
        plan = replace(plan, pixel_check=PixelCheck([s for s in plan.slices if s.filename in deferred]))
    return PreparedUpload(plan, problems, rows, missing, warnings, local if local is not None else loaded)


def series_mismatch(local: Series, stored: Series, annotation_id: Any) -> tuple[str, str] | None:
    """``(code, message)`` when the local ``series`` is not the annotation's stored one, else ``None``.

    Another SeriesInstanceUID is ``wrong_series``; the same UID with other slices, another order or
    another size (a partial folder, another reader's order) is ``series_differs``.
    """

    def describe(series: Series) -> str:
        return (
            f"series {series.series_instance_uid} ({series.modality or 'no modality'}, "
            f"{series.columns}x{series.rows}, {len(series)} slices, patient {series.patient_id or 'unknown'})"
        )

    if local.series_instance_uid != stored.series_instance_uid:
        return (
            "wrong_series",
            f"the DICOM series given is {describe(local)}, but annotation {annotation_id} is on "
            f"{describe(stored)}; masks for another series are never sent",
        )
    if (local.rows, local.columns) != (stored.rows, stored.columns):
        return (
            "series_differs",
            f"the DICOM series given is {local.columns}x{local.rows} but annotation {annotation_id}'s copy of "
            f"the same series is {stored.columns}x{stored.rows}",
        )
    if len(local) != len(stored):
        return (
            "series_differs",
            f"the DICOM series given has {len(local)} slices but annotation {annotation_id}'s series has "
            f"{len(stored)}: the folder is incomplete or holds more, so its slice numbers are not the "
            "annotation's",
        )
    for index, (mine, theirs) in enumerate(zip(local, stored, strict=True)):
        if (mine.sop_instance_uid, mine.frame_number) != (theirs.sop_instance_uid, theirs.frame_number):
            return (
                "series_differs",
                f"slice {index} of the DICOM series given is SOP Instance {mine.sop_instance_uid} but slice "
                f"{index} of annotation {annotation_id}'s series is {theirs.sop_instance_uid}: the slices "
                "are in another order",
            )
    return None


def series_uid_mismatch(
    local: Series, series_instance_uid: str | None, annotation_id: Any
) -> tuple[str, str] | None:
    """``("wrong_series", message)`` when ``local`` is not the annotation's series by its SeriesInstanceUID.

    For an annotation without stored geometry the server still knows its SeriesInstanceUID: a folder of
    another series must not place or match masks. ``None`` when it fits or the UID is unknown.
    Used by :func:`prepare` and :func:`pacs_mask_desktop.core.volume_masks.annotation_geometry`.
    """
    if not series_instance_uid or local.series_instance_uid == series_instance_uid:
        return None
    return (
        "wrong_series",
        f"the DICOM series given is series {local.series_instance_uid} ({local.modality or 'no modality'}, "
        f"{local.columns}x{local.rows}, {len(local)} slices, patient {local.patient_id or 'unknown'}), but "
        f"annotation {annotation_id} is on series {series_instance_uid}; masks for another series are never sent",
    )


def _check_group_fields(
    annotation_id: Any, model_name: Any, version: Any, source: Any, confidence: Any, params: Any
) -> list[Problem]:
    """The server's group rules (:mod:`server.contract.groups`), checked locally so the user sees them all
    before uploading."""
    return [
        Problem(None, "invalid_field", message)
        for message in group_fields_problems(annotation_id, model_name, version, source, confidence, params)
    ]


def _expand_inputs(
    inputs: Sequence[Path | str], ignored: frozenset[str], warnings: list[str]
) -> list[_Entry]:
    """Files as given, folders as their sorted *.png files; other folder content becomes a problem."""
    entries: list[_Entry] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():  # a typo in a path: say so, not that its name is not a PNG's
            entry = _Entry(path, read=False)
            entry.add("unreadable", "not_found", f"{path} does not exist")
            entries.append(entry)
            continue
        if not path.is_dir():
            entries.append(_Entry(path))
            continue
        children = sorted(path.iterdir(), key=lambda p: p.name)
        subfolders = [c.name for c in children if c.is_dir()]
        if subfolders:
            warnings.append(f"{path.name}: sub-folders are not searched ({', '.join(subfolders[:5])})")
        for child in children:
            if child.is_dir() or child.name.startswith(".") or child.name.lower() in ignored:
                continue
            entry = _Entry(child)
            if child.suffix.lower() != ".png":
                entry.read = False
                entry.add(
                    "bad_filename",
                    "bad_filename",
                    f"not a .png file in mask folder {path.name}; only PNG masks can be uploaded "
                    "(remove it or pick the files one by one)",
                )
            entries.append(entry)
    return entries


def _read_all(
    entries: list[_Entry],
    on_progress: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
    max_workers: int | None,
    known: Mapping[Path, MaskInfo],
    defer_decode: bool = False,
) -> None:
    """Read and hash every readable entry in a thread pool (Pillow and hashlib release the GIL).

    Entries in ``known`` (files this process just wrote, see :func:`prepare`) take their facts from it.
    With ``defer_decode`` only the PNG header is checked (:func:`read_mask_header`).
    """
    reader = read_mask_header if defer_decode else read_mask
    todo = [e for e in entries if e.read]
    total = len(todo)
    if on_progress is not None:
        on_progress(0, total)
    done = 0
    if known:
        unknown = []
        for entry in todo:
            info = known.get(entry.path)
            if (
                info is not None
                and info.filename == entry.path.name
                and _size_on_disk(entry.path) == info.size_bytes
            ):
                entry.info = info
                done += 1
            else:
                unknown.append(entry)
        if done and on_progress is not None:
            on_progress(done, total)
        todo = unknown

    def work(chunk: list[_Entry]) -> list[MaskInfo | MaskError | None]:
        found: list[MaskInfo | MaskError | None] = []
        for entry in chunk:
            if cancel is not None and cancel.is_set():
                return found
            try:
                found.append(reader(entry.path))
            except MaskError as exc:
                found.append(exc)
        return found

    # Files go to the pool in chunks: a future per file cost more than checking a header (1000 small
    # PNGs: 0.12 s in futures of one, 0.03 s in futures of 64); decoding pixels takes longer per file,
    # so its chunks are smaller and keep both cores busy to the end.
    size = _HEADER_CHUNK if defer_decode else _DECODE_CHUNK
    chunks = iter([todo[i : i + size] for i in range(0, len(todo), size)])
    workers = max(1, max_workers or (HEADER_WORKERS if defer_decode else DEFAULT_WORKERS))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mask-read") as pool:
        pending: dict[Future[list[MaskInfo | MaskError | None]], list[_Entry]] = {}
        # Keep a bounded window of chunks in flight so cancel takes effect quickly on 1000s of files.
        for chunk in chunks:
            pending[pool.submit(work, chunk)] = chunk
            if len(pending) >= workers * 2:
                break
        while pending:
            finished, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            if cancel is not None and cancel.is_set():
                for future in pending:
                    future.cancel()
                raise PrepareCancelled("mask reading was cancelled")
            for future in finished:
                chunk = pending.pop(future)
                for entry, result in zip(chunk, future.result(), strict=False):
                    if isinstance(result, MaskError):
                        entry.add(result.code, result.code, result.reason)
                    elif isinstance(result, MaskInfo):
                        entry.info = result
                        entry.deferred = defer_decode
                    done += 1
                    if on_progress is not None:
                        on_progress(done, total)
                next_chunk = next(chunks, None)
                if next_chunk is not None:
                    pending[pool.submit(work, next_chunk)] = next_chunk
    if cancel is not None and cancel.is_set():  # set while the last chunks were taken in
        raise PrepareCancelled("mask reading was cancelled")


def _decode_deferred(entries: list[_Entry], cancel: threading.Event | None, max_workers: int | None) -> None:
    """Decode the pixels of header-checked entries now (a plan with problems is never sent)."""
    todo = [e for e in entries if e.deferred]
    if not todo:
        return

    def work(entry: _Entry) -> None:
        if cancel is not None and cancel.is_set():
            return
        try:
            info = read_mask(entry.path)
        except MaskError as exc:
            entry.add(exc.code, exc.code, exc.reason)
            entry.info = None
        else:
            if entry.info is not None and info.md5_hex != entry.info.md5_hex:
                entry.add("unreadable", "changed", _CHANGED)
            entry.info = info
        entry.deferred = False

    with ThreadPoolExecutor(max_workers=max(1, max_workers or DEFAULT_WORKERS)) as pool:
        list(pool.map(work, todo))
    if cancel is not None and cancel.is_set():
        raise PrepareCancelled("mask reading was cancelled")


_CHANGED = "the file changed after it was checked; check the masks again and upload them"


@dataclass(frozen=True, slots=True)
class _Facts:
    labels: tuple[int, ...]
    empty: bool


class PixelCheck:
    """Decodes the pixels of planned slices (labels present, empty slices) in background threads.

    ``prepare(defer_decode=True)`` puts one on the plan. The upload engine starts it when the run starts,
    signs and PUTs a slice only once it has passed (:meth:`ready`,
    :meth:`wait_for`), and waits for all of it (:meth:`wait`) before ``complete``. So decoding runs ahead
    of the PUTs, and a file that fails is never signed or sent: fixing it and running the same upload
    again resumes the pending group. Each file is read again and must have the MD5 it was planned with.
    Memory stays bounded at any slice count: each thread holds one file at a time, and only each
    slice's labels are kept. A slice whose pixels are all zero is recognised from its inflated rows
    (:func:`_fast_labels`); anything else is decoded from the same hashed bytes by
    :func:`~pacs_mask_desktop.core.masks.decode_mask`.
    """

    def __init__(self, slices: Sequence[PlannedSlice], workers: int = CHECK_WORKERS) -> None:
        self.slices = tuple(slices)
        self.workers = max(1, workers)
        self._facts: dict[str, _Facts] = {}
        self._problems: dict[str, Problem] = {}
        self._cond = threading.Condition()
        self._queue: Iterator[PlannedSlice] = iter(())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start decoding in background threads, in slice order as the PUTs go (again: no effect)."""
        with self._cond:
            if self._threads:
                return
            self._queue = iter(self.slices)
            for n in range(min(self.workers, len(self.slices)) or 1):
                thread = threading.Thread(target=self._work, name=f"pacs-pixels-{n}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def cancel(self) -> None:
        """Stop decoding (the upload ended before it needed the answer)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def ready(self, filename: str) -> bool | None:
        """True once ``filename`` passed, False if it failed, ``None`` while it is not decoded yet."""
        if filename in self._facts:
            return True
        return False if filename in self._problems else None

    def wait_for(
        self, filename: str, cancel: threading.Event | None = None, timeout: float | None = None
    ) -> bool | None:
        """:meth:`ready` for ``filename`` once decoded; ``None`` if ``cancel`` was set, the check stopped
        or ``timeout`` seconds passed first."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (state := self.ready(filename)) is None:
                if self._stop.is_set() or (cancel is not None and cancel.is_set()):
                    return None
                left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._cond.wait(left)
        return state

    def wait(self, cancel: threading.Event | None = None) -> list[Problem] | None:
        """Every problem found, in slice order (``[]``: all good), or ``None`` if ``cancel`` was set."""
        self.start()
        for thread in self._threads:
            while thread.is_alive():
                if cancel is not None and cancel.is_set():
                    self.cancel()
                    return None
                thread.join(0.1)
        if len(self._facts) + len(self._problems) < len(self.slices):
            return None  # stopped early
        order = {s.filename: s.slice_index for s in self.slices}
        return sorted(self._problems.values(), key=lambda p: order[p.filename or ""])

    def apply(self, slices: Sequence[PlannedSlice]) -> list[PlannedSlice]:
        """``slices`` with the decoded ``labels`` and ``empty`` (after :meth:`wait` found no problem)."""
        facts = self._facts
        return [
            replace(s, labels=f.labels, empty=f.empty) if (f := facts.get(s.filename)) is not None else s
            for s in slices
        ]

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                s = next(self._queue, None)
            if s is None:
                return
            problem = facts = None
            try:
                facts = _pixel_facts(s)
            except MaskError as exc:
                problem = Problem(s.filename, exc.code, exc.reason)
            except Exception as exc:  # a decoder bug must not hang the upload: report it as this file's
                problem = Problem(s.filename, "unreadable", f"cannot decode the file: {exc}")
            with self._cond:
                if facts is not None:
                    self._facts[s.filename] = facts
                elif problem is not None:
                    self._problems[s.filename] = problem
                self._cond.notify_all()


def _pixel_facts(s: PlannedSlice) -> _Facts:
    """Labels of one planned slice, from the exact bytes that were planned (else ``changed``)."""
    try:
        data = s.path.read_bytes()
    except OSError as exc:
        raise MaskError(s.filename, f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) != s.size or hashlib.md5(data, usedforsecurity=False).hexdigest() != s.md5_hex:
        raise MaskError(s.filename, _CHANGED, "changed")
    labels = _fast_labels(data, s.width, s.height)
    if labels is None:
        labels = present_labels(decode_mask(s.filename, data)[0])
    return _Facts(labels, not labels)


def _fast_labels(data: bytes, width: int, height: int) -> tuple[int, ...] | None:
    """The labels of PNG bytes (header already checked) when they can be read off the inflated rows
    without unfiltering, else ``None`` (the file is then decoded in full).

    Every PNG row filter predicts from earlier pixels, so an image is all zero exactly when every filtered
    byte is zero: that answers ``()`` for an empty slice whatever the filters. An 8-bit image whose rows
    all use filter "none" (what :func:`~pacs_mask_desktop.core.masks.encode_label_png` writes) holds its
    pixels as they are, and one whose rows use only "none", Sub and Up (most of what Pillow writes for
    label masks) is unfiltered from them (:func:`_unfilter_sub_up`): its labels are read directly. Checked with
    chunk CRCs and the exact row layout; anything unusual (interlacing, a bad CRC, a short stream, an
    Average or Paeth row) answers ``None``. Measured on the 1000 demo slices (half empty), loaded 2-CPU
    machine: Pillow decode 2.3 ms a slice, the blank test 0.3 ms.
    """
    if data[26:29] != b"\x00\x00\x00":  # compression, filter method, no interlace
        return None
    bit_depth, colour_type = data[24], data[25]
    chunks = png_chunks(data)
    if chunks is None:
        return None
    kinds = {kind for kind, _ in chunks}
    if colour_type == 3 and b"PLTE" not in kinds:
        return None
    if not kinds <= _FAST_CHUNKS:  # text, profiles, anything Pillow might refuse: Pillow decides
        return None
    # What Pillow refuses among these chunks is left to it too, so a file is never passed here that the
    # full decoder (and the server) refuses: image data split by another chunk, a grey tRNS of another
    # length than the one sample it holds.
    image_data = [i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT"]
    if not image_data or image_data[-1] - image_data[0] + 1 != len(image_data):
        return None
    if colour_type == 0 and any(kind == b"tRNS" and len(payload) != 2 for kind, payload in chunks):
        return None
    stride = (width * bit_depth + 7) // 8 + 1
    raw = _inflate_exactly(b"".join(payload for kind, payload in chunks if kind == b"IDAT"), height * stride)
    if raw is None:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride)
    filters = rows[:, 0]
    if int(filters.max()) > 4:
        return None
    if not rows[:, 1:].any():
        return ()
    if bit_depth == 8 and int(filters.max()) <= 2:
        return present_labels(_unfilter_sub_up(rows[:, 1:], filters))
    return None


def _unfilter_sub_up(raw: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The pixels of 8-bit single-channel PNG rows ``raw`` (filter bytes removed) whose ``filters`` are
    all 0 (none), 1 (Sub: plus the pixel to the left) or 2 (Up: plus the pixel above), as PNG defines
    them, byte arithmetic modulo 256.

    The slice's rows are already inflated for the blank test, so this replaces a second inflate and
    libpng's row loop. 320 non-empty 512x512 phantom slices on the 2-core machine: 0.12 ms a slice
    here against 0.50 ms through imagecodecs' libpng. Sub rows depend on nothing else: one running sum
    along all of them. Up rows are added to the finished row above, top to bottom, one vector add a row
    (a running sum down the columns was slower: numpy accumulates that axis column by column).
    """
    if not filters.any():  # every row "none" (what encode_label_png writes): the pixels as they are
        return raw
    out = raw.copy()
    sub = filters == 1
    if sub.any():
        out[sub] = np.cumsum(raw[sub], axis=1, dtype=np.uint8)
    for row in np.flatnonzero(filters == 2).tolist():
        if row:  # the first row's "above" is zeros: it stays as it is
            np.add(out[row], out[row - 1], out=out[row])
    return out


def _inflate_exactly(stream: bytes, size: int) -> bytes | bytearray | None:
    """The zlib ``stream`` inflated, if it is exactly ``size`` bytes long; else ``None``.

    zlib-ng through imagecodecs where it is built in, because it lets go of the GIL (the PUT threads
    and the other decoder go on meanwhile): 1000 phantom slices, 2-core machine, two threads, 0.11 ms
    a slice against 0.22 ms for the ``zlib_ng`` module, which holds the GIL (the server's compare
    inflates the same way).
    """
    import imagecodecs  # with the pixels, not at CLI start-up

    if imagecodecs.ZLIBNG.available:
        try:
            raw = imagecodecs.zlibng_decode(stream, out=size)  # more than ``size`` bytes: an error
        except imagecodecs.ZlibngError:
            return None
    else:
        try:
            raw = _inflate(stream)
        except (zlib.error, _InflateError):
            return None
    return raw if len(raw) == size else None


def _size_on_disk(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _match(name: str, series: Series | None, match: str) -> tuple[int | None, tuple[str, str] | None]:
    """The slice index named by file ``name``, or ``(None, (code, reason))`` when there is none."""
    stem = Path(name).stem
    uid_tokens = _UID_TOKEN.findall(stem)
    if match in ("instance_number", "sop_uid") and series is None:
        return None, ("no_matching_slice", "no DICOM series to match against")
    if series is not None and match in ("auto", "sop_uid"):
        known = [t for t in uid_tokens if t in series.sop_instance_uids()]
        if known:
            indexes = series.indexes_of_sop(known[-1])
            if len(indexes) == 1:
                return indexes[0], None
            return None, (
                "no_index",
                f"SOP Instance {known[-1]} is a multi-frame file of {len(indexes)} frames; "
                "name masks by slice index instead",
            )
        if uid_tokens or match == "sop_uid":
            what = f"SOP Instance UID {uid_tokens[-1]} is" if uid_tokens else "no SOP Instance UID of"
            return None, ("no_matching_slice", f"{what} not in the series")
    elif uid_tokens and series is None:
        return None, (
            "no_index",
            f"the name holds a DICOM UID ({uid_tokens[-1]}); open the DICOM series to match it",
        )

    number = slice_index_from_filename(name)
    if number is None:
        return None, ("no_index", "no number in the file name to tell which slice it belongs to")
    if match != "instance_number" and (too_large := slice_index_problem(number)) is not None:
        return None, ("no_index", too_large)
    if series is None:
        return number, None
    if match == "instance_number":
        indexes = series.indexes_of_instance_number(number)
        if len(indexes) == 1:
            return indexes[0], None
        detail = "no slice has" if not indexes else f"{len(indexes)} slices have"
        return None, ("no_matching_slice", f"{detail} InstanceNumber {number}")
    if 0 <= number < len(series):
        return number, None
    return None, ("no_matching_slice", f"slice index {number} is outside the series (0..{len(series) - 1})")


def _check_size(entry: _Entry, series: Series) -> None:
    info = entry.info
    if info is None or entry.slice_index is None:
        return
    ref = series[entry.slice_index]
    if (info.width, info.height) != (ref.columns, ref.rows):
        entry.add(
            "size_mismatch",
            "size_mismatch",
            f"mask is {info.width}x{info.height} but slice {entry.slice_index} is "
            f"{ref.columns}x{ref.rows} (width x height)",
        )


def _check_duplicates(entries: list[_Entry]) -> None:
    """Two masks for one slice, or two inputs with one file name (one storage key), are problems."""
    by_index: dict[int, list[_Entry]] = defaultdict(list)
    by_name: dict[str, list[_Entry]] = defaultdict(list)
    for entry in entries:
        by_name[entry.path.name].append(entry)
        if entry.slice_index is not None:
            by_index[entry.slice_index].append(entry)
    for index, group in by_index.items():
        if len(group) > 1:
            names = ", ".join(e.path.name for e in group)
            for entry in group:
                entry.add("duplicate", "duplicate_slice_index", f"slice {index} has several masks: {names}")
    for name, group in by_name.items():
        if len(group) > 1:
            for entry in group:
                entry.add(
                    "duplicate",
                    "duplicate_filename",
                    f"{len(group)} inputs are named {name} ({', '.join(str(e.path.parent) for e in group)}); "
                    "names must be unique in a group",
                )


def _row(entry: _Entry) -> MaskRow:
    info = entry.info
    if entry.problems:
        status = min((s for s, _, _ in entry.problems), key=STATUS_ORDER.index)
        message = "; ".join(dict.fromkeys(m for _, _, m in entry.problems))
    elif info is not None and info.empty:
        status, message = "empty", "empty mask (no label on this slice)"
    elif entry.deferred:
        status, message = "ok", "header checked; the pixels are decoded while uploading"
    else:
        status = "ok"
        message = f"labels {', '.join(map(str, info.labels))}" if info is not None else ""
    return MaskRow(
        filename=entry.path.name,
        slice_index=entry.slice_index,
        status=status,
        message=message,
        path=entry.path,
        labels=info.labels if info is not None else (),
    )


def _row_order(row: MaskRow) -> tuple[bool, int, str]:
    return (row.slice_index is None, row.slice_index if row.slice_index is not None else 0, row.filename)


def _build_plan(
    entries: list[_Entry],
    series: Series | None,
    annotation_id: int,
    model_name: str,
    version: str,
    source: Source,
    confidence: float | None,
    params: Mapping[str, Any] | None,
) -> UploadPlan:
    planned: list[PlannedSlice] = []
    for entry in entries:
        info = entry.info
        if info is None or entry.slice_index is None:  # cannot happen: any such entry has a problem
            raise RuntimeError(f"{entry.path.name} has neither a problem nor a slice")
        ref = series[entry.slice_index] if series is not None else None
        planned.append(
            PlannedSlice(
                filename=info.filename,
                path=info.path,
                size=info.size_bytes,
                md5_hex=info.md5_hex,
                content_md5_b64=info.content_md5_b64,
                content_type=CONTENT_TYPE,
                slice_index=entry.slice_index,
                sop_instance_uid=(ref.sop_instance_uid or None) if ref is not None else None,
                width=info.width,
                height=info.height,
                labels=info.labels,
                empty=info.empty,
                frame_number=ref.frame_number if ref is not None else None,
            )
        )
    planned.sort(key=lambda s: s.slice_index)
    return UploadPlan(
        annotation_id=annotation_id,
        model_name=model_name,
        version=version,
        source=source,
        confidence=None if confidence is None else float(confidence),
        params=dict(params) if params is not None else None,
        slices=tuple(planned),
        expected_slices=len(planned),
        series_instance_uid=series.series_instance_uid if series is not None else None,
        study_instance_uid=series.study_instance_uid if series is not None else None,
        series_slice_count=len(series) if series is not None else None,
    )


def _ranges(numbers: Sequence[int], limit: int = 12) -> str:
    """``[2, 5, 6, 7, 9]`` -> ``"2, 5-7, 9"`` (shortened after ``limit`` runs)."""
    runs: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    shown = ", ".join(runs[:limit])
    return shown + (f", ... ({len(runs) - limit} more runs)" if len(runs) > limit else "")
