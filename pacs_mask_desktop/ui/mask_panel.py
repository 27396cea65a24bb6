"""The matching table: each dropped mask file, the slice it belongs to and whether it can upload.

Rows and statuses come from the engine's ``prepare()`` (``core.plan``): ok, empty, size mismatch, no
matching slice, duplicate, unreadable, not a mask, bad file name, no index. Clicking a row shows that
slice; "Next problem" (F8) walks through the rows that block the upload.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.plan import STATUS_ORDER, UPLOADABLE_STATUSES, MaskRow, PreparedUpload
from pacs_mask_desktop.ui.tables import RowsModel, make_table

STATUS_TEXT = {
    "ok": "ok",
    "empty": "empty",
    "size_mismatch": "size mismatch",
    "no_matching_slice": "no matching slice",
    "duplicate": "duplicate",
    "unreadable": "unreadable",
    "not_a_mask": "not a mask",
    "bad_filename": "bad file name",
    "no_index": "no slice index",
}
STATUS_COLOUR = {
    "ok": "#3ddc84",
    "empty": "#8a9099",
    "size_mismatch": "#ffb020",
    "duplicate": "#ffb020",
    "no_matching_slice": "#ff9f43",
}
PROBLEM_COLOUR = "#ff5c5c"

ModelIndex = QModelIndex | QPersistentModelIndex


class MaskTableModel(RowsModel):
    """``prepare()`` rows (:class:`MaskRow`) as a table: slice, file, status, details."""

    HEADERS = ("Slice", "File", "Status", "Details")

    def cell(self, item: MaskRow, column: int) -> Any:
        if column == 0:
            return "" if item.slice_index is None else item.slice_index  # 0-based, as in mask_0007.png
        return (None, item.filename, STATUS_TEXT.get(item.status, item.status), item.message)[column]

    def colour(self, item: MaskRow, column: int) -> str | None:
        return STATUS_COLOUR.get(item.status, PROBLEM_COLOUR) if column == 2 else None

    def tooltip(self, item: MaskRow) -> str | None:
        return item.message or None

    def problem_rows(self) -> list[int]:
        """Row numbers whose status blocks the upload."""
        return [i for i, row in enumerate(self.items) if row.status not in UPLOADABLE_STATUSES]


class MaskPanel(QWidget):
    """Table of dropped masks with a summary and jump-to-problem."""

    sliceRequested = Signal(int)
    clearRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = MaskTableModel()
        self.prepared: PreparedUpload | None = None
        self.table = make_table(self.model, "maskTable", {0: 52, 1: 150, 2: 120})

        self.summary = QLabel(
            "Drop mask PNGs, a folder of masks, or a NIfTI / DICOM SEG file on the window "
            "(or File ▸ Add masks, Ctrl+M)."
        )
        self.summary.setObjectName("maskSummary")
        self.summary.setWordWrap(True)
        self.next_problem = QPushButton("Next problem (F8)")
        self.next_problem.setEnabled(False)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setEnabled(False)

        buttons = QHBoxLayout()
        buttons.addWidget(self.next_problem)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)

        self.table.clicked.connect(self._on_clicked)
        self.table.activated.connect(self._on_clicked)
        self.next_problem.clicked.connect(self.jump_to_next_problem)
        self.clear_button.clicked.connect(self.clearRequested)

    def set_busy(self, text: str) -> None:
        """Show that masks are being checked."""
        self.summary.setText(text)

    def set_prepared(self, prepared: PreparedUpload | None) -> None:
        """Show the result of ``prepare()`` (``None`` clears the table)."""
        self.prepared = prepared
        self.model.set_items(prepared.rows if prepared is not None else [])
        self.clear_button.setEnabled(prepared is not None)
        if prepared is None:
            self.summary.setText("No masks. Drop mask PNGs or a folder of masks on the window.")
            self.next_problem.setEnabled(False)
            return
        counts = Counter(row.status for row in prepared.rows)
        parts = [f"{counts[s]} {STATUS_TEXT.get(s, s)}" for s in STATUS_ORDER[::-1] if counts.get(s)]
        text = f"{len(prepared.rows)} files: " + ", ".join(parts)
        if prepared.missing_slices:
            text += f"; {len(prepared.missing_slices)} series slices have no mask"
        group_problems = [p.message for p in prepared.problems if p.filename is None]
        if group_problems:
            text += ". " + "; ".join(group_problems)
        self.summary.setText(text)
        self.next_problem.setEnabled(bool(self.model.problem_rows()))

    def status_of(self, filename: str) -> str | None:
        """The status shown for ``filename`` (for tests and scripts)."""
        return next((row.status for row in self.model.items if row.filename == filename), None)

    def jump_to_next_problem(self) -> int | None:
        """Select the next row that blocks the upload and show its slice; returns the row."""
        problems = self.model.problem_rows()
        if not problems:
            return None
        current = self.table.currentIndex().row()
        row = next((r for r in problems if r > current), problems[0])
        self.table.selectRow(row)
        self.table.scrollTo(self.model.index(row, 0))
        self._on_clicked(self.model.index(row, 0))
        return row

    def _on_clicked(self, index: QModelIndex) -> None:
        if not index.isValid():
            return
        slice_index = self.model.items[index.row()].slice_index
        if slice_index is not None:
            self.sliceRequested.emit(slice_index)
