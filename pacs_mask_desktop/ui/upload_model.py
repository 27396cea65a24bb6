"""The per-slice upload table and the queue that carries engine events to it.

The upload engine reports from its PUT threads, possibly thousands of events a second. Sending each
one as a queued Qt signal would flood the GUI thread's event loop, so engine threads only append to
an :class:`EventQueue` (a lock-free ``deque`` append) and the panel drains it on a timer at ~15 Hz,
applying a whole batch to :class:`UploadTableModel`.

The table model is a ``QStandardItemModel`` (its ``data()`` is C++), not a Python model: painting
a Python model calls into Python for every visible cell and role, each call waiting for the GIL that
the upload threads keep taking, which stalled the GUI for tens of milliseconds per repaint. Here
Python only sets the texts of the rows that changed; Qt paints without the interpreter.

The rows of a new upload are built before its threads start: once they run, every call the GUI
thread makes into Qt gives up the GIL and waits for it again, so building rows while uploading made the
longest GUI stall worse, not better. The first ``BUILD_FIRST`` rows are built at once (1000 rows:
13 ms idle), the rest of a larger plan a chunk per turn of the event loop. Events for rows not built
yet update their Python side; the row is built from it. Cells are written with ``setItemData`` (one
call a cell), so the model makes its items in C++ and no Python wrapper exists for them: removing the
1000 rows of the last upload took 2.4 ms idle with wrapped items, 0.2 ms without (and far longer while
other threads held the GIL, as each wrapper's teardown waits for it).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QStandardItemModel

from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState
from pacs_mask_desktop.core.plan import UploadPlan
from pacs_mask_desktop.ui.formatting import human_bytes

STATE_COLOUR = {
    SliceState.QUEUED: "#8a9099",
    SliceState.UPLOADING: "#4da3ff",
    SliceState.RETRYING: "#ffb020",
    SliceState.DONE: "#3ddc84",
    SliceState.SKIPPED: "#3ddc84",
    SliceState.FAILED: "#ff5c5c",
}
STATE_TEXT = {
    SliceState.QUEUED: "queued",
    SliceState.UPLOADING: "uploading",
    SliceState.RETRYING: "retrying",
    SliceState.DONE: "done",
    SliceState.SKIPPED: "already stored",
    SliceState.FAILED: "failed",
}
TERMINAL = (SliceState.DONE, SliceState.SKIPPED, SliceState.FAILED)
COLUMN_STATUS, COLUMN_RETRIES, COLUMN_ERROR = 2, 4, 5
_BRUSH = {state: QBrush(QColor(colour)) for state, colour in STATE_COLOUR.items()}
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
BUILD_FIRST = 2000
"""Rows built at once when a plan is set, before the upload's threads start (2000 rows: ~30 ms idle)."""
BUILD_CHUNK = 64
"""Rows built per turn of the event loop after the first ``BUILD_FIRST``, while the upload runs."""
_DISPLAY, _ALIGN, _COLOUR, _TIP = (
    Qt.ItemDataRole.DisplayRole,
    Qt.ItemDataRole.TextAlignmentRole,
    Qt.ItemDataRole.ForegroundRole,
    Qt.ItemDataRole.ToolTipRole,
)


class EventQueue:
    """Engine events waiting for the GUI thread (``deque`` appends and pops are thread-safe)."""

    def __init__(self) -> None:
        self._events: deque[SliceEvent | GroupEvent] = deque()

    def push(self, event: SliceEvent | GroupEvent) -> None:
        """Called on engine threads."""
        self._events.append(event)

    def drain(self) -> list[SliceEvent | GroupEvent]:
        """Everything queued so far (GUI thread)."""
        out: list[SliceEvent | GroupEvent] = []
        pop = self._events.popleft
        while True:
            try:
                out.append(pop())
            except IndexError:
                return out


@dataclass(slots=True)
class UploadRow:
    """One slice's line in the table (the Python side of the row)."""

    filename: str
    slice_index: int
    size: int
    state: SliceState = SliceState.QUEUED
    attempts: int = 0
    error: str = ""

    @property
    def retries(self) -> int:
        """Tries beyond the first."""
        return max(0, self.attempts - 1)


class UploadTableModel(QStandardItemModel):
    """Slice, file, status, bytes, retries, error for every slice of the running upload."""

    HEADERS = ("Slice", "File", "Status", "Bytes", "Retries", "Error")

    def __init__(self) -> None:
        super().__init__(0, len(self.HEADERS))
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        self.rows: list[UploadRow] = []
        self._row_of: dict[str, int] = {}
        self.states: Counter[SliceState] = Counter()
        """Rows per state, kept up to date by :meth:`apply` (no per-refresh scan of 1000s of rows)."""
        self.retries = 0
        self._generation = 0  # bumped by every new plan: chunks still scheduled for an older one stop

    def set_plan(self, plan: UploadPlan) -> None:
        """One queued row per planned slice, built before the upload starts (module docstring)."""
        self.clear_rows()
        self.rows = [
            UploadRow(s.filename, s.slice_index, s.size)
            for s in sorted(plan.slices, key=lambda s: s.slice_index)
        ]
        self._row_of = {row.filename: i for i, row in enumerate(self.rows)}
        self.states = Counter({SliceState.QUEUED: len(self.rows)})
        self._build_rows(self._generation)

    @property
    def building(self) -> bool:
        """True while some rows of the plan are not in the table yet."""
        return self.rowCount() < len(self.rows)

    def _build_rows(self, generation: int) -> None:
        if generation != self._generation:
            return  # another plan (or none) since this was scheduled
        start = self.rowCount()
        chunk = self.rows[start : start + (BUILD_CHUNK if start else BUILD_FIRST)]
        self.insertRows(start, len(chunk))
        cell, put = self.index, self.setItemData
        for i, row in enumerate(chunk, start):
            put(cell(i, 0), {_DISPLAY: str(row.slice_index), _ALIGN: _RIGHT})  # 0-based, like the files
            put(cell(i, 1), {_DISPLAY: row.filename})
            put(cell(i, COLUMN_STATUS), {_DISPLAY: STATE_TEXT[row.state], _COLOUR: _BRUSH[row.state]})
            put(cell(i, 3), {_DISPLAY: human_bytes(row.size), _ALIGN: _RIGHT})
            put(cell(i, COLUMN_RETRIES), {_DISPLAY: str(row.retries) if row.retries else "", _ALIGN: _RIGHT})
            if row.error:
                put(cell(i, COLUMN_ERROR), {_DISPLAY: row.error, _TIP: row.error})
        if self.building:
            QTimer.singleShot(0, lambda: self._build_rows(generation))

    def clear_rows(self) -> None:
        """No upload."""
        self._generation += 1
        self.removeRows(0, self.rowCount())
        self.rows, self._row_of = [], {}
        self.states, self.retries = Counter(), 0

    def apply(self, events: list[SliceEvent]) -> None:
        """Apply a batch of slice events to the rows they name (only changed cells are touched)."""
        built = self.rowCount()
        for event in events:
            i = self._row_of.get(event.filename)
            if i is None:
                continue
            row = self.rows[i]
            if row.state in (SliceState.DONE, SliceState.SKIPPED) and event.state is SliceState.QUEUED:
                continue
            shown = i < built  # a row not built yet is built later from ``row``
            if row.state is not event.state:
                self.states[row.state] -= 1
                self.states[event.state] += 1
                row.state = event.state
                if shown:
                    self.setItemData(
                        self.index(i, COLUMN_STATUS),
                        {_DISPLAY: STATE_TEXT[event.state], _COLOUR: _BRUSH[event.state]},
                    )
            if event.attempt > row.attempts:
                before = row.retries
                row.attempts = event.attempt
                self.retries += row.retries - before
                if shown:
                    self.setData(self.index(i, COLUMN_RETRIES), str(row.retries) if row.retries else "")
            failing = event.state in (SliceState.FAILED, SliceState.RETRYING)
            error = (event.error or "") if failing else ""
            if (failing or event.state in (SliceState.DONE, SliceState.SKIPPED)) and error != row.error:
                row.error = error
                if shown:
                    self.setItemData(self.index(i, COLUMN_ERROR), {_DISPLAY: error, _TIP: error})

    def first_row_in(self, states: tuple[SliceState, ...]) -> int | None:
        """The first row in one of ``states`` (to scroll to failures)."""
        return next((i for i, row in enumerate(self.rows) if row.state in states), None)

    def count(self, *states: SliceState) -> int:
        """Rows currently in any of ``states``."""
        return sum(self.states[state] for state in states)
