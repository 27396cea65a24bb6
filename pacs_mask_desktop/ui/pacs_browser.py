"""File ▸ Open from PACS (Ctrl+Shift+O): search studies, list a study's series, open one.

Searches run in the window's worker pool (QIDO-RS through ``core.pacs.PacsClient``); the form's rules
(which filters, a reversed date range) live in ``core.pacs_open.StudyQuery``. A PACS that is down or
refuses the credentials shows its message in red in the dialog; the rest of the app keeps working.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from PySide6.QtCore import QDate, QModelIndex, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDateEdit,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.pacs import PacsClient, SeriesSummary, StudySummary
from pacs_mask_desktop.core.pacs_open import PacsSeriesRef, StudyFilters, StudyQuery
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.tables import RowsModel, make_table
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure

MODALITIES = ("", "CT", "MR", "PT", "US", "CR", "DX", "MG", "NM", "XA", "SEG")


def _dicom_date(value: str | None) -> str:
    """``20240131`` as ``2024-01-31`` (other values unchanged)."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _name(value: str | None) -> str:
    """A DICOM person name ``FAMILY^GIVEN`` as ``FAMILY, GIVEN``."""
    parts = [p for p in (value or "").split("^") if p]
    return ", ".join(parts[:2])


class StudyModel(RowsModel):
    """QIDO-RS study matches."""

    HEADERS = ("Patient ID", "Name", "Date", "Accession", "Description", "Modalities", "Series")

    def cell(self, item: StudySummary, column: int) -> Any:
        return (
            item.patient_id or "",
            _name(item.patient_name),
            _dicom_date(item.study_date),
            item.accession_number or "",
            item.description or "",
            "/".join(item.modalities),
            "" if item.series_count is None else item.series_count,
        )[column]

    def tooltip(self, item: StudySummary) -> str | None:
        return f"Study {item.study_instance_uid}"


class SeriesModel(RowsModel):
    """The series of the chosen study."""

    HEADERS = ("#", "Description", "Modality", "Instances")

    def cell(self, item: SeriesSummary, column: int) -> Any:
        return (
            "" if item.series_number is None else item.series_number,
            item.description or "",
            item.modality or "",
            "" if item.instance_count is None else item.instance_count,
        )[column]

    def tooltip(self, item: SeriesSummary) -> str | None:
        return f"Series {item.series_instance_uid}"


def _search_studies(_context: WorkContext, client: PacsClient, filters: StudyFilters) -> list[StudySummary]:
    return client.search_studies(**filters)


def _as_date(day: QDate) -> date:
    return date(day.year(), day.month(), day.day())


def _search_series(_context: WorkContext, client: PacsClient, study_uid: str) -> list[SeriesSummary]:
    return client.search_series(study_uid)


class PacsBrowser(QDialog):
    """Search the PACS and pick a series; emits :attr:`openRequested` with a :class:`PacsSeriesRef`."""

    openRequested = Signal(object)  # PacsSeriesRef
    studiesListed = Signal()
    seriesListed = Signal()
    failed = Signal(str)

    def __init__(
        self, runner: TaskRunner, client: PacsClient | None, problem: str = "", parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("pacsBrowser")
        self.setWindowTitle("Open from PACS")
        self.resize(1000, 620)
        self._runner = runner
        self.client = client
        self._serial = 0

        self.patient_id = QLineEdit()
        self.patient_id.setObjectName("pacsPatientId")
        self.patient_name = QLineEdit()
        self.patient_name.setObjectName("pacsPatientName")
        self.patient_name.setPlaceholderText("part of the name")
        self.accession = QLineEdit()
        self.accession.setObjectName("pacsAccession")
        self.use_dates = QCheckBox("Study date")
        self.date_from = QDateEdit(QDate.currentDate().addYears(-1))
        self.date_to = QDateEdit(QDate.currentDate())
        for edit in (self.date_from, self.date_to):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd")
            edit.setEnabled(False)
        self.modality = QComboBox()
        self.modality.setObjectName("pacsModality")
        self.modality.setEditable(True)
        self.modality.addItems(list(MODALITIES))
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)

        form = QGridLayout()
        form.addWidget(QLabel("Patient ID"), 0, 0)
        form.addWidget(self.patient_id, 0, 1)
        form.addWidget(QLabel("Name"), 0, 2)
        form.addWidget(self.patient_name, 0, 3)
        form.addWidget(QLabel("Accession"), 0, 4)
        form.addWidget(self.accession, 0, 5)
        dates = QHBoxLayout()
        dates.addWidget(self.use_dates)
        dates.addWidget(self.date_from)
        dates.addWidget(QLabel("to"))
        dates.addWidget(self.date_to)
        dates.addStretch(1)
        form.addLayout(dates, 1, 0, 1, 4)
        form.addWidget(QLabel("Modality"), 1, 4)
        form.addWidget(self.modality, 1, 5)
        form.addWidget(self.search_button, 1, 6)

        self.studies = StudyModel()
        self.study_table = make_table(
            self.studies, "pacsStudies", {0: 110, 1: 170, 2: 90, 3: 100, 4: 220, 5: 95}
        )
        self.series = SeriesModel()
        self.series_table = make_table(self.series, "pacsSeries", {0: 40, 1: 320, 2: 85})
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.study_table)
        split.addWidget(self.series_table)
        split.setSizes([330, 200])

        self.message = QLabel(problem or self._where())
        self.message.setObjectName("pacsMessage")
        self.message.setWordWrap(True)
        self._set_error(bool(problem))
        self.open_button = QPushButton("Open series")
        self.open_button.setEnabled(False)
        close = QPushButton("Close")
        buttons = QHBoxLayout()
        buttons.addWidget(self.message, 1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(split, 1)
        layout.addLayout(buttons)

        self.use_dates.toggled.connect(self.date_from.setEnabled)
        self.use_dates.toggled.connect(self.date_to.setEnabled)
        self.search_button.clicked.connect(self.search)
        for line in (self.patient_id, self.patient_name, self.accession):
            line.returnPressed.connect(self.search)
        self.study_table.clicked.connect(self._on_study)
        self.study_table.activated.connect(self._on_study)
        self.series_table.clicked.connect(lambda _index: self.open_button.setEnabled(True))
        self.series_table.doubleClicked.connect(lambda _index: self.open_selected())
        self.open_button.clicked.connect(self.open_selected)
        close.clicked.connect(self.reject)
        self.search_button.setEnabled(client is not None)

    # --- state ------------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"PACS: {self.client.url}" if self.client is not None else ""

    def _set_error(self, error: bool) -> None:
        self.message.setStyleSheet("color: #ff6b6b;" if error else "")

    def _show(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self._set_error(error)
        if error:
            self.failed.emit(text)

    def query(self) -> StudyQuery:
        """The search form as a Qt-free query."""
        dates = self.use_dates.isChecked()
        return StudyQuery(
            patient_id=self.patient_id.text(),
            patient_name=self.patient_name.text(),
            accession_number=self.accession.text(),
            date_from=_as_date(self.date_from.date()) if dates else None,
            date_to=_as_date(self.date_to.date()) if dates else None,
            modality=self.modality.currentText(),
        )

    # --- searching --------------------------------------------------------------------------------

    def search(self) -> None:
        """Search studies with the form's filters (in a worker)."""
        if self.client is None:
            return
        try:
            filters = self.query().filters()
        except ValueError as exc:
            self._show(str(exc), error=True)
            return
        self._serial += 1
        serial = self._serial
        self.series.set_items([])
        self.open_button.setEnabled(False)
        self._show("Searching…")
        self._runner.start(
            _search_studies,
            self.client,
            filters,
            on_result=lambda found: self._on_studies(serial, found),
            on_error=self._on_error,
            name="pacs studies",
        )

    def _on_studies(self, serial: int, found: list[StudySummary]) -> None:
        if serial != self._serial:
            return
        self.studies.set_items(found)
        self._show(f"{len(found)} stud{'y' if len(found) == 1 else 'ies'} found. {self._where()}")
        if len(found) == 1:
            self.study_table.selectRow(0)
            self._on_study(self.studies.index(0, 0))
        self.studiesListed.emit()

    def _on_study(self, index: QModelIndex) -> None:
        if not index.isValid() or self.client is None:
            return
        study: StudySummary = self.studies.items[index.row()]
        self._serial += 1
        serial = self._serial
        self.open_button.setEnabled(False)
        self._show(f"Listing the series of study {study.description or study.study_instance_uid}…")
        self._runner.start(
            _search_series,
            self.client,
            study.study_instance_uid,
            on_result=lambda found: self._on_series(serial, found),
            on_error=self._on_error,
            name="pacs series",
        )

    def _on_series(self, serial: int, found: list[SeriesSummary]) -> None:
        if serial != self._serial:
            return
        self.series.set_items(found)
        self._show(f"{len(found)} series. Double-click one (or select it and Open series) to view it.")
        if found:
            self.series_table.selectRow(0)
            self.open_button.setEnabled(True)
        self.seriesListed.emit()

    def _on_error(self, failure: WorkFailure) -> None:
        self._show(
            f"{failure_text(failure)} Local DICOM folders still open with File ▸ Open DICOM series (Ctrl+O).",
            error=True,
        )

    # --- opening ----------------------------------------------------------------------------------

    def select_series(self, series_uid: str) -> bool:
        """Select the listed series ``series_uid`` (tests and scripts); False when it is not listed."""
        for row, item in enumerate(self.series.items):
            if item.series_instance_uid == series_uid:
                self.series_table.selectRow(row)
                self.open_button.setEnabled(True)
                return True
        return False

    def open_selected(self) -> None:
        """Open the selected series in the viewer and close the dialog."""
        rows = self.series_table.selectionModel().selectedRows()
        if not rows:
            return
        item: SeriesSummary = self.series.items[rows[0].row()]
        self.openRequested.emit(
            PacsSeriesRef(
                study_instance_uid=item.study_instance_uid,
                series_instance_uid=item.series_instance_uid,
                description=item.description or "",
                modality=item.modality or "",
                instance_count=item.instance_count,
            )
        )
        self.accept()
