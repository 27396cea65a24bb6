"""The upload panel: group fields, Upload / Cancel / Retry failed, overall progress and per-slice table.

The engine runs in a worker, through ``core.upload_run.upload_with_journal`` like every other upload.
Its events are queued by the engine threads and applied here on a ~15 Hz timer (see
:mod:`~pacs_mask_desktop.ui.upload_model`), so even a 1000-slice upload at full speed costs the GUI
thread a few short refreshes a second; the totals shown are counted by ``core.progress`` (as the CLI's
bar is). The engine's cancel flag is the worker's, so Cancel and closing the window both stop it;
the journal keeps what landed and Retry failed / Resume sends only what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QMetaMethod, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.plan import UploadPlan
from pacs_mask_desktop.core.progress import ProgressCounter
from pacs_mask_desktop.core.upload_run import upload_with_journal
from pacs_mask_desktop.ui.formatting import failure_text, human_bytes
from pacs_mask_desktop.ui.tables import make_table
from pacs_mask_desktop.ui.upload_model import TERMINAL, EventQueue, UploadTableModel
from pacs_mask_desktop.ui.workers import TaskHandle, TaskRunner, WorkContext, WorkFailure

log = logging.getLogger(__name__)

REFRESH_MS = 66
"""How often queued engine events are applied to the widgets (~15 Hz)."""
UPLOAD_WORKERS = 4
"""Parallel PUTs. Measured on the 2-CPU dev machine: 4 threads upload 1000 slices as fast as 8 or 16
(the client's per-request CPU, not the network, is the limit) and leave the GUI thread more of the GIL."""
DESKTOP_CHECK_WORKERS = 1
"""Threads decoding the pixels beside the PUTs (the CLI uses two). In the app, next to the GUI thread
and the bundled server on two cores, one is faster: benchmarks/gui_responsiveness.py, 2 x 9 uploads
each on the same quiet machine, took 1.9 s for a 1000-slice upload with one and 2.1-2.3 s with two,
for the same longest GUI stalls (pooled medians 40 and 43 ms)."""

EventTap = Callable[[SliceEvent | GroupEvent], None]


def run_upload(
    context: WorkContext,
    api: ApiClient,
    plan: UploadPlan,
    journal_path: Path,
    source_path: str | None,
    queue: EventQueue,
    tap: EventTap | None,
    workers: int,
) -> UploadResult:
    """Worker: run the engine with the journal; events go to ``queue`` (and ``tap``, for tests)."""

    def sink(event: SliceEvent | GroupEvent) -> None:
        if tap is not None:
            tap(event)
        queue.push(event)

    return upload_with_journal(
        api,
        plan,
        journal_path=journal_path,
        source_path=source_path,
        workers=workers,
        check_workers=DESKTOP_CHECK_WORKERS,
        on_event=sink,
        cancel=context.cancel,
    )


class UploadPanel(QWidget):
    """Fields, buttons, progress and the per-slice table of one upload at a time."""

    uploadRequested = Signal()  # the main window checks the masks with these fields, then calls start()
    retryRequested = Signal()
    slicesFinished = Signal(object)  # [(filename, final state)] of one refresh: done / skipped / failed
    sliceFinished = Signal(str, str)  # the same, one signal per slice (emitted only while connected)
    progressChanged = Signal(int, int)  # slices finished, total
    groupOpened = Signal(str, str)  # group id, "opened" or "resumed"
    uploadFinished = Signal(object)  # UploadResult
    statusMessage = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.event_tap: EventTap | None = None
        """Called on engine threads with every event before it is queued (tests use it to pause)."""
        self.model = UploadTableModel()
        self.queue = EventQueue()
        self.worker: TaskHandle | None = None
        self.plan: UploadPlan | None = None
        self.source_path: str | None = None
        self.last_result: UploadResult | None = None
        self.checking = False
        """True while masks are checked before an upload (Upload and Retry wait for it)."""
        self.group_id: str | None = None
        self.progress = ProgressCounter()
        """The running upload's totals (core.progress, shared with the CLI's bar), fed on the GUI thread."""
        self._pending_result: UploadResult | WorkFailure | None = None

        self.model_name = QLineEdit("manual-segmentation")
        self.model_name.setObjectName("modelName")
        self.model_name.setPlaceholderText("e.g. liver-seg or manual")
        self.version = QLineEdit("1")
        self.version.setObjectName("modelVersion")
        self.version.setPlaceholderText("e.g. 1.0")
        self.source = QComboBox()
        self.source.addItem("manual", "manual")
        self.source.addItem("ai", "ai")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.addRow("Model name", self.model_name)
        form.addRow("Version", self.version)
        form.addRow("Source", self.source)

        self.upload_button = QPushButton("Upload (Ctrl+U)")
        self.upload_button.setObjectName("primaryButton")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.retry_button = QPushButton("Retry failed")
        self.retry_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.upload_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.retry_button)
        buttons.addStretch(1)

        self.bar = QProgressBar()
        self.bar.setObjectName("uploadBar")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("%v / %m slices (%p%)")
        self.stats = QLabel("Nothing uploaded yet.")
        self.stats.setObjectName("uploadStats")
        self.stats.setWordWrap(True)

        self.table = make_table(self.model, "uploadTable", {0: 52, 1: 130, 2: 96, 3: 70, 4: 66})

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.stats)
        layout.addWidget(self.table, 1)

        self._per_slice_signal = QMetaMethod.fromSignal(self.sliceFinished)
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self._refresh)

        self.upload_button.clicked.connect(self.uploadRequested)
        self.retry_button.clicked.connect(self.retryRequested)
        self.cancel_button.clicked.connect(self.cancel)

    # --- fields -------------------------------------------------------------------------------------

    def fields(self) -> dict[str, str]:
        """What the user typed: model_name, version, source."""
        return {
            "model_name": self.model_name.text().strip(),
            "version": self.version.text().strip(),
            "source": str(self.source.currentData()),
        }

    def set_fields(self, model_name: str, version: str, source: str) -> None:
        """Fill the fields (resume, scripts)."""
        self.model_name.setText(model_name)
        self.version.setText(version)
        self.source.setCurrentIndex(max(0, self.source.findData(source)))

    @property
    def running(self) -> bool:
        """True while an upload worker runs."""
        return self.worker is not None

    def set_checking(self, text: str) -> None:
        """Show that masks are being checked before the upload starts."""
        self.checking = True
        self.stats.setText(text)
        self.upload_button.setEnabled(False)
        self.retry_button.setEnabled(False)

    def set_idle(self, text: str | None = None) -> None:
        """Back to idle after a check that did not start an upload."""
        self.checking = False
        if text:
            self.stats.setText(text)
        self.upload_button.setEnabled(True)
        last = self.last_result
        self.retry_button.setEnabled(self.plan is not None and last is not None and not last.ok)

    def forget_plan(self) -> None:
        """Drop the last upload's plan and result (another server is connected): Retry has nothing to
        send; the table keeps showing what happened."""
        self.plan = None
        self.source_path = None
        self.last_result = None
        self.retry_button.setEnabled(False)
        self.retry_button.setText("Retry failed")

    # --- running ------------------------------------------------------------------------------------

    def start(self, api: ApiClient, plan: UploadPlan, journal_path: Path, source_path: str | None) -> None:
        """Upload ``plan`` in a worker (the table shows every slice at once, queued)."""
        if self.worker is not None:
            return
        self.checking = False
        self.plan = plan
        self.source_path = source_path  # what Retry records again, even after the masks were cleared
        self.last_result = None
        self.group_id = None
        self.queue = EventQueue()
        self.model.set_plan(plan)
        self.progress = ProgressCounter()
        self._pending_result = None
        self.bar.setRange(0, len(plan.slices))
        self.bar.setValue(0)
        self.stats.setText(f"Starting: {len(plan.slices)} slices, {human_bytes(plan.total_bytes)}")
        self.upload_button.setEnabled(False)
        self.retry_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker = self._runner.start(
            run_upload,
            api,
            plan,
            journal_path,
            source_path,
            self.queue,
            self.event_tap,
            UPLOAD_WORKERS,
            on_result=self._on_result,
            on_error=self._on_error,
            keep_results_on_cancel=True,
            name="upload",
        )
        self.timer.start()

    def cancel(self) -> None:
        """Stop the running upload (slices in flight finish; the group stays pending, resumable)."""
        if self.worker is not None:
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.stats.setText(self.stats.text() + " — cancelling…")

    def _refresh(self) -> None:
        """Timer: apply the engine events queued since the last refresh, with few calls into Qt.

        Under load every Python-side ``emit()`` gives up the GIL to the upload threads and waits
        ~0.5 ms to get it back, so one refresh emits one batched :attr:`slicesFinished`; the
        per-slice :attr:`sliceFinished` is only emitted while something listens to it.
        """
        events = self.queue.drain()
        if events:
            slices = [e for e in events if isinstance(e, SliceEvent)]
            self.model.apply(slices)
            finished: list[tuple[str, str]] = []
            for event in events:
                self.progress.feed(event)
                if isinstance(event, GroupEvent):
                    if event.kind in ("opened", "resumed") and event.group_id:
                        self.group_id = event.group_id
                        self.groupOpened.emit(event.group_id, event.kind)
                    if event.kind in ("opened", "resumed", "completing"):
                        self.statusMessage.emit(event.message)
                    continue
                if event.state in TERMINAL:
                    finished.append((event.filename, event.state.value))
            if finished:
                self.slicesFinished.emit(finished)
                if self.isSignalConnected(self._per_slice_signal):
                    for filename, state in finished:
                        self.sliceFinished.emit(filename, state)
            self._update_stats()
            self.progressChanged.emit(self.progress.finished, len(self.model.rows))
        if self._pending_result is not None and self.worker is None:
            pending, self._pending_result = self._pending_result, None
            self.timer.stop()
            self._finish(pending)

    def _update_stats(self) -> None:
        progress = self.progress
        self.bar.setValue(progress.finished)
        parts = [
            f"{progress.finished}/{len(self.model.rows)} slices",
            f"{human_bytes(progress.bytes_sent)} sent",
            f"{human_bytes(progress.byte_rate())}/s",
            f"{progress.rate():.0f} slices/s",
        ]
        if progress.skipped:
            parts.append(f"{progress.skipped} already stored")
        if progress.retries:
            parts.append(f"{progress.retries} retries")
        if progress.failed:
            parts.append(f"{progress.failed} failed")
        self.stats.setText(" · ".join(parts))

    def _on_result(self, result: UploadResult) -> None:
        self.worker = None
        self._pending_result = result
        self._refresh()  # applies the last events, then finishes

    def _on_error(self, failure: WorkFailure) -> None:
        log.error("upload worker failed:\n%s", failure.traceback)
        self.worker = None
        self._pending_result = failure
        self._refresh()

    def _finish(self, outcome: UploadResult | WorkFailure) -> None:
        self.cancel_button.setEnabled(False)
        self.upload_button.setEnabled(True)
        if isinstance(outcome, WorkFailure):
            result = UploadResult("incomplete", self.group_id, f"The upload stopped: {failure_text(outcome)}")
        else:
            result = outcome
        self.last_result = result
        self.group_id = result.group_id or self.group_id
        self._update_stats()
        if result.status == "complete":
            self.bar.setValue(self.bar.maximum())
            self.stats.setText(f"Complete: {self.stats.text()} in {result.seconds:.1f} s")
            self.retry_button.setEnabled(False)
            self.retry_button.setText("Retry failed")
        else:
            if result.status == "cancelled":
                self.retry_button.setText("Resume")
            else:  # masks that failed the pixel check are checked again first (MainWindow.retry_upload)
                self.retry_button.setText("Check and retry" if result.problems else "Retry failed")
            self.retry_button.setEnabled(self.plan is not None)
            self.stats.setText(f"{result.message} ({self.stats.text()})")
            row = self.model.first_row_in((SliceState.FAILED,))
            if row is not None:  # a row not built yet (a plan over 2000 slices): its first built one
                self.table.scrollTo(self.model.index(min(row, self.model.rowCount() - 1), 0))
        self.statusMessage.emit(result.message)
        self.uploadFinished.emit(result)

    def stop(self) -> None:
        """Window closing: cancel and stop refreshing (the runner waits for the worker)."""
        if self.worker is not None:
            self.worker.cancel()
        self.timer.stop()
