"""Two groups of one annotation compared: both drawn on the series, Dice per slice and per label.

Groups ▸ "Compare with…" picks a second group. The server computes the numbers
(``GET /api/mask-group/{a}/compare/{b}`` through ``ApiClient.compare``, in a worker); this module shows
them and draws the masks:

- the first group (A) filled in its label colours, the second (B) as a white outline of its label
  borders (:class:`CompareSource`, one indexed image: A's labels, 255 where B has a border);
- a band under the slice slider, one cell per slice where either group has a mask, coloured by that
  slice's Dice (red 0 → amber → green 1; grey when both are empty for every label);
- a table of per-label Dice, voxel counts and volumes (mL) with the totals;
- "Next disagreement" (F9): the next slice after the one shown whose Dice is below the threshold.

Which slices disagree, where F9 goes and the summary sentence are rules of
:mod:`pacs_mask_desktop.core.session` (tested without Qt); this module only shows their answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, qRgba
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.session import (
    DEFAULT_DICE_THRESHOLD,
    compare_summary,
    disagreements,
    format_number,
    next_disagreement,
)
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.overlay_sources import GroupViewSource, OverlaySource
from pacs_mask_desktop.ui.render import LABEL_TABLE, mask_outline
from pacs_mask_desktop.ui.slice_marks import Mark, dice_colour
from pacs_mask_desktop.ui.tables import ROW_HEIGHT, RowsModel, make_table
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure
from server.contract.messages import Comparison, GroupOut, LabelComparison, MaskList, SliceComparison

if TYPE_CHECKING:
    from pacs_mask_desktop.ui.main_window import MainWindow

OUTLINE_VALUE = 255
"""The value that marks the second group's outline in a compare overlay (A's labels stay 1..254)."""
OUTLINE_COLOUR = "#ffffff"
LABEL_TABLE_MAX_HEIGHT = 180


def _compare_table() -> list[int]:
    table = list(LABEL_TABLE)
    colour = QColor(OUTLINE_COLOUR)
    table[OUTLINE_VALUE] = qRgba(colour.red(), colour.green(), colour.blue(), 255)
    return table


COMPARE_TABLE = _compare_table()


def compare_overlay(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """One label image of two masks: ``a``'s labels filled (1..254) and ``b``'s label borders as 255.

    ``None`` when neither has a mask. Masks of different shapes (not the same series) keep only ``a``.
    """
    first = a if a is not None else b
    if first is None:
        return None
    shape = first.shape
    out = np.zeros(shape, dtype=np.uint8)
    if a is not None:
        wide = a.astype(np.int64)
        out[:] = np.where(wide > 0, (wide - 1) % (OUTLINE_VALUE - 1) + 1, 0)
    if b is not None and b.shape == shape:
        out[mask_outline(b) > 0] = OUTLINE_VALUE
    return out


class CompareSource(OverlaySource):
    """Two stored groups drawn as one overlay (A filled, B outlined), each fetched through its view route."""

    kind = "compare"

    def __init__(self, first: GroupViewSource, second: GroupViewSource) -> None:
        a, b = first.group, second.group
        # Short: it shares the view's top edge with the orientation letter.
        super().__init__(
            f"{a.version} vs {b.version}"
            if a.model_name == b.model_name
            else f"{a.model_name} {a.version} vs {b.model_name} {b.version}"
        )
        self.first = first
        self.second = second
        self.colour_table = COMPARE_TABLE
        self.opaque_value = OUTLINE_VALUE
        self._notes: dict[int, str] = {}

    def indexes(self) -> list[int]:
        return sorted(set(self.first.indexes()) | set(self.second.indexes()))

    def has(self, index: int) -> bool:
        return self.first.has(index) or self.second.has(index)

    def note(self, index: int) -> str | None:
        """Why the second group's outline is not drawn on slice ``index`` (its mask has another size)."""
        return self._notes.get(index)

    def _read(self, index: int) -> np.ndarray | None:
        a, b = self.first.load(index), self.second.load(index)
        if a is not None and b is not None and a.shape != b.shape:
            self._notes[index] = (
                f"{self.second.title}'s mask of slice {index} is {b.shape[1]}×{b.shape[0]}, "
                f"{self.first.title}'s {a.shape[1]}×{a.shape[0]}: its outline is not drawn."
            )
        return compare_overlay(a, b)


_fmt = format_number


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One row of the per-label table: the label's name and the server's numbers for it."""

    name: str
    values: LabelComparison


class LabelDiceModel(RowsModel):
    """Per-label rows of the compare answer, then the totals."""

    HEADERS = ("Label", "Dice", "Voxels A", "Voxels B", "A (mL)", "B (mL)", "B − A (mL)")

    def cell(self, item: LabelRow, column: int) -> Any:
        values = item.values
        return (
            item.name,
            _fmt(values.dice),
            values.voxels_a,
            values.voxels_b,
            _fmt(values.volume_a_ml, 2),
            _fmt(values.volume_b_ml, 2),
            _fmt(values.volume_diff_ml, 2),
        )[column]

    def colour(self, item: LabelRow, column: int) -> str | None:
        return dice_colour(item.values.dice) if column == 1 and item.values.dice is not None else None


class SliceDiceModel(RowsModel):
    """One row per slice where either group has a mask: its Dice and voxel counts (all labels)."""

    HEADERS = ("Slice", "Dice", "Voxels A", "Voxels B")

    def cell(self, item: SliceComparison, column: int) -> Any:
        labels = item.labels.values()
        return (
            item.slice_index,
            _fmt(item.dice),
            sum(v.voxels_a for v in labels),
            sum(v.voxels_b for v in labels),
        )[column]

    def colour(self, item: SliceComparison, column: int) -> str | None:
        return dice_colour(item.dice) if column == 1 and item.dice is not None else None


def label_rows(answer: Comparison, names: Mapping[int, str]) -> list[LabelRow]:
    """The table rows: one per label (by value, named from the group's label table) and "All labels"."""
    rows = [
        LabelRow(f"{value}: {names.get(int(value), f'label {value}')}", values)
        for value, values in sorted(answer.labels.items(), key=lambda kv: int(kv[0]))
    ]
    rows.append(LabelRow("All labels", answer.totals))
    return rows


def _compare_task(
    _context: WorkContext, api: ApiClient, first: str, second: str
) -> tuple[Comparison, MaskList, MaskList]:
    return api.compare(first, second), api.group_with_slices(first), api.group_with_slices(second)


class ComparePanel(QWidget):
    """The compare tab: which groups, the legend, the per-label table and the disagreement stepper."""

    overlayReady = Signal(object)  # CompareSource
    marksChanged = Signal(object)  # list[Mark] for the Dice band
    sliceRequested = Signal(int)
    statusMessage = Signal(str)
    compared = Signal(object)  # the server's compare answer

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.answer: Comparison | None = None
        self.source: CompareSource | None = None
        self.current_slice = -1
        self._serial = 0

        self.title = QLabel('Select a group in the Groups tab and use "Compare with…".')
        self.title.setObjectName("panelTitle")
        self.title.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setObjectName("compareLegend")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.model = LabelDiceModel()
        self.table = make_table(self.model, "compareTable", fit_contents=True, stretch=0)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setMaximumHeight(LABEL_TABLE_MAX_HEIGHT)
        self.slice_model = SliceDiceModel()
        self.slice_table = make_table(self.slice_model, "compareSlices", {0: 60, 1: 70, 2: 90})
        self.slice_table.setToolTip("Click a slice to go there")
        self.summary = QLabel("")
        self.summary.setObjectName("compareSummary")
        self.summary.setWordWrap(True)
        self.threshold = QDoubleSpinBox()
        self.threshold.setObjectName("diceThreshold")
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(DEFAULT_DICE_THRESHOLD)
        self.threshold.setToolTip("Slices whose Dice is below this count as disagreements")
        self.next_button = QPushButton("Next disagreement (F9)")
        self.next_button.setObjectName("nextDisagreement")
        self.next_button.setEnabled(False)
        stepper = QHBoxLayout()
        stepper.addWidget(QLabel("Dice below"))
        stepper.addWidget(self.threshold)
        stepper.addStretch(1)
        stepper.addWidget(self.next_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addWidget(self.legend)
        layout.addWidget(self.table)
        layout.addWidget(QLabel("Per slice"))
        layout.addWidget(self.slice_table, 1)
        layout.addLayout(stepper)
        layout.addWidget(self.summary)

        self.next_button.clicked.connect(self.next_disagreement)
        self.slice_table.clicked.connect(
            lambda index: self.sliceRequested.emit(self.slice_model.items[index.row()].slice_index)
        )
        self.threshold.valueChanged.connect(lambda _value: self._show_summary())

    def set_api(self, api: ApiClient | None) -> None:
        """Connected to a server."""
        self.api = api

    def set_current_slice(self, index: int) -> None:
        """The slice the viewer shows ("Next disagreement" starts after it); selected in the slice table."""
        self.current_slice = index
        row = next((i for i, s in enumerate(self.slice_model.items) if s.slice_index == index), None)
        if row is None:
            self.slice_table.clearSelection()
        else:
            self.slice_table.selectRow(row)

    def compare(self, first: GroupOut, second: GroupOut) -> None:
        """Ask the server to compare ``first`` (filled) with ``second`` (outline), then show both."""
        if self.api is None:
            return
        self._serial += 1
        serial = self._serial
        self.title.setText(
            f"Comparing {first.model_name} {first.version} with {second.model_name} {second.version}…"
        )
        self.next_button.setEnabled(False)
        self._runner.start(
            _compare_task,
            self.api,
            first.id,
            second.id,
            on_result=lambda answer: self._on_compared(serial, *answer),
            on_error=self._on_failed,
            name="compare groups",
        )

    def _on_compared(self, serial: int, answer: Comparison, first: MaskList, second: MaskList) -> None:
        if serial != self._serial or self.api is None:
            return
        self.answer = answer
        group_a, group_b = first.group, second.group
        self.source = CompareSource(
            GroupViewSource(self.api, group_a, first.items),
            GroupViewSource(self.api, group_b, second.items),
        )
        names = {
            int(value): info.name or f"label {value}"
            for value, info in ((group_a.labels or {}) | (group_b.labels or {})).items()
        }
        self.title.setText(
            f"A: {group_a.model_name} {group_a.version} ({group_a.source})  vs  "
            f"B: {group_b.model_name} {group_b.version} ({group_b.source})"
        )
        self.legend.setText(
            "A is <b>filled</b> in its label colours, B is drawn as a "
            f"<b><span style='color:{OUTLINE_COLOUR}'>white outline</span></b>. "
            "The band under the slice slider is each slice's Dice "
            f"(<span style='color:{dice_colour(0.0)}'>0</span> → "
            f"<span style='color:{dice_colour(0.5)}'>0.5</span> → "
            f"<span style='color:{dice_colour(1.0)}'>1</span>); click it to go there."
        )
        self.model.set_items(label_rows(answer, names))
        rows_height = self.table.horizontalHeader().sizeHint().height() + ROW_HEIGHT * self.model.rowCount()
        self.table.setMaximumHeight(
            min(LABEL_TABLE_MAX_HEIGHT, rows_height + 2 * self.table.frameWidth() + 2)
        )
        self.slice_model.set_items(list(answer.slices))
        self.marksChanged.emit(
            [
                Mark(s.slice_index, dice_colour(s.dice), f"Slice {s.slice_index}: Dice {_fmt(s.dice)}")
                for s in answer.slices
            ]
        )
        self._show_summary()
        self.overlayReady.emit(self.source)
        self.compared.emit(answer)

    def _on_failed(self, failure: WorkFailure) -> None:
        self.title.setText(f"Cannot compare: {failure_text(failure)}")
        self.statusMessage.emit(self.title.text())

    def _show_summary(self) -> None:
        if self.answer is None:
            self.summary.setText("")
            return
        self.summary.setText(compare_summary(self.answer, self.threshold.value()))
        self.next_button.setEnabled(bool(disagreements(self.answer, self.threshold.value())))

    def next_disagreement(self) -> int | None:
        """Go to the next slice after the one shown whose Dice is below the threshold (wrapping)."""
        step = next_disagreement(self.answer, self.threshold.value(), self.current_slice)
        self.statusMessage.emit(step.message)
        if step.slice_index is not None:
            self.sliceRequested.emit(step.slice_index)
        return step.slice_index

    def clear(self) -> None:
        """Forget the comparison (another overlay or series replaced it)."""
        self._serial += 1
        self.answer = None
        self.source = None
        self.model.set_items([])
        self.slice_model.set_items([])
        self.legend.setText("")
        self.summary.setText("")
        self.next_button.setEnabled(False)
        self.title.setText('Select a group in the Groups tab and use "Compare with…".')
        self.marksChanged.emit([])


def install_compare(window: MainWindow) -> ComparePanel:
    """Add the Compare tab to ``window`` and wire it to the group browser and the viewer."""
    panel = ComparePanel(window.runner)
    window.tabs.addTab(panel, "Compare")
    viewer = window.viewer

    def show(source: CompareSource) -> None:
        problem = window.session.compare_view_blocker()
        if problem is not None:
            window.status(problem)
            return
        viewer.set_overlay(source)
        indexes = source.indexes()
        if indexes and viewer.view.index not in indexes:
            viewer.view.set_index(indexes[0])

    def start(first: GroupOut, second: GroupOut) -> None:
        window.tabs.setCurrentWidget(panel)
        panel.compare(first, second)

    def overlay_changed(overlay: OverlaySource | None) -> None:
        if overlay is not panel.source and panel.answer is not None:
            panel.marksChanged.emit([])  # the band belongs to the compare overlay

    def group_deleted(group_id: str) -> None:
        source = panel.source
        if source is not None and group_id in (source.first.group_id, source.second.group_id):
            if viewer.view.overlay is source:
                viewer.set_overlay(window.file_overlay)
            panel.clear()

    window.connected.connect(lambda _url: panel.set_api(window.api))
    window.groups.groupDeleted.connect(group_deleted)
    window.groups.compareRequested.connect(start)
    panel.overlayReady.connect(show)
    panel.marksChanged.connect(viewer.dice_strip.set_marks)
    panel.sliceRequested.connect(viewer.view.set_index)
    panel.statusMessage.connect(window.status)
    viewer.view.indexChanged.connect(panel.set_current_slice)
    viewer.overlayChanged.connect(overlay_changed)
    return panel
