"""The review queue: complete groups waiting for a decision, across all annotations, oldest first.

Review ▸ Queue… (Ctrl+R) shows the :class:`ReviewQueuePanel` (a dock under the viewer). It lists
``GET /api/review/queue`` (through ``ApiClient.review_queue`` in a worker) with filters for model, source
and uploader, a page at a time ("Load more" follows the server's cursor). Opening an item
(double-click, Enter or "Open") is :class:`QueueFlow`'s job:

1. the item's annotation and the group's slices are fetched (one worker);
2. the annotation's series is opened the way the app opens any series: it is used when already open,
   else reopened from the local folder it was last opened from on this computer, else streamed from the
   PACS (Settings or the server's), else the reviewer is asked for its folder (the rule is
   :func:`pacs_mask_desktop.core.session.series_route`);
3. the annotation is chosen (its groups listed, the group selected) and the group opens in the Review
   tab, which starts at the group's first slice with a mask.

After a decision on the opened item the review panel offers the next one ("Next in queue"); which one,
and what the status bar says, is :class:`pacs_mask_desktop.core.session.ReviewQueueState`'s rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QModelIndex, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.pacs_open import PacsSeriesRef
from pacs_mask_desktop.core.session import item_title, person_name
from pacs_mask_desktop.ui.formatting import failure_text, short_time
from pacs_mask_desktop.ui.settings import remember_series_folder, series_folder
from pacs_mask_desktop.ui.tables import RowsModel, make_table
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure
from server.contract.messages import AnnotationOut, GroupOut, MaskOut, QueueItem, ReviewQueue

if TYPE_CHECKING:
    from pacs_mask_desktop.ui.main_window import MainWindow

PAGE_SIZE = 50
SOURCES = (("Any source", None), ("manual", "manual"), ("ai", "ai"))


class QueueModel(RowsModel):
    """Queue items: the group list's fields plus the annotation's patient and description."""

    HEADERS = (
        "Patient",
        "Annotation",
        "Model",
        "Version",
        "Source",
        "Uploaded by",
        "Completed",
        "Slices",
    )

    def cell(self, item: QueueItem, column: int) -> Any:
        patient = item.patient_id or ""
        if name := person_name(item.patient_name):
            patient = f"{name} ({patient})" if patient else name
        return (
            patient,
            item.annotation_description or f"annotation {item.annotation_id}",
            item.model_name,
            item.version,
            item.source,
            item.created_by,
            short_time(item.completed_at),
            item.slice_count,
        )[column]

    def tooltip(self, item: QueueItem) -> str | None:
        return f"Group {item.id} of annotation {item.annotation_id}\nDouble-click or Enter to review it."

    def row_of(self, group_id: str) -> int | None:
        """Row number of ``group_id``."""
        return next((i for i, item in enumerate(self.items) if item.id == group_id), None)


def _queue_page(
    _context: WorkContext, api: ApiClient, limit: int, cursor: str | None, filters: dict[str, Any]
) -> ReviewQueue:
    return api.review_queue(limit=limit, cursor=cursor, **filters)


def _queue_item_details(
    _context: WorkContext, api: ApiClient, item: QueueItem
) -> tuple[AnnotationOut, GroupOut, list[MaskOut]]:
    answer = api.group_with_slices(item.id)
    return api.get_annotation(item.annotation_id), answer.group, answer.items


class ReviewQueuePanel(QWidget):
    """Filters, the queue table, "Load more" and "Open"."""

    itemChosen = Signal(object)  # the QueueItem
    loaded = Signal(int)  # rows listed after a page arrived
    statusMessage = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.next_cursor: str | None = None
        self.page_size = PAGE_SIZE
        self._serial = 0

        self.model_filter = QLineEdit()
        self.model_filter.setObjectName("queueModelFilter")
        self.model_filter.setPlaceholderText("Model")
        self.model_filter.setClearButtonEnabled(True)
        self.source_filter = QComboBox()
        self.source_filter.setObjectName("queueSourceFilter")
        for title, value in SOURCES:
            self.source_filter.addItem(title, value)
        self.uploader_filter = QLineEdit()
        self.uploader_filter.setObjectName("queueUploaderFilter")
        self.uploader_filter.setPlaceholderText("Uploaded by")
        self.uploader_filter.setClearButtonEnabled(True)
        self.refresh_button = QPushButton("Refresh")
        filters = QHBoxLayout()
        filters.addWidget(QLabel("Filter"))
        filters.addWidget(self.model_filter, 2)
        filters.addWidget(self.source_filter)
        filters.addWidget(self.uploader_filter, 1)
        filters.addWidget(self.refresh_button)

        self.model = QueueModel()
        self.table = make_table(self.model, "queueTable", fit_contents=True, stretch=1)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.summary = QLabel("Connect to a server to see the review queue.")
        self.summary.setObjectName("queueSummary")
        self.more_button = QPushButton("Load more")
        self.more_button.setEnabled(False)
        self.open_button = QPushButton("Review selected")
        self.open_button.setObjectName("primaryButton")
        self.open_button.setEnabled(False)
        bottom = QHBoxLayout()
        bottom.addWidget(self.summary, 1)
        bottom.addWidget(self.more_button)
        bottom.addWidget(self.open_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(filters)
        layout.addWidget(self.table, 1)
        layout.addLayout(bottom)

        self.refresh_button.clicked.connect(self.refresh)
        self.model_filter.returnPressed.connect(self.refresh)
        self.uploader_filter.returnPressed.connect(self.refresh)
        self.source_filter.activated.connect(lambda _row: self.refresh())
        self.more_button.clicked.connect(self.load_more)
        self.open_button.clicked.connect(self.open_selected)
        self.table.activated.connect(lambda _index: self.open_selected())
        self.table.doubleClicked.connect(lambda _index: self.open_selected())
        self.table.selectionModel().currentRowChanged.connect(self._on_row)

    def set_api(self, api: ApiClient | None) -> None:
        """Connected to a server (the list is loaded when the panel is shown)."""
        self.api = api

    def filters(self) -> dict[str, Any]:
        """The queue filters as ``ApiClient.review_queue`` keywords (empty ones left out)."""
        return {
            "model_name": self.model_filter.text().strip() or None,
            "source": self.source_filter.currentData(),
            "created_by": self.uploader_filter.text().strip() or None,
        }

    def refresh(self) -> None:
        """Load the first page again with the current filters."""
        self._load(None)

    def load_more(self) -> None:
        """Append the next page (the server's cursor)."""
        if self.next_cursor:
            self._load(self.next_cursor)

    def _load(self, cursor: str | None, then: Callable[[], None] | None = None) -> None:
        if self.api is None:
            return
        self._serial += 1
        serial = self._serial
        self.more_button.setEnabled(False)
        self.summary.setText("Loading the review queue…")
        self._runner.start(
            _queue_page,
            self.api,
            self.page_size,
            cursor,
            self.filters(),
            on_result=lambda answer: self._on_page(serial, cursor, answer, then),
            on_error=self._on_error,
            name="review queue",
        )

    def _on_page(
        self, serial: int, cursor: str | None, answer: ReviewQueue, then: Callable[[], None] | None
    ) -> None:
        if serial != self._serial:
            return
        known = {item.id for item in self.model.items} if cursor else set()
        fresh = [item for item in answer.items if item.id not in known]
        keep = self.selected()
        self.model.set_items((self.model.items if cursor else []) + fresh)
        self.next_cursor = answer.next_cursor
        self._show_summary()
        if keep is not None and (row := self.model.row_of(keep.id)) is not None:
            self.table.selectRow(row)
        self.loaded.emit(self.model.rowCount())
        if then is not None:
            then()

    def _show_summary(self) -> None:
        count = self.model.rowCount()
        more = " (more on the server: Load more)" if self.next_cursor else ""
        self.summary.setText(
            f"{count} group(s) waiting for review{more}" if count or more else "Nothing waiting for review."
        )
        self.more_button.setEnabled(bool(self.next_cursor))

    def _on_error(self, failure: WorkFailure) -> None:
        self.summary.setText(f"Cannot read the review queue: {failure_text(failure)}")
        self.statusMessage.emit(self.summary.text())
        self.more_button.setEnabled(bool(self.next_cursor))

    def selected(self) -> QueueItem | None:
        """The selected queue item."""
        index = self.table.currentIndex()
        return self.model.items[index.row()] if index.isValid() else None

    def _on_row(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.open_button.setEnabled(current.isValid())

    def open_selected(self) -> None:
        """Review the selected item."""
        item = self.selected()
        if item is not None:
            self.itemChosen.emit(item)

    def select(self, group_id: str) -> bool:
        """Select ``group_id`` in the table (True when it is listed)."""
        row = self.model.row_of(group_id)
        if row is not None:
            self.table.selectRow(row)
        return row is not None

    def take(self, group_id: str) -> QueueItem | None:
        """Remove ``group_id`` (decided) from the list; returns the item that followed it, if any."""
        row = self.model.row_of(group_id)
        if row is None:
            return None
        items = list(self.model.items)
        del items[row]
        self.model.set_items(items)
        self._show_summary()
        if row < len(items):
            self.table.selectRow(row)
            return items[row]
        return None

    def fetch_more_then(self, then: Callable[[], None]) -> bool:
        """Load the next page and call ``then`` afterwards; False when the server has no more."""
        if not self.next_cursor:
            return False
        self._load(self.next_cursor, then)
        return True


class QueueFlow(QObject):
    """Opens queue items in the window (series, annotation, group, review) and offers the next one."""

    opened = Signal(object)  # the queue item, once its group is open in the review panel

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.panel = ReviewQueuePanel(window.runner)
        self.dock = QDockWidget("Review queue", window)
        self.dock.setObjectName("dock_review_queue")
        self.dock.setWidget(self.panel)
        self.dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        self.dock.hide()
        self.state = window.session.review_queue  # the item open in the review panel, the next one

        window.connected.connect(lambda _url: self._on_connected())
        window.seriesLoaded.connect(lambda _series: self._remember_folder())
        self.panel.itemChosen.connect(self.open_item)
        self.panel.statusMessage.connect(window.status)
        window.review.reviewRecorded.connect(self._on_reviewed)
        window.review.nextInQueueRequested.connect(self.open_next)

    def _on_connected(self) -> None:
        self.panel.set_api(self.window.api)
        if self.dock.isVisible():
            self.panel.refresh()

    def _remember_folder(self) -> None:
        source = self.window.workspace.source
        if source is not None and source.kind == "folder" and source.folder is not None:
            remember_series_folder(source.series_instance_uid, str(source.folder))

    def show_panel(self) -> None:
        """Review ▸ Queue: show the queue and load it."""
        self.dock.show()
        self.dock.raise_()
        self.panel.table.setFocus()
        self.panel.refresh()

    # --- opening an item ------------------------------------------------------------------------------

    def open_item(self, item: QueueItem) -> None:
        """Open ``item``'s series and annotation, then its group in the review panel."""
        api = self.window.api
        if api is None:
            return
        self.window.status(f"Opening {item_title(item)} from the review queue…")
        self.window.review.offer_next(None)
        self.window.runner.start(
            _queue_item_details,
            api,
            item,
            on_result=lambda answer: self._with_details(item, *answer),
            on_error=lambda failure: self.window.status(
                f"Cannot open the queue item: {failure_text(failure)}"
            ),
            name="queue item",
        )

    def _with_details(
        self,
        item: QueueItem,
        annotation: AnnotationOut,
        group: GroupOut,
        slices: list[MaskOut],
    ) -> None:
        window = self.window
        series_uid = annotation.series_instance_uid

        def review() -> None:
            if window.workspace.series_uid != series_uid:
                window.status(
                    f"The open series is not the series of annotation {annotation.id}; not reviewing."
                )
                return
            window.picker.choose(annotation)  # lists the annotation's groups
            window.groups.refresh(select=group.id)
            window.review_group(group, slices)
            self.state.opened(item)
            self.panel.select(item.id)
            self.opened.emit(item)

        folder = series_folder(series_uid)
        route = window.session.queue_route(series_uid, folder)
        if route == "open":
            if window.pacs_loader.busy:
                window.status(
                    "The series is still arriving from the PACS; open the item once it is complete."
                )
                return
            review()
        elif route == "folder" and folder is not None:
            window.open_series(Path(folder), then=review)
        elif route == "pacs":
            window.open_from_pacs(
                PacsSeriesRef(
                    annotation.study_instance_uid,
                    series_uid,
                    description=annotation.description or "",
                ),
                then=review,
            )
        elif (chosen := self.ask_for_folder(annotation)) is not None:
            window.open_series(chosen, then=review)

    def ask_for_folder(self, annotation: AnnotationOut) -> Path | None:
        """No local copy is known and no PACS is set up: ask where the annotation's series is."""
        folder = QFileDialog.getExistingDirectory(
            self.window,
            f"Folder of the series of annotation {annotation.id} (patient {annotation.patient_id or '?'})",
            str(Path.home()),
        )
        return Path(folder) if folder else None

    # --- after a decision -----------------------------------------------------------------------------

    def _on_reviewed(self, group: GroupOut) -> None:
        if not self.state.is_current(group.id):
            return
        step = self.state.decided(
            group, self.panel.take(group.id), more_on_server=bool(self.panel.next_cursor)
        )
        self.window.review.offer_next(step.offer)
        self.window.status(step.status)

    def open_next(self) -> None:
        """Open the item after the one just decided ("Next in queue")."""
        if self.state.upcoming is not None:
            self.open_item(self.state.upcoming)
            return
        listed = self.panel.model.rowCount()
        if not self.panel.fetch_more_then(lambda: self._open_row(listed)):
            self.window.review.offer_next(None)

    def _open_row(self, row: int) -> None:
        items = self.panel.model.items
        if row < len(items):
            self.open_item(items[row])
        else:
            self.window.review.offer_next(None)
            self.window.status("The review queue is empty.")
