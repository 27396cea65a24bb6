"""Background work for the desktop app: ``QRunnable`` workers whose results come back as signals.

The superqt/napari pattern: a :class:`Worker` is a ``QRunnable`` holding a separate ``QObject`` of
signals (a ``QRunnable`` cannot own signals itself). Its function runs on a :class:`TaskRunner`'s
``QThreadPool`` and receives a :class:`WorkContext` with a cancel flag to check and a progress
callback. Results, errors and progress reach the GUI thread as queued signals into a small relay
``QObject`` that lives on the GUI thread, which then calls the Python callbacks there. Widgets are
therefore only ever touched on the GUI thread.

Lifetimes, which is where such code usually crashes: the pool owns and deletes the ``QRunnable``
after ``run()`` (auto-delete; PySide hands ownership to C++ on ``start``), possibly dropping the
last Python reference to the worker *on the pool thread*. The signals object must neither die on the
pool thread nor while the pool thread is still inside its last ``emit()``. So it is a Qt child of the
relay (C++ owns it, Python references never delete it), ``run()`` sets a flag once it no longer
touches it, and the runner deletes a relay (and with it the signals) on the GUI thread only after that
flag is set. Callers keep a plain :class:`TaskHandle`.

Each window owns one :class:`TaskRunner` (its own pool, so a long upload never starves the quick
calls behind it) and cancels and waits for its work when it closes. Tests check
:func:`active_work` after every test to catch dangling workers.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

log = logging.getLogger(__name__)

_RUNNERS: weakref.WeakSet[TaskRunner] = weakref.WeakSet()


@dataclass(slots=True)
class WorkContext:
    """What a worker function gets: a cancel flag to check often and a progress reporter."""

    cancel: threading.Event = field(default_factory=threading.Event)
    report: Callable[[object], None] = lambda _value: None

    @property
    def cancelled(self) -> bool:
        """True once the owner asked the work to stop."""
        return self.cancel.is_set()


@dataclass(frozen=True, slots=True)
class WorkFailure:
    """An exception raised by a worker function, carried to the GUI thread with its traceback text."""

    error: BaseException
    traceback: str


class TaskHandle:
    """What the starter of a task keeps: its name and a way to cancel it (plain Python, thread-safe)."""

    __slots__ = ("context", "name")

    def __init__(self, name: str, context: WorkContext) -> None:
        self.name = name
        self.context = context

    def cancel(self) -> None:
        """Ask the function to stop at its next check."""
        self.context.cancel.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self.context.cancelled


class WorkerSignals(QObject):
    """The signals of one :class:`Worker` (emitted from its pool thread, delivered queued)."""

    result = Signal(object)
    error = Signal(object)
    progress = Signal(object)
    finished = Signal()


class Worker(QRunnable):
    """Runs ``fn(context, *args, **kwargs)`` on a pool thread and reports through :attr:`signals`."""

    def __init__(
        self, fn: Callable[..., Any], signals: WorkerSignals, *args: Any, name: str = "", **kwargs: Any
    ) -> None:
        super().__init__()  # auto-delete: the pool deletes it after run()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.name = name or getattr(fn, "__name__", "work")
        self.signals = signals
        self.context = WorkContext(report=signals.progress.emit)
        self.returned = threading.Event()
        """Set by the pool thread once it will not touch :attr:`signals` again."""

    def run(self) -> None:
        """Pool thread: call the function; never let an exception escape into Qt."""
        signals = self.signals
        try:
            value = self.fn(self.context, *self.args, **self.kwargs)
        except BaseException as exc:
            signals.error.emit(WorkFailure(exc, traceback.format_exc()))
        else:
            signals.result.emit(value)
        finally:
            self.fn = self.args = self.kwargs = None  # type: ignore[assignment]  # free inputs early
            signals.finished.emit()
            self.returned.set()


class _Relay(QObject):
    """Lives on the GUI thread; receives a worker's queued signals and calls the Python callbacks."""

    def __init__(
        self,
        runner: TaskRunner,
        worker: Worker,
        on_result: Callable[[Any], None] | None,
        on_error: Callable[[WorkFailure], None] | None,
        on_progress: Callable[[Any], None] | None,
        on_finished: Callable[[], None] | None,
        keep_results_on_cancel: bool,
    ) -> None:
        super().__init__(runner)
        self.handle = TaskHandle(worker.name, worker.context)
        self.returned = worker.returned
        worker.signals.setParent(self)  # deleted with this relay, on the GUI thread
        self._keep = keep_results_on_cancel
        self._runner = runner
        self._on_result = on_result
        self._on_error = on_error
        self._on_progress = on_progress
        self._on_finished = on_finished
        worker.signals.result.connect(self._result)
        worker.signals.error.connect(self._error)
        worker.signals.progress.connect(self._progress)
        worker.signals.finished.connect(self._finished)

    @Slot(object)
    def _result(self, value: object) -> None:
        if self._on_result is not None and (self._keep or not self.handle.cancelled):
            self._on_result(value)

    @Slot(object)
    def _error(self, failure: WorkFailure) -> None:
        if self.handle.cancelled and not self._keep:
            return
        if self._on_error is not None:
            self._on_error(failure)
        else:
            log.error("background task %s failed:\n%s", self.handle.name, failure.traceback)

    @Slot(object)
    def _progress(self, value: object) -> None:
        if self._on_progress is not None and not self.handle.cancelled:
            self._on_progress(value)

    @Slot()
    def _finished(self) -> None:
        try:
            if self._on_finished is not None:
                self._on_finished()
        finally:
            self._runner._done(self)


class TaskRunner(QObject):
    """A thread pool plus the bookkeeping to cancel and wait for everything it started."""

    def __init__(self, parent: QObject | None = None, *, max_threads: int = 6) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._active: set[_Relay] = set()
        self._retired: list[_Relay] = []
        _RUNNERS.add(self)

    def start(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[WorkFailure], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        keep_results_on_cancel: bool = False,
        name: str = "",
        **kwargs: Any,
    ) -> TaskHandle:
        """Run ``fn(context, *args, **kwargs)`` in the pool; callbacks run on the GUI thread.

        After :meth:`TaskHandle.cancel` results and errors are dropped (the owner no longer wants
        them) unless ``keep_results_on_cancel``: an upload's "cancelled" outcome is still worth showing.
        """
        worker = Worker(fn, WorkerSignals(), *args, name=name, **kwargs)
        relay = _Relay(self, worker, on_result, on_error, on_progress, on_finished, keep_results_on_cancel)
        self._active.add(relay)
        self.pool.start(worker)
        return relay.handle

    def _done(self, relay: _Relay) -> None:
        """A task's ``finished`` was handled: retire its relay once the pool thread let go of it."""
        if relay in self._active:
            self._active.discard(relay)
            self._retired.append(relay)
        self._sweep()

    def _sweep(self) -> None:
        waiting: list[_Relay] = []
        for relay in self._retired:
            if relay.returned.is_set():
                relay.deleteLater()
            else:
                waiting.append(relay)
        self._retired = waiting
        if waiting:
            QTimer.singleShot(20, self, self._sweep)

    @property
    def active_count(self) -> int:
        """Tasks started and not yet finished (their ``finished`` not yet handled)."""
        return len(self._active)

    def cancel_all(self) -> None:
        """Set every running task's cancel flag."""
        for relay in list(self._active):
            relay.handle.cancel()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything and wait for the pool threads. True if all stopped in time."""
        self.cancel_all()
        stopped = self.pool.waitForDone(timeout_ms)
        if not stopped:
            log.warning("background work still running after %d ms at shutdown", timeout_ms)
        for relay in list(self._active):
            self._done(relay)
        if stopped:
            for relay in self._retired:
                relay.returned.set()  # the pool is empty: nobody touches the signals any more
            self._sweep()
        return stopped


GUI_SWITCH_INTERVAL = 0.001
_tuned = False


def favour_gui_thread() -> None:
    """Tune the interpreter for a GUI process whose worker threads also run Python (once per process).

    - The GIL switch interval goes from 5 ms to 1 ms: every time the GUI thread needs the GIL back
      it may wait a full interval per competing upload or decoding thread.
    - The heap built at start-up (Qt, numpy, pydicom... hundreds of thousands of objects) is moved
      out of the garbage collector's sight with ``gc.freeze()``: otherwise a full collection, which
      holds the GIL, scans it all and stalled the GUI for ~50 ms during a 1000-slice upload.

    Measured with ``benchmarks/gui_responsiveness.py``; the cost is a few percent of the workers'
    throughput.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    if sys.getswitchinterval() > GUI_SWITCH_INTERVAL:
        sys.setswitchinterval(GUI_SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


def active_work() -> int:
    """Threads still running in any live :class:`TaskRunner` pool or the global pool (for tests)."""
    total = QThreadPool.globalInstance().activeThreadCount()
    for runner in list(_RUNNERS):
        try:
            total += runner.pool.activeThreadCount()
        except RuntimeError:  # the C++ side is gone
            continue
    return total
