"""One way to set up the app's table views and their models, cheap enough for thousands of rows.

``ResizeToContents`` columns make Qt measure every row whenever a layout is recomputed (a label's
text changing next to the table is enough); with 1000 upload rows that cost 100-200 ms per progress
refresh. Large tables therefore get fixed, interactive column widths; small ones may size to contents
but only ever measure a bounded number of rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

ModelIndex = QModelIndex | QPersistentModelIndex

ROW_HEIGHT = 22
MEASURED_ROWS = 64


def make_table(
    model: QAbstractItemModel,
    name: str,
    widths: Mapping[int, int] | None = None,
    *,
    fit_contents: bool = False,
    stretch: int | None = None,
) -> QTableView:
    """A read-only, row-selecting table over ``model``.

    ``widths`` fixes column widths (the last column stretches unless ``stretch`` names another);
    ``fit_contents`` sizes columns to their contents, measuring at most :data:`MEASURED_ROWS` rows.
    """
    table = QTableView()
    table.setObjectName(name)
    table.setModel(model)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setAlternatingRowColors(True)
    table.setWordWrap(False)
    vertical = table.verticalHeader()
    vertical.setVisible(False)
    vertical.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    vertical.setDefaultSectionSize(ROW_HEIGHT)
    header = table.horizontalHeader()
    header.setResizeContentsPrecision(MEASURED_ROWS)
    header.setSectionResizeMode(
        QHeaderView.ResizeMode.ResizeToContents if fit_contents else QHeaderView.ResizeMode.Interactive
    )
    for column, width in (widths or {}).items():
        table.setColumnWidth(column, width)
    if stretch is not None:
        header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    else:
        header.setStretchLastSection(True)
    return table


class RowsModel(QAbstractTableModel):
    """A read-only table over a list of rows (API dicts, or e.g. ``MaskRow``); subclasses say how each
    column reads (``cell``), and optionally its colour and the row's tooltip."""

    HEADERS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Any] = []

    def set_items(self, items: list[Any]) -> None:
        """Replace the rows."""
        self.beginResetModel()
        self.items = list(items)
        self.endResetModel()

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt API
        return 0 if parent.isValid() else len(self.items)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt API
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def cell(self, item: Any, column: int) -> Any:
        raise NotImplementedError

    def colour(self, item: Any, column: int) -> str | None:  # noqa: ARG002 - overridden
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        item = self.items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.cell(item, index.column())
        if role == Qt.ItemDataRole.ForegroundRole and (colour := self.colour(item, index.column())):
            return QColor(colour)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.tooltip(item)
        return None

    def tooltip(self, item: Any) -> str | None:  # noqa: ARG002 - overridden
        return None
