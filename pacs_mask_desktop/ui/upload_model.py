"""The per-slice upload table and the queue that carries engine events to it.

The upload engine reports from its PUT threads, possibly thousands of events a second. Sending each
one as a queued Qt signal would flood the GUI thread's event loop, so engine threads only append to
an :class:`EventQueue` (a lock-free ``deque`` append) and the panel drains it on a timer at ~15 Hz,
applying a whole batch to :class:`UploadTableModel`.

The table model is a ``QStandardItemModel`` (its ``data()`` is C++), not a Python model: painting
a Python model calls into Python for every visible cell and role, each call waiting for the GIL that
the upload threads keep taking, which stalled the GUI for tens of milliseconds per repaint. Here
Python only sets the texts of the rows that changed; Qt paints without the interpreter.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QStandardItem, QStandardItemModel

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


def _item(text: str, *, right: bool = False) -> QStandardItem:
    # Items are not made read-only one by one: the table's view has no edit triggers, and setEditable() on
    # 6000 items was 23 ms of the GUI thread's longest stall when an upload starts (measured).
    item = QStandardItem(text)
    if right:
        item.setTextAlignment(_RIGHT)
    return item


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

    def set_plan(self, plan: UploadPlan) -> None:
        """One queued row per planned slice (1000 rows: ~35 ms on the GUI thread of the 2-core machine)."""
        self.clear_rows()
        self.rows = [
            UploadRow(s.filename, s.slice_index, s.size)
            for s in sorted(plan.slices, key=lambda s: s.slice_index)
        ]
        self._row_of = {row.filename: i for i, row in enumerate(self.rows)}
        self.states = Counter({SliceState.QUEUED: len(self.rows)})
        for row in self.rows:
            status = _item(STATE_TEXT[row.state])
            status.setForeground(_BRUSH[row.state])
            self.appendRow(
                [
                    _item(str(row.slice_index), right=True),  # 0-based, like the file names
                    _item(row.filename),
                    status,
                    _item(human_bytes(row.size), right=True),
                    _item("", right=True),
                    _item(""),
                ]
            )

    def clear_rows(self) -> None:
        """No upload."""
        self.removeRows(0, self.rowCount())
        self.rows, self._row_of = [], {}
        self.states, self.retries = Counter(), 0

    def apply(self, events: list[SliceEvent]) -> None:
        """Apply a batch of slice events to the rows they name (only changed cells are touched)."""
        for event in events:
            i = self._row_of.get(event.filename)
            if i is None:
                continue
            row = self.rows[i]
            if row.state in (SliceState.DONE, SliceState.SKIPPED) and event.state is SliceState.QUEUED:
                continue
            if row.state is not event.state:
                self.states[row.state] -= 1
                self.states[event.state] += 1
                row.state = event.state
                status = self.item(i, COLUMN_STATUS)
                status.setText(STATE_TEXT[event.state])
                status.setForeground(_BRUSH[event.state])
            if event.attempt > row.attempts:
                before = row.retries
                row.attempts = event.attempt
                self.retries += row.retries - before
                self.item(i, COLUMN_RETRIES).setText(str(row.retries) if row.retries else "")
            failing = event.state in (SliceState.FAILED, SliceState.RETRYING)
            error = (event.error or "") if failing else ""
            if (failing or event.state in (SliceState.DONE, SliceState.SKIPPED)) and error != row.error:
                row.error = error
                cell = self.item(i, COLUMN_ERROR)
                cell.setText(error)
                cell.setToolTip(error)

    def first_row_in(self, states: tuple[SliceState, ...]) -> int | None:
        """The first row in one of ``states`` (to scroll to failures)."""
        return next((i for i, row in enumerate(self.rows) if row.state in states), None)

    def count(self, *states: SliceState) -> int:
        """Rows currently in any of ``states``."""
        return sum(self.states[state] for state in states)
