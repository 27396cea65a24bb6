"""Streams a PACS series into the viewer: one worker, signals on the GUI thread, state in ``StreamState``.

``open()`` starts a worker that answers from the DICOM cache when the series is complete there, else
retrieves the whole series in one WADO-RS request into the cache and reports each instance with its
header. Reports arrive through :class:`~pacs_mask_desktop.ui.workers.TaskRunner` progress, so every
signal here is emitted on the GUI thread. Opening another series cancels the worker and bumps a
generation number so late reports of the old one are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from PySide6.QtCore import QObject, Signal

from pacs_mask_desktop.core.dicom_series import Series, SeriesError, series_from_headers
from pacs_mask_desktop.core.pacs import PacsCancelled, PacsClient, PacsError
from pacs_mask_desktop.core.pacs_open import (
    PacsSeriesRef,
    StreamState,
    cached_series,
    save_index,
)
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.workers import TaskHandle, TaskRunner, WorkContext, WorkFailure

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1
"""Seconds between two progress signals while a series streams in."""


def _open_task(context: WorkContext, client: PacsClient, ref: PacsSeriesRef) -> None:
    """Worker: report ("cached", series), or ("instance", path, header) per instance as it lands."""
    series = cached_series(client, ref.series_instance_uid)
    if series is not None:
        context.report(("cached", series))
        return
    arrived: list[tuple[Path, Dataset]] = []

    def landed(path: Path, header: Dataset) -> None:
        arrived.append((path, header))
        context.report(("instance", path, header))

    client.retrieve_series(
        ref.study_instance_uid,
        ref.series_instance_uid,
        on_header=landed,
        cancel=context.cancel,
        total=ref.instance_count or 0,  # the browser's QIDO count; 0: none asked for before the stream
    )
    context.report(("complete",))  # the viewer has it all; the index below is for the next open
    with contextlib.suppress(OSError, SeriesError):
        save_index(client.cache.series_dir(ref.series_instance_uid), series_from_headers(arrived))


class PacsSeriesLoader(QObject):
    """Opens one PACS series at a time; the window connects its signals to the viewer."""

    seriesReady = Signal(object, bool)  # Series (ordered from what has arrived), True for the first one
    progress = Signal(int, int)  # instances in the cache, instances expected (0: unknown)
    completed = Signal(object)  # the whole Series: every instance is on disk
    failed = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._generation = 0
        self._handle: TaskHandle | None = None
        self.ref: PacsSeriesRef | None = None
        self.state = StreamState()
        self.series: Series | None = None
        """The series as last published (grows while it streams in)."""
        self._progress_at = 0.0
        self.busy = False
        """True while a series is being retrieved."""

    def open(self, client: PacsClient, ref: PacsSeriesRef) -> None:
        """Start opening ``ref`` (cancels a retrieval still running)."""
        self.cancel()
        self._generation += 1
        generation = self._generation
        self.ref = ref
        self.state = StreamState(expected=ref.instance_count)
        self.series = None
        self.busy = True
        self._handle = self._runner.start(
            _open_task,
            client,
            ref,
            on_progress=lambda value: self._on_report(generation, value),
            on_result=lambda _none: self._on_done(generation),
            on_error=lambda failure: self._on_error(generation, failure),
            name="pacs series",
        )

    def cancel(self) -> None:
        """Stop retrieving (instances already in the cache stay there)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._generation += 1
        self.busy = False

    # --- reports (GUI thread) -------------------------------------------------------------------------

    def _on_report(self, generation: int, value: tuple[Any, ...]) -> None:
        if generation != self._generation:
            return
        if value[0] == "cached":
            series: Series = value[1]
            self.state.finished = True
            self.busy = False
            self.series = series
            self.seriesReady.emit(series, True)
            self.progress.emit(len(series.sop_instance_uids()), len(series.sop_instance_uids()))
            self.completed.emit(series)
            return
        if value[0] == "complete":
            self._on_done(generation)
            return
        self.state.add(value[1], value[2])
        now = time.monotonic()
        if now - self._progress_at >= PROGRESS_INTERVAL:  # 500 status-bar repaints cost the stream time
            self._progress_at = now
            self.progress.emit(self.state.done, self.state.expected or 0)
        if self.state.due():
            self._publish()

    def _publish(self) -> Series | None:
        first = self.state.built_with == 0
        try:
            series = self.state.build()
        except SeriesError as exc:
            self._fail(f"The PACS series cannot be shown: {exc}.")
            return None
        self.series = series
        self.seriesReady.emit(series, first)
        return series

    def _on_done(self, generation: int) -> None:
        if generation != self._generation or self.state.finished:
            return
        self.busy = False
        self.state.finished = True
        self._handle = None
        if self.state.done == 0:
            self._fail("The PACS sent no instance of the series.")
            return
        if self.state.expected and self.state.done < self.state.expected:
            log.warning("the PACS announced %d instances and sent %d", self.state.expected, self.state.done)
        series = self._publish() if self.state.built_with != self.state.done else self.series
        if series is not None:
            self.progress.emit(self.state.done, self.state.done)
            self.completed.emit(series)

    def _on_error(self, generation: int, failure: WorkFailure) -> None:
        if generation != self._generation or isinstance(failure.error, PacsCancelled):
            return
        if not isinstance(failure.error, PacsError | OSError | ValueError):
            log.error("PACS retrieval failed:\n%s", failure.traceback)
        self._fail(failure_text(failure))

    def _fail(self, message: str) -> None:
        self.cancel()
        self.failed.emit(message)
