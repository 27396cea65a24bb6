"""Counting an upload's progress from engine events: one place for the CLI bar and the desktop panel."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KB"``: sizes as the CLI and the desktop app print them."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@dataclass(slots=True)
class ProgressCounter:
    """Totals over every slice event seen so far (thread-safe).

    ``bytes_done`` counts what needs nothing more (sent now or already stored), for a bar;
    ``bytes_sent`` only what this run sent, for a transfer rate.
    """

    total: int = 0
    total_bytes: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0
    bytes_done: int = 0
    bytes_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _seen: set[str] = field(default_factory=set, repr=False)

    def feed(self, event: SliceEvent | GroupEvent) -> None:
        """Account for one event."""
        if not isinstance(event, SliceEvent):
            return
        with self._lock:
            if event.filename not in self._seen and event.state in (SliceState.QUEUED, SliceState.SKIPPED):
                self._seen.add(event.filename)
                self.total += 1
                self.total_bytes += event.size
            if event.state is SliceState.DONE:
                self.done += 1
                self.bytes_done += event.size
                self.bytes_sent += event.size
            elif event.state is SliceState.SKIPPED:
                self.skipped += 1
                self.bytes_done += event.size
            elif event.state is SliceState.FAILED:
                self.failed += 1
            elif event.state is SliceState.RETRYING:
                self.retries += 1

    @property
    def finished(self) -> int:
        """Slices that need nothing more (done now or earlier)."""
        return self.done + self.skipped

    def elapsed(self) -> float:
        """Seconds since counting started (never 0, so rates stay finite)."""
        return max(time.monotonic() - self.started, 1e-6)

    def rate(self) -> float:
        """Slices per second sent in this run."""
        return self.done / self.elapsed()

    def byte_rate(self) -> float:
        """Bytes per second sent in this run."""
        return self.bytes_sent / self.elapsed()
