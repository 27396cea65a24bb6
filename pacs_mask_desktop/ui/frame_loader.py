"""Decoding slices (and their overlay masks) off the GUI thread, latest request first, with prefetch.

The viewer asks for slice *i* plus a few neighbours in the scroll direction. One worker at a time
drains that queue: it decodes the wanted slice first (``Series.pixel_array``, which caches a bounded
number of frames), loads its mask from the overlay source, and hands both back to the GUI thread; then
it warms the neighbours. A newer request replaces the queue, so scrolling fast through a 1000-slice
series never builds a backlog, and a change of series or overlay bumps a generation number so late
frames of the old one are dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np
from PySide6.QtCore import QObject, Signal

from pacs_mask_desktop.core.dicom_series import Series
from pacs_mask_desktop.ui.overlay_sources import OverlaySource
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext

log = logging.getLogger(__name__)


class FrameLoader(QObject):
    """Loads ``(pixels, mask)`` for slice indexes in a worker; results arrive as :attr:`frameReady`."""

    frameReady = Signal(int, object, object)  # index, float32 pixels, label array or None
    frameFailed = Signal(int, str)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._lock = threading.Lock()
        self._queue: deque[int] = deque()
        self._generation = 0
        self._series: Series | None = None
        self._overlay: OverlaySource | None = None
        self._running = False

    def set_sources(self, series: Series | None, overlay: OverlaySource | None) -> None:
        """Switch series and/or overlay: forget queued work and frames still in flight."""
        with self._lock:
            self._generation += 1
            self._series = series
            self._overlay = overlay
            self._queue.clear()

    def request(self, indexes: list[int]) -> None:
        """Load ``indexes`` in this order (the first is the one on screen); replaces earlier requests."""
        with self._lock:
            self._queue = deque(indexes)
            if self._running or not indexes or self._series is None:
                return
            self._running = True
        self._runner.start(self._drain, on_progress=self._deliver, on_error=self._crashed, name="frames")

    def _next(self) -> tuple[int, Series, OverlaySource | None, int] | None:
        with self._lock:
            if not self._queue or self._series is None:
                self._running = False
                return None
            return self._generation, self._series, self._overlay, self._queue.popleft()

    def _drain(self, context: WorkContext) -> None:
        """Worker: decode queued slices until the queue is empty or the app cancels."""
        while not context.cancelled:
            job = self._next()
            if job is None:
                return
            generation, series, overlay, index = job
            try:
                pixels = series.pixel_array(index)
                mask = overlay.load(index) if overlay is not None else None
            except Exception as exc:  # a corrupt file must not stop the viewer
                log.warning("cannot load slice %d: %s", index, exc)
                context.report((generation, index, None, None, f"{exc.__class__.__name__}: {exc}"))
                continue
            context.report((generation, index, pixels, mask, None))
        with self._lock:
            self._running = False

    def _deliver(self, payload: tuple[int, int, np.ndarray | None, np.ndarray | None, str | None]) -> None:
        generation, index, pixels, mask, error = payload
        if generation != self._generation:
            return
        if error is not None:
            self.frameFailed.emit(index, error)
        else:
            self.frameReady.emit(index, pixels, mask)

    def _crashed(self, failure: object) -> None:
        with self._lock:
            self._running = False
        log.error("frame loader failed: %s", failure)
