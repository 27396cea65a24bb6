"""The annotation picker: search the server's annotations, pick one, or create one for the open series.

Searching runs through ``ApiClient.list_annotations`` in a worker, debounced while typing; only the
answer to the latest query is shown.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.dicom_series import Series
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.workspace import SeriesSource
from pacs_mask_desktop.ui.formatting import failure_text, short_time
from pacs_mask_desktop.ui.tables import RowsModel, make_table
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure
from server.contract.messages import AnnotationOut

ModelIndex = QModelIndex | QPersistentModelIndex


class AnnotationModel(RowsModel):
    """Annotations as rows: id, patient, description, groups, series UID."""

    HEADERS = ("ID", "Description", "Patient", "Groups")

    def row_of(self, annotation_id: int) -> int | None:
        """Row number of ``annotation_id``."""
        return next((i for i, item in enumerate(self.items) if item.id == annotation_id), None)

    def cell(self, item: AnnotationOut, column: int) -> Any:
        return (
            item.id,
            item.description or "",
            item.patient_id or "",
            item.group_count,
        )[column]

    def tooltip(self, item: AnnotationOut) -> str | None:
        return (
            f"{item.description or '(no description)'}\nStudy {item.study_instance_uid}\n"
            f"Series {item.series_instance_uid}\nCreated {short_time(item.created_at)} by "
            f"{item.created_by}"
        )


def _search(_context: WorkContext, api: ApiClient, text: str) -> list[AnnotationOut]:
    return api.list_annotations(text or None)


def _create(
    _context: WorkContext, api: ApiClient, series: Series, source: SeriesSource | None = None
) -> AnnotationOut:
    for item in api.list_annotations(series.series_instance_uid):
        if item.series_instance_uid == series.series_instance_uid:
            return item
    description = series.description or f"{series.modality} series"
    if source is not None and source.kind == "pacs":
        # The server reads the series' geometry from the PACS itself (the authority, not our copy).
        return api.create_annotation_from_pacs(
            series.series_instance_uid,
            study_instance_uid=source.study_instance_uid,
            description=description[:512],
        )
    return api.create_annotation(
        series.study_instance_uid,
        series.series_instance_uid,
        patient_id=series.patient_id or None,
        description=description[:512],
        series=geometry_from_series(series),  # the server records and re-checks the folder's geometry
    )


class AnnotationPicker(QWidget):
    """Search box, results table, "Create from open series"; emits the chosen annotation."""

    annotationChosen = Signal(object)  # AnnotationOut from the API
    annotationClicked = Signal(object)  # the same, only when a person picked it in the table
    statusMessage = Signal(str)
    searched = Signal()

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.series: Series | None = None
        self.source: SeriesSource | None = None
        self.current: AnnotationOut | None = None
        self._query_serial = 0
        self._select_after_search: int | None = None

        self.search = QLineEdit()
        self.search.setObjectName("annotationSearch")
        self.search.setPlaceholderText("Search patient, description, UID or id…")
        self.search.setClearButtonEnabled(True)
        self.model = AnnotationModel()
        self.table = make_table(self.model, "annotationTable", fit_contents=True, stretch=1)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.create_button = QPushButton("Create from open series")
        self.create_button.setToolTip("Register the open DICOM series as a new annotation on the server")
        self.create_button.setEnabled(False)
        self.refresh_button = QPushButton("Refresh")
        self.current_label = QLabel("No annotation selected.")
        self.current_label.setObjectName("currentAnnotation")
        self.current_label.setWordWrap(True)

        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        buttons.addWidget(self.create_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.search)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.current_label)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _text: self._debounce.start())
        self.refresh_button.clicked.connect(self.refresh)
        self.create_button.clicked.connect(self.create_from_series)
        self.table.clicked.connect(self._on_clicked)
        self.table.activated.connect(self._on_clicked)

    def set_api(self, api: ApiClient | None) -> None:
        """Connected (or disconnected): search again."""
        self.api = api
        self._update_create_button()
        if api is not None:
            self.refresh()

    def set_series(self, series: Series | None, source: SeriesSource | None = None) -> None:
        """The open series and where it came from (enables "Create from open series")."""
        self.series = series
        self.source = source
        self._update_create_button()

    def clear_choice(self) -> None:
        """No annotation is chosen any more (another series was opened)."""
        self.current = None
        self.table.clearSelection()
        self._show_current()

    def _update_create_button(self) -> None:
        self.create_button.setEnabled(self.api is not None and self.series is not None)

    def refresh(self, select: int | None = None) -> None:
        """Search with the current text; optionally select ``select`` (an annotation id) afterwards."""
        if self.api is None:
            return
        if isinstance(select, int):
            self._select_after_search = select
        self._query_serial += 1
        serial = self._query_serial
        self._runner.start(
            _search,
            self.api,
            self.search.text().strip(),
            on_result=lambda items: self._on_results(serial, items),
            on_error=self._on_error,
            name="annotations",
        )

    def _on_results(self, serial: int, items: list[AnnotationOut]) -> None:
        if serial != self._query_serial:
            return
        self.model.set_items(items)
        if self.current is not None and (row := self.model.row_of(self.current.id)) is not None:
            self.current = self.model.items[row]  # fresher group count
            self._show_current()
        wanted = self._select_after_search or (self.current.id if self.current else None)
        self._select_after_search = None
        if wanted is not None and (row := self.model.row_of(wanted)) is not None:
            self.table.selectRow(row)
            if self.current is None or self.current.id != wanted:
                self._choose(self.model.items[row])
        self.searched.emit()

    def _on_error(self, failure: WorkFailure) -> None:
        self.statusMessage.emit(f"Cannot search annotations: {failure_text(failure)}")

    def _on_clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            item = self.model.items[index.row()]
            self._choose(item)
            self.annotationClicked.emit(item)

    def _choose(self, item: AnnotationOut) -> None:
        self.current = item
        self._show_current()
        self.annotationChosen.emit(item)

    def _show_current(self) -> None:
        item = self.current
        if item is None:
            self.current_label.setText("No annotation selected.")
            return
        self.current_label.setText(
            f"Annotation {item.id}: {item.description or '(no description)'} — patient "
            f"{item.patient_id or '?'}, {item.group_count} group(s)"
        )

    def choose(self, item: AnnotationOut) -> None:
        """Make ``item`` the current annotation now, and show it selected in the list."""
        self._choose(item)
        self.select_annotation(int(item.id))

    def select_annotation(self, annotation_id: int) -> None:
        """Select ``annotation_id`` (searching for it first)."""
        self.search.blockSignals(True)
        self.search.clear()
        self.search.blockSignals(False)
        self.refresh(select=annotation_id)

    def create_from_series(self) -> None:
        """Register the open series as an annotation (or reuse the one that names it) and select it."""
        if self.api is None or self.series is None:
            return
        self.create_button.setEnabled(False)
        self._runner.start(
            _create,
            self.api,
            self.series,
            self.source,
            on_result=self._on_created,
            on_error=self._on_error,
            on_finished=self._update_create_button,
            name="create annotation",
        )

    def _on_created(self, item: AnnotationOut) -> None:
        self.statusMessage.emit(f"Annotation {item.id} is selected for the open series.")
        self.select_annotation(int(item.id))
