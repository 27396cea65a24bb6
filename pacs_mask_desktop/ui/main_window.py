"""The main window: annotation picker, slice viewer, masks / upload / groups / review panels.

The window wires the panels together and runs every piece of file or network work through its
:class:`~pacs_mask_desktop.ui.workers.TaskRunner`: loading a series, checking dropped masks with
``core.plan.prepare``, uploading with ``core.upload.UploadEngine``, the API calls of the panels.
It never talks HTTP itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QTabWidget,
    QWidget,
)

from pacs_mask_desktop import __version__
from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.demo_setup import DemoData
from pacs_mask_desktop.core.dicom_series import Series
from pacs_mask_desktop.core.journal import JournalEntry
from pacs_mask_desktop.core.pacs import PacsClient, PacsError
from pacs_mask_desktop.core.pacs_open import PacsSeriesRef, desktop_pacs_client, pacs_url
from pacs_mask_desktop.core.paths import data_dir, journal_path, log_dir
from pacs_mask_desktop.core.plan import PreparedUpload
from pacs_mask_desktop.core.workspace import Cleared, SeriesSource, Workspace
from pacs_mask_desktop.ui import dialogs
from pacs_mask_desktop.ui.annotation_picker import AnnotationPicker
from pacs_mask_desktop.ui.compare_view import install_compare
from pacs_mask_desktop.ui.connection import Connection, is_loopback
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.group_browser import GroupBrowser
from pacs_mask_desktop.ui.mask_panel import OK_STATUSES, MaskPanel
from pacs_mask_desktop.ui.menus import SHORTCUTS_HELP, build_menus
from pacs_mask_desktop.ui.overlay_sources import GroupViewSource, MaskFileSource
from pacs_mask_desktop.ui.pacs_browser import PacsBrowser
from pacs_mask_desktop.ui.pacs_loader import PacsSeriesLoader
from pacs_mask_desktop.ui.resume_dialog import ResumeDialog
from pacs_mask_desktop.ui.review_panel import ReviewPanel
from pacs_mask_desktop.ui.review_queue import QueueFlow
from pacs_mask_desktop.ui.settings import (
    ServerConfig,
    SettingsDialog,
    app_settings,
    forget_upload_source,
    load_pacs_settings,
    pacs_password,
    remember_upload_source,
    save_pacs_settings,
    save_server_config,
    upload_source,
)
from pacs_mask_desktop.ui.upload_panel import UploadPanel
from pacs_mask_desktop.ui.viewer_panel import ViewerPanel
from pacs_mask_desktop.ui.volume_stage import FILE_FILTER as VOLUME_FILE_FILTER
from pacs_mask_desktop.ui.volume_stage import VolumeStage
from pacs_mask_desktop.ui.window_tasks import (
    classify_paths,
    demo_task,
    forget_upload,
    load_series_task,
    prepare_task,
    resume_lookup,
    unfinished_uploads,
)
from pacs_mask_desktop.ui.workers import TaskHandle, TaskRunner, WorkFailure, favour_gui_thread

log = logging.getLogger(__name__)

"""The resume journal in the data dir, shared with the ``pacs-mask`` CLI and the watch worker."""
STATUS_TIMEOUT_MS = 12_000
TAB_MASKS, TAB_UPLOAD, TAB_GROUPS, TAB_REVIEW, TAB_COMPARE = range(5)


# --- the window ----------------------------------------------------------------------------------------


class MainWindow(QMainWindow):
    """Everything the radiologist and the QA reviewer use, in one window."""

    connected = Signal(str)  # server URL
    seriesLoaded = Signal(object)  # Series
    seriesComplete = Signal(object)  # Series from the PACS: every instance is in the cache
    pacsBrowserOpened = Signal(object)  # PacsBrowser
    masksPrepared = Signal(object)  # PreparedUpload
    demoReady = Signal(object)  # DemoData
    resumeOffered = Signal(object)  # ResumeDialog

    def __init__(self, config: ServerConfig, *, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("PACS Mask Upload")
        self.setAcceptDrops(True)
        self.config = config
        self.journal_path = journal_path()
        self.confirm_quit_during_upload = True
        favour_gui_thread()
        self.runner = TaskRunner(self)
        self.connection = Connection(self.runner, self)
        self.api: ApiClient | None = None
        self.workspace = Workspace()
        self.series: Series | None = None
        self.series_dir: Path | None = None
        self.prepared: PreparedUpload | None = None
        self.file_overlay: MaskFileSource | None = None
        self._series_worker: TaskHandle | None = None
        self.server_config: dict[str, Any] | None = None  # GET /api/config once connected
        self.pacs_settings = load_pacs_settings()
        self._pacs_client: PacsClient | None = None
        self._pacs_then: Callable[[], None] | None = None
        self.pacs_loader = PacsSeriesLoader(self.runner, self)
        self._prepare_worker: TaskHandle | None = None
        self.volume_stage = VolumeStage()  # a dropped NIfTI/SEG file as PNG slices (ui/volume_stage.py)
        self._closing = False

        self.viewer = ViewerPanel(self.runner, self)
        self.setCentralWidget(self.viewer)
        self.picker = AnnotationPicker(self.runner)
        self.masks = MaskPanel()
        self.upload = UploadPanel(self.runner)
        self.groups = GroupBrowser(self.runner, self.journal_path)
        self.review = ReviewPanel(self.runner)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("sideTabs")
        self.tabs.addTab(self.masks, "Masks")
        self.tabs.addTab(self.upload, "Upload")
        self.tabs.addTab(self.groups, "Groups")
        self.tabs.addTab(self.review, "Review")
        self.left_dock = self._dock("Annotations", self.picker, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.right_dock = self._dock("Masks and groups", self.tabs, Qt.DockWidgetArea.RightDockWidgetArea)
        self.queue = QueueFlow(self)  # Review ▸ Queue: its dock and the open/next flow (ui/review_queue.py)
        self.compare = install_compare(self)  # the Compare tab (ui/compare_view.py)

        self.server_label = QLabel("Not connected")
        self.server_label.setObjectName("serverLabel")
        self.annotation_label = QLabel("No annotation")
        self.statusBar().addPermanentWidget(self.annotation_label)
        self.statusBar().addPermanentWidget(self.server_label)

        self.actions: dict[str, QAction] = build_menus(self)
        self._connect_signals()
        self._restore_layout()

    # --- construction -----------------------------------------------------------------------------

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{title.replace(' ', '_').lower()}")
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(area, dock)
        return dock

    def _connect_signals(self) -> None:
        self.connection.connected.connect(self._on_connected)
        self.connection.failed.connect(self._on_connection_failed)
        self.connection.starting.connect(self.status)
        self.picker.annotationChosen.connect(self.set_annotation)
        self.picker.statusMessage.connect(self.status)
        self.masks.sliceRequested.connect(self.viewer.view.set_index)
        self.masks.clearRequested.connect(self.clear_masks)
        self.upload.uploadRequested.connect(self.start_upload)
        self.upload.retryRequested.connect(self.retry_upload)
        self.upload.statusMessage.connect(self.status)
        self.upload.groupOpened.connect(self._on_group_opened)
        self.upload.uploadFinished.connect(self._on_upload_finished)
        self.groups.showRequested.connect(self.show_group)
        self.groups.reviewRequested.connect(self.review_group)
        self.groups.groupDeleted.connect(self._on_group_deleted)
        self.groups.statusMessage.connect(self.status)
        self.review.sliceRequested.connect(self.viewer.view.set_index)
        self.review.reviewRecorded.connect(self._on_reviewed)
        self.review.statusMessage.connect(self.status)
        self.review.marksChanged.connect(self._show_finding_marks)
        self.viewer.overlayChanged.connect(lambda _overlay: self._show_finding_marks(self.review.marks))
        self.viewer.view.indexChanged.connect(self.review.set_current_slice)
        self.viewer.view.statusMessage.connect(self.status)
        self.picker.annotationClicked.connect(self.offer_annotation_series)
        self.pacs_loader.seriesReady.connect(self._on_pacs_series)
        self.pacs_loader.progress.connect(self._on_pacs_progress)
        self.pacs_loader.completed.connect(self._on_pacs_complete)
        self.pacs_loader.failed.connect(self._on_pacs_failed)

    def _restore_layout(self) -> None:
        settings = app_settings()
        state = settings.value("window/state")
        if isinstance(state, QByteArray) and self.restoreState(state):
            return
        # First start: give the side panels room once the window has its real size (see showEvent).
        self._default_docks_pending = True

    def showEvent(self, event: QShowEvent) -> None:
        """On the first show without a saved layout, size the side panels; the viewer takes the rest."""
        super().showEvent(event)
        if getattr(self, "_default_docks_pending", False):
            self._default_docks_pending = False
            QTimer.singleShot(
                0,
                lambda: self.resizeDocks(
                    [self.left_dock, self.right_dock], [340, 620], Qt.Orientation.Horizontal
                ),
            )

    # --- state kept in the Qt-free workspace model ---------------------------------------------------

    @property
    def annotation(self) -> dict[str, Any] | None:
        """The chosen annotation (uploads go to it), ``None`` when none is chosen."""
        return self.workspace.annotation

    @annotation.setter
    def annotation(self, value: dict[str, Any] | None) -> None:
        self.workspace.annotation = value

    @property
    def mask_paths(self) -> list[Path]:
        """The dropped mask files and folders."""
        return self.workspace.mask_paths

    @mask_paths.setter
    def mask_paths(self, value: list[Path]) -> None:
        self.workspace.mask_paths = list(value)

    # --- small helpers ----------------------------------------------------------------------------

    def status(self, text: str, *, progress: bool = False) -> None:
        """A message in the status bar (logged unless it is a progress update)."""
        if not progress:
            log.info("status: %s", text)
        self.statusBar().showMessage(text, STATUS_TIMEOUT_MS)

    def _worker_error(self, title: str) -> Callable[[WorkFailure], None]:
        def handle(failure: WorkFailure) -> None:
            if not isinstance(failure.error, ApiError | OSError | ValueError):
                log.error("%s:\n%s", title, failure.traceback)
            text = failure_text(failure)
            self.status(f"{title}: {text}")
            if not self._closing:
                dialogs.show_error(self, title, f"{text}\n\nDetails are in the log: {log_dir()}")

        return handle

    # --- connection -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the configured (or bundled) server; call once after showing the window."""
        self.connection.connect_to(self.config)

    def _on_connected(self, api: ApiClient) -> None:
        self.api = api
        kind = "bundled server" if self.connection.is_embedded else "server"
        self.server_label.setText(f"● {kind} {self.connection.url}")
        self.server_label.setProperty("state", "ok")
        self._repolish(self.server_label)
        self.picker.set_api(api)
        self.groups.set_api(api)
        self.review.set_api(api)
        self.status(f"Connected to the {kind} at {self.connection.url}")
        self.server_config = None
        self._forget_pacs_client()
        self.runner.start(
            lambda _context: api.server_config(),
            on_result=self._on_server_config,
            on_error=lambda failure: self.status(
                f"The server did not say where its PACS is: {failure_text(failure)}"
            ),
            name="server config",
        )
        self.connected.emit(self.connection.url)

    def _on_connection_failed(self, message: str) -> None:
        self.api = None
        self.server_label.setText("● not connected")
        self.server_label.setProperty("state", "error")
        self._repolish(self.server_label)
        self.status(f"No server: {message.splitlines()[0] if message else ''}")
        if not self._closing:
            dialogs.show_error(
                self,
                "Cannot connect",
                f"{message}\n\nCheck File ▸ Settings. Viewing DICOM and checking masks still work offline.",
            )

    @staticmethod
    def _repolish(widget: QWidget) -> None:
        widget.style().unpolish(widget)
        widget.style().polish(widget)

    def open_settings(self) -> None:
        """Edit server URL and token; reconnects when they changed."""
        dialog = SettingsDialog(self.config, self, pacs=self.pacs_settings)
        if dialog.exec() == SettingsDialog.DialogCode.Accepted:
            self._apply_pacs_settings(dialog)
            config = dialog.config()
            notice = save_server_config(config)  # the token goes to the OS keyring (core.secrets)
            if notice:
                self.status(notice)
            if config != self.config:
                if self.upload.running:
                    dialogs.show_info(
                        self, "Settings saved", "The new server is used after the running upload."
                    )
                    dialog.deleteLater()
                    return
                self.config = config
                self.start()
        dialog.deleteLater()

    # --- series -----------------------------------------------------------------------------------

    def choose_series(self) -> None:
        """File ▸ Open DICOM series."""
        folder = QFileDialog.getExistingDirectory(
            self, "Open a DICOM series folder", str(self.series_dir or Path.home())
        )
        if folder:
            self.open_series(Path(folder))

    def open_series(self, folder: Path, then: Callable[[], None] | None = None) -> None:
        """Load the series in ``folder`` (headers only) in a worker, then show it."""
        if self._series_worker is not None:
            self._series_worker.cancel()
        self.status(f"Reading {folder}…")

        def loaded(series: Series) -> None:
            self._series_worker = None
            self._set_series(
                series, SeriesSource("folder", series.series_instance_uid, series.study_instance_uid, folder)
            )
            if then is not None:
                then()

        def failed(failure: WorkFailure) -> None:
            self._series_worker = None
            self._worker_error("Cannot open the series")(failure)

        self._series_worker = self.runner.start(
            load_series_task,
            folder,
            on_result=loaded,
            on_error=failed,
            on_progress=lambda value: self.status(
                f"Reading DICOM headers {value[0]}/{value[1]}…", progress=True
            ),
            name="series",
        )

    def _set_series(self, series: Series, source: SeriesSource) -> None:
        if source.kind == "folder":
            self.pacs_loader.cancel()  # a local folder replaces a PACS series still streaming in
            self.viewer.set_progress(0, 0, running=False)
        cleared = self.workspace.open_series(source)
        if cleared.series:
            self._clear_for_new_series(cleared)
        self.series = series
        self.series_dir = source.folder
        self.viewer.set_series(series)  # also drops the previous series' frames
        self.picker.set_series(series, source)
        self.setWindowTitle(
            f"PACS Mask Upload — {series.description or series.modality} ({len(series)} slices)"
        )
        note = f"; {len(series.warnings)} warning(s): {series.warnings[0]}" if series.warnings else ""
        cleared_note = f" {cleared.sentence()}" if cleared.sentence() else ""
        self.status(f"Opened {len(series)} slices ordered by {series.ordered_by}{note}.{cleared_note}")
        self._check_annotation_matches()
        if self.mask_paths and source.kind == "folder":  # a PACS series is matched once complete
            self.run_matching()
        self.seriesLoaded.emit(series)

    def _clear_for_new_series(self, cleared: Cleared) -> None:
        """Another series replaced the open one: nothing checked against, or shown on, the old one stays."""
        if self._prepare_worker is not None:
            self._prepare_worker.cancel()
            self._prepare_worker = None
        self.prepared = None
        self.file_overlay = None
        self.masks.set_prepared(None)
        self.viewer.set_overlay(None)
        if self.review.group is not None:
            self.review.clear()
        if cleared.annotation:
            self.picker.clear_choice()
            self.groups.set_annotation(None)
            self.annotation_label.setText("No annotation")

    # --- PACS -------------------------------------------------------------------------------------

    def _on_server_config(self, config: dict[str, Any]) -> None:
        self.server_config = config
        self.groups.set_server_config(config)
        self.review.set_role(str(config.get("role", "")))
        self._forget_pacs_client()

    def _apply_pacs_settings(self, dialog: SettingsDialog) -> None:
        pacs = dialog.pacs()
        password = dialog.pacs_password.text()
        notice = save_pacs_settings(pacs, password, pacs_url(pacs, self.server_config))
        if notice:
            self.status(notice)
        if pacs != self.pacs_settings or password:
            self.pacs_settings = pacs
            self._forget_pacs_client()

    def _forget_pacs_client(self) -> None:
        if self._pacs_client is not None and not self.pacs_loader.busy:
            self._pacs_client.close()
        self._pacs_client = None

    def pacs_client(self) -> PacsClient:
        """The PACS of this workstation (Settings) or of the server; ``PacsError`` when none is known."""
        if self._pacs_client is None:
            url = pacs_url(self.pacs_settings, self.server_config)
            self._pacs_client = desktop_pacs_client(
                self.pacs_settings, self.server_config, pacs_password(self.pacs_settings, url)
            )
        return self._pacs_client

    def use_pacs_client(self, client: PacsClient) -> None:
        """Use ``client`` for the PACS (scripts and tests with their own cache and credentials)."""
        self._forget_pacs_client()
        self._pacs_client = client

    def open_pacs_browser(self) -> PacsBrowser:
        """File ▸ Open from PACS: search studies, pick a series; it streams into the viewer."""
        try:
            client: PacsClient | None = self.pacs_client()
            problem = ""
        except PacsError as exc:
            client, problem = None, exc.message
            self.status(problem)
        browser = PacsBrowser(self.runner, client, problem, self)
        browser.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        browser.openRequested.connect(self.open_from_pacs)
        browser.open()
        self.pacsBrowserOpened.emit(browser)
        return browser

    def open_from_pacs(self, ref: PacsSeriesRef, then: Callable[[], None] | None = None) -> None:
        """Stream the PACS series ``ref`` into the viewer; the first slice shows before the rest arrives."""
        try:
            client = self.pacs_client()
        except PacsError as exc:
            self._on_pacs_failed(exc.message)
            return
        if self._series_worker is not None:
            self._series_worker.cancel()
        self._pacs_then = then
        self.status(f"Opening {ref.description or ref.series_instance_uid} from the PACS at {client.url}…")
        self.pacs_loader.open(client, ref)

    def _on_pacs_series(self, series: Series, first: bool) -> None:
        """The streaming series, ordered from the instances arrived so far (first: a new series opens)."""
        ref = self.pacs_loader.ref
        assert ref is not None
        if first:
            self._set_series(series, SeriesSource("pacs", series.series_instance_uid, ref.study_instance_uid))
            return
        self.series = series
        self.viewer.update_series(series)
        self.picker.set_series(series, self.workspace.source)

    def _on_pacs_progress(self, done: int, total: int) -> None:
        self.viewer.set_progress(done, total, running=self.pacs_loader.busy)
        if self.pacs_loader.busy:
            of = f"/{total}" if total else ""
            self.status(f"Retrieving from the PACS: {done}{of} instances", progress=True)

    def _on_pacs_complete(self, series: Series) -> None:
        self.viewer.set_progress(0, 0, running=False)
        self.status(f"All {len(series)} slices of the series are here (kept in the DICOM cache).")
        if self.mask_paths:
            self.run_matching()
        then, self._pacs_then = self._pacs_then, None
        if then is not None:
            then()
        self.seriesComplete.emit(series)

    def _on_pacs_failed(self, message: str) -> None:
        self.viewer.set_progress(0, 0, running=False)
        self.status(f"PACS: {message}")
        if not self._closing:
            dialogs.show_error(
                self,
                "PACS",
                f"{message}\n\nLocal DICOM folders still open with File ▸ Open DICOM series (Ctrl+O).",
            )

    def offer_annotation_series(self, annotation: dict[str, Any]) -> None:
        """A person picked ``annotation``: if its series is not open, offer to open it from the PACS."""
        if not self.workspace.needs_series_for(annotation) or self.pacs_loader.busy:
            return
        if pacs_url(self.pacs_settings, self.server_config) is None:
            self.status(f"Annotation {annotation['id']}: open its DICOM series (no PACS is configured).")
            return
        if dialogs.confirm(
            self,
            "Open the annotation's series?",
            f"Annotation {annotation['id']} belongs to series {annotation['series_instance_uid']}, which is not "
            "open. Open it from the PACS?",
        ):
            self.open_from_pacs(
                PacsSeriesRef(
                    annotation["study_instance_uid"],
                    annotation["series_instance_uid"],
                    description=annotation.get("description") or "",
                )
            )

    # --- masks ------------------------------------------------------------------------------------

    def choose_mask_files(self) -> None:
        """File ▸ Add mask files."""
        files, _ = QFileDialog.getOpenFileNames(self, "Add masks", str(Path.home()), VOLUME_FILE_FILTER)
        if files:
            self.add_masks([Path(f) for f in files])

    def choose_mask_folder(self) -> None:
        """File ▸ Add mask folder."""
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of mask PNGs", str(Path.home()))
        if folder:
            self.add_masks([Path(folder)])

    def handle_dropped_paths(self, paths: Sequence[Path]) -> None:
        """What a drop does (also the slot tests call): series folders open, masks are checked."""
        if not paths:
            return

        def dispatch(answer: tuple[list[Path], list[Path], list[str]]) -> None:
            series_dirs, masks, ignored = answer
            if ignored:
                self.status("Ignored: " + "; ".join(ignored[:3]))
            if series_dirs:
                then = (lambda: self.add_masks(masks)) if masks else None
                self.open_series(series_dirs[0], then=then)
            elif masks:
                self.add_masks(masks)

        self.runner.start(
            classify_paths, list(paths), on_result=dispatch, on_error=self._worker_error("Drop")
        )

    def add_masks(self, paths: Sequence[Path], then: Callable[[], None] | None = None) -> None:
        """Use ``paths`` (files and/or folders) as the masks to check, show and upload."""
        self.mask_paths = [Path(p) for p in paths]
        self.tabs.setCurrentIndex(TAB_MASKS)
        self.run_matching(then)

    def clear_masks(self) -> None:
        """Forget the dropped masks."""
        if self._prepare_worker is not None:
            self._prepare_worker.cancel()
            self._prepare_worker = None
        self.mask_paths = []
        self.prepared = None
        self.file_overlay = None
        if not self.upload.running:
            self.volume_stage.cleanup()
        self.masks.set_prepared(None)
        if not isinstance(self.viewer.view.overlay, GroupViewSource):
            self.viewer.set_overlay(None)

    def _matching_fields(self) -> dict[str, Any]:
        fields = self.upload.fields()
        return {
            "annotation_id": int(self.annotation["id"]) if self.annotation else 1,
            "model_name": fields["model_name"] or "check",
            "version": fields["version"] or "0",
            "source": fields["source"],
        }

    def run_matching(self, then: Callable[[], None] | None = None) -> None:
        """Check the dropped masks against the open series with ``prepare()`` in a worker."""
        if not self.mask_paths:
            return
        if self._prepare_worker is not None:
            self._prepare_worker.cancel()
        self.masks.set_busy(f"Checking {len(self.mask_paths)} input(s)…")

        def done(prepared: PreparedUpload) -> None:
            self._prepare_worker = None
            self._show_prepared(prepared)
            if then is not None:
                then()

        def failed(failure: WorkFailure) -> None:
            self._prepare_worker = None
            self.masks.set_busy("The masks could not be checked.")
            self._worker_error("Cannot check the masks")(failure)

        self._prepare_worker = self.runner.start(
            prepare_task,
            list(self.mask_paths),
            self._matching_fields(),
            self.series,
            self.api if self.annotation is not None else None,
            self.volume_stage,
            on_result=done,
            on_error=failed,
            on_progress=lambda value: self.masks.set_busy(f"Checking masks {value[0]}/{value[1]}…"),
            name="prepare",
        )

    def _show_prepared(self, prepared: PreparedUpload) -> None:
        self.prepared = prepared
        self.masks.set_prepared(prepared)
        drawable = {
            row.slice_index: row.path
            for row in prepared.rows
            if row.status in OK_STATUSES and row.slice_index is not None and row.path is not None
        }
        self.file_overlay = (
            MaskFileSource(drawable, title=f"dropped masks ({len(drawable)})") if drawable else None
        )
        if self.series is not None:
            self.viewer.set_overlay(self.file_overlay)
        bad = len(prepared.rows) - sum(1 for r in prepared.rows if r.status in OK_STATUSES)
        self.status(
            f"{len(prepared.rows)} mask file(s) checked: {bad} with problems"
            if bad
            else f"{len(prepared.rows)} mask file(s) checked: all can be uploaded"
        )
        self.masksPrepared.emit(prepared)

    # --- annotation -------------------------------------------------------------------------------

    def set_annotation(self, annotation: dict[str, Any]) -> None:
        """The annotation uploads go to and whose groups are listed."""
        self.annotation = annotation
        self.annotation_label.setText(f"Annotation {annotation['id']}")
        self.groups.set_annotation(annotation)
        self._check_annotation_matches()

    def _check_annotation_matches(self) -> None:
        if self.annotation is None or self.series is None:
            return
        if self.annotation["series_instance_uid"] != self.series.series_instance_uid:
            self.status(
                f"Note: annotation {self.annotation['id']} belongs to another series than the one open; "
                "pick its annotation or create one from the open series."
            )

    # --- upload -----------------------------------------------------------------------------------

    def start_upload(self) -> None:
        """Check the masks with the typed group fields, then upload them (all in workers)."""
        if self.upload.running:
            return
        problem = self._upload_blocker()
        if problem:
            self.tabs.setCurrentIndex(TAB_UPLOAD)
            self.upload.set_idle(problem)
            dialogs.show_error(self, "Cannot upload yet", problem)
            return
        assert self.annotation is not None
        assert self.api is not None
        fields = {**self.upload.fields(), "annotation_id": int(self.annotation["id"])}
        self.tabs.setCurrentIndex(TAB_UPLOAD)
        self.upload.set_checking(f"Checking {len(self.mask_paths)} input(s) before uploading…")
        api = self.api

        def checked(prepared: PreparedUpload) -> None:
            self._show_prepared(prepared)
            if prepared.plan is None:
                self.upload.set_idle("Nothing was sent: fix the problems listed in the Masks tab.")
                summary, details = dialogs.problems_text(prepared.problems)
                box = dialogs.show_error(self, "Masks need attention", summary)
                box.setDetailedText(details)
                self.tabs.setCurrentIndex(TAB_MASKS)
                self.masks.jump_to_next_problem()
                return
            self.upload.start(api, prepared.plan, self.journal_path, self._source_path())

        def failed(failure: WorkFailure) -> None:
            self.upload.set_idle("The masks could not be checked.")
            self._worker_error("Cannot check the masks")(failure)

        self.runner.start(
            prepare_task,
            list(self.mask_paths),
            fields,
            self.series,
            api,  # the annotation's recorded series checks the masks and the open series
            self.volume_stage,
            on_result=checked,
            on_error=failed,
            on_progress=lambda value: self.upload.set_checking(f"Checking masks {value[0]}/{value[1]}…"),
            name="prepare upload",
        )

    def _upload_blocker(self) -> str | None:
        if self.api is None:
            return "Not connected to a server (see the status bar and File ▸ Settings)."
        if self.annotation is None:
            return "Pick an annotation first (left panel), or create one from the open series."
        if not self.mask_paths:
            return "Drop mask files or a folder of masks on the window first."
        fields = self.upload.fields()
        if not fields["model_name"] or not fields["version"]:
            return "Enter a model name and a version for the new mask group."
        if self.pacs_loader.busy:
            return "The series is still arriving from the PACS; upload once every slice is in."
        if (
            self.series is not None
            and self.annotation["series_instance_uid"] != self.series.series_instance_uid
        ):
            return (
                f"Annotation {self.annotation['id']} belongs to another series than the one open. "
                "Pick the annotation of this series or create one from it."
            )
        return None

    def _source_path(self) -> str:
        if len(self.mask_paths) == 1:
            return str(self.mask_paths[0])
        return str(self.mask_paths[0].parent)

    def retry_upload(self) -> None:
        """Run the last plan again: only slices that did not land are sent."""
        if self.upload.running or self.upload.plan is None or self.api is None:
            return
        self.upload.start(self.api, self.upload.plan, self.journal_path, self._source_path())

    def _on_group_opened(self, group_id: str, _kind: str) -> None:
        remember_upload_source(
            group_id,
            {
                "masks": [str(p) for p in self.mask_paths],
                "series": str(self.series_dir) if self.series_dir is not None else None,
                "annotation_id": self.annotation["id"] if self.annotation else None,
            },
        )

    def _on_upload_finished(self, result: Any) -> None:
        if result.ok and result.group_id:
            forget_upload_source(result.group_id)
            self.groups.refresh(select=result.group_id)
            self.picker.refresh()
            return
        if result.status == "cancelled" or self._closing:
            return
        if result.failed:
            reasons = "\n".join(f"{name}: {why}" for name, why in sorted(result.failed.items())[:15])
            more = f"\n… and {len(result.failed) - 15} more" if len(result.failed) > 15 else ""
            dialogs.show_error(
                self,
                "Some slices failed",
                f"{result.message}\n\n{reasons}{more}\n\nUse Retry failed (Ctrl+Shift+R) to send only these again.",
            )
        else:
            dialogs.show_error(self, "Upload failed", result.message)

    # --- resume after a crash ---------------------------------------------------------------------

    def check_unfinished_uploads(self, always: bool = False) -> None:
        """Offer to resume uploads the journal says never finished (on this server)."""

        def offer(entries: list[JournalEntry]) -> None:
            here = [e for e in entries if self._entry_is_ours(e)]
            if not here:
                if always:
                    self.status("No interrupted uploads.")
                return
            dialog = ResumeDialog(here, self)
            dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            dialog.resumeChosen.connect(self.resume_upload)
            dialog.forgetChosen.connect(self._forget_entry)
            dialog.open()
            self.resumeOffered.emit(dialog)

        self.runner.start(
            unfinished_uploads, self.journal_path, on_result=offer, on_error=self._worker_error("Journal")
        )

    def _entry_is_ours(self, entry: JournalEntry) -> bool:
        if not self.connection.url:
            return False
        if entry.server.rstrip("/") == self.connection.url.rstrip("/"):
            return True
        return self.connection.is_embedded and is_loopback(entry.server)

    def _forget_entry(self, entry: JournalEntry) -> None:
        forget_upload_source(entry.group_id)
        self.runner.start(
            forget_upload, self.journal_path, entry.group_id, on_error=self._worker_error("Journal")
        )

    def resume_upload(self, entry: JournalEntry) -> None:
        """Reopen what an interrupted upload used (annotation, series, masks) and continue it."""
        if self.api is None:
            return
        info = upload_source(entry.group_id) or {}
        masks = [Path(p) for p in info.get("masks") or ([entry.source_path] if entry.source_path else [])]
        series_dir = Path(info["series"]) if info.get("series") else None
        if not masks:
            dialogs.show_error(
                self, "Cannot resume", "The journal does not say where the masks of this upload are."
            )
            return

        def found(answer: tuple[dict[str, Any], dict[str, Any]]) -> None:
            annotation, group = answer
            if group["status"] != "pending":
                self.status(f"Group {group['id']} is already {group['status']}; nothing to resume.")
                self._forget_entry(entry)
                return
            self.picker.choose(annotation)
            self.upload.set_fields(entry.model_name, entry.version, group["source"])
            self.status(
                f"Resuming {entry.model_name} {entry.version}: {entry.landed} of {entry.total} slices landed"
            )

            def with_masks() -> None:
                self.add_masks(masks, then=self.start_upload)

            if series_dir is not None and series_dir.is_dir():
                if self.series_dir == series_dir and self.series is not None:
                    with_masks()
                else:
                    self.open_series(series_dir, then=with_masks)
            else:
                with_masks()

        def failed(failure: WorkFailure) -> None:
            if isinstance(failure.error, ApiError) and failure.error.status == 404:
                self.status("The interrupted upload's group no longer exists on the server; forgotten.")
                self._forget_entry(entry)
                return
            self._worker_error("Cannot resume")(failure)

        self.runner.start(resume_lookup, self.api, entry, on_result=found, on_error=failed, name="resume")

    # --- groups and review ------------------------------------------------------------------------

    def show_group(self, group: dict[str, Any], slices: list[dict[str, Any]]) -> None:
        """Overlay a stored group on the open series (bytes through the view route, lazily)."""
        if self.api is None:
            return
        if self.series is None:
            self.status("Open the annotation's DICOM series first to see the group on it.")
            return
        if self.pacs_loader.busy:  # slice indexes are final only once every instance is in
            self.status("The series is still arriving from the PACS; show the group once it is complete.")
            return
        source = GroupViewSource(self.api, group, slices)
        self.viewer.set_overlay(source)
        labelled = [int(s["slice_index"]) for s in slices if s.get("label")]
        if labelled and self.viewer.view.index not in labelled:
            self.viewer.view.set_index(labelled[0])
        self.status(f"Showing group {group['model_name']} {group['version']} ({len(slices)} slices)")

    def review_group(self, group: dict[str, Any], slices: list[dict[str, Any]]) -> None:
        """Open the QA review of a group, overlaid on the series."""
        self.show_group(group, slices)
        self.review.open_group(group, slices)
        self.tabs.setCurrentIndex(TAB_REVIEW)

    def _show_finding_marks(self, marks: list[Any]) -> None:
        """Findings are ticks on the slider while the reviewed group is the overlay drawn."""
        overlay, group = self.viewer.view.overlay, self.review.group
        shown = isinstance(overlay, GroupViewSource) and group is not None and overlay.group_id == group["id"]
        self.viewer.finding_marks.set_marks(marks if shown else [])

    def _on_reviewed(self, group: dict[str, Any]) -> None:
        self.groups.refresh(select=group["id"])

    def _on_group_deleted(self, group_id: str) -> None:
        forget_upload_source(group_id)
        overlay = self.viewer.view.overlay
        if isinstance(overlay, GroupViewSource) and overlay.group_id == group_id:
            self.viewer.set_overlay(self.file_overlay)
        if self.review.group is not None and self.review.group["id"] == group_id:
            self.review.clear()
        self.picker.refresh()

    # --- demo ---------------------------------------------------------------------------------------

    def load_demo(self, folder: Path | None = None, *, slices: int = 120, size: int = 512) -> None:
        """Create the demo once and open it: series shown, masks checked and overlaid, annotation chosen."""
        if self.api is None:
            self.connection.connected.connect(
                lambda _api: self.load_demo(folder, slices=slices, size=size),
                Qt.ConnectionType.SingleShotConnection,
            )
            return
        target = folder or data_dir() / "demo"
        self.status(f"Preparing the demo in {target}… (the first time writes {slices} slices)")

        def ready(answer: tuple[DemoData, dict[str, Any]]) -> None:
            demo, annotation = answer
            self.picker.choose(annotation)
            self.upload.set_fields("demo-liver-seg", "1", "manual")
            self.open_series(
                demo.series_dir,
                then=lambda: self.add_masks([demo.masks_dir], then=lambda: self._demo_done(demo)),
            )

        self.runner.start(
            demo_task, self.api, target, slices, size, on_result=ready, on_error=self._worker_error("Demo")
        )

    def _demo_done(self, demo: DemoData) -> None:
        if self.prepared is not None:
            richest = max((len(r.labels) for r in self.prepared.rows), default=0)
            indexes = [r.slice_index for r in self.prepared.rows if richest and len(r.labels) == richest]
            if indexes and indexes[len(indexes) // 2] is not None:
                self.viewer.view.set_index(indexes[len(indexes) // 2])
        self.status("Demo ready: scroll with the wheel, right-drag for window/level, Ctrl+U to upload.")
        self.demoReady.emit(demo)

    # --- help ---------------------------------------------------------------------------------------

    def show_shortcuts(self) -> None:
        """Help ▸ Keyboard and mouse."""
        dialogs.show_info(self, "Keyboard and mouse", SHORTCUTS_HELP)

    def open_log_folder(self) -> None:
        """Help ▸ Open log folder."""
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_dir())))

    def show_about(self) -> None:
        """Help ▸ About."""
        dialogs.show_info(
            self,
            "About PACS Mask Upload",
            f"PACS Mask Upload {__version__}\nServer: {self.connection.url or 'not connected'}\n"
            f"Data: {data_dir()}\nLogs: {log_dir()}",
        )

    # --- drag and drop ----------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: Any) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.handle_dropped_paths(paths)

    # --- closing ------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if (
            self.upload.running
            and self.confirm_quit_during_upload
            and not dialogs.confirm(
                self,
                "Upload running",
                "An upload is running. Quit anyway? The slices that landed are kept and you can resume later.",
            )
        ):
            event.ignore()
            return
        self._closing = True
        settings = app_settings()
        settings.setValue("window/state", self.saveState())
        settings.sync()
        self.upload.stop()
        self.pacs_loader.cancel()
        self.runner.shutdown()
        self.volume_stage.cleanup()  # staged NIfTI/SEG slices are patient data
        if self._pacs_client is not None:
            self._pacs_client.close()
        self.connection.shutdown()
        if self.series is not None:
            self.series.clear_cache()
        super().closeEvent(event)
