"""One way to set up the app's table views, cheap enough for tables of thousands of rows.

``ResizeToContents`` columns make Qt measure every row whenever a layout is recomputed (a label's
text changing next to the table is enough); with 1000 upload rows that cost 100-200 ms per progress
refresh. Large tables therefore get fixed, interactive column widths; small ones may size to contents
but only ever measure a bounded number of rows.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import QAbstractItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

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
