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
from pacs_mask_desktop.core.pacs_open import PacsSeriesRef, PacsSettings, pacs_url
from pacs_mask_desktop.core.paths import data_dir, journal_path, log_dir
from pacs_mask_desktop.core.plan import PreparedUpload
from pacs_mask_desktop.core.session import (
    Session,
    drawable_masks,
    prepared_summary,
    resume_inputs,
    richest_slice,
    upload_failure,
)
from pacs_mask_desktop.core.workspace import Cleared, SeriesSource, Workspace
from pacs_mask_desktop.ui import dialogs
from pacs_mask_desktop.ui.annotation_picker import AnnotationPicker
from pacs_mask_desktop.ui.compare_view import install_compare
from pacs_mask_desktop.ui.connection import Connection
from pacs_mask_desktop.ui.formatting import failure_text
from pacs_mask_desktop.ui.group_browser import GroupBrowser
from pacs_mask_desktop.ui.mask_panel import MaskPanel
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
from server.contract.messages import AnnotationOut, ClientConfig, GroupOut, MaskOut

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
        self.pacs_loader = PacsSeriesLoader(self.runner, self)
        # The state and its rules (core/session.py, no Qt); the window applies its answers to widgets.
        self.session = Session(load_pacs_settings(), streaming=lambda: self.pacs_loader.busy)
        self.file_overlay: MaskFileSource | None = None
        self._series_worker: TaskHandle | None = None
        self._pacs_then: Callable[[], None] | None = None
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

        self.menu_actions: dict[str, QAction] = build_menus(self)  # by name; QWidget.actions() stays Qt's
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
        self.session.annotation_changed.connect(self._show_annotation)
        self.session.prepared_changed.connect(self._show_mask_rows)
        self.session.series_opened.connect(self._on_series_opened)
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

    # --- state kept in the Qt-free session model (core/session.py), read here by panels and tests ------

    @property
    def workspace(self) -> Workspace:
        """The open series' source, the chosen annotation and the dropped masks."""
        return self.session.workspace

    @property
    def api(self) -> ApiClient | None:
        """The connected server's client, ``None`` when not connected."""
        return self.session.api

    @property
    def series(self) -> Series | None:
        """The open series (while a PACS series streams in: what has arrived so far)."""
        return self.session.series

    @property
    def series_dir(self) -> Path | None:
        """The folder the open series came from (``None`` for a PACS series)."""
        return self.session.series_dir

    @property
    def prepared(self) -> PreparedUpload | None:
        """The dropped masks as checked against the series."""
        return self.session.prepared

    @property
    def server_config(self) -> ClientConfig | None:
        """The server's ``GET /api/config`` answer once connected."""
        return self.session.server_config

    @property
    def pacs_settings(self) -> PacsSettings:
        """This workstation's PACS settings."""
        return self.session.pacs_settings

    @property
    def annotation(self) -> AnnotationOut | None:
        """The chosen annotation (uploads go to it), ``None`` when none is chosen."""
        return self.session.annotation

    @property
    def mask_paths(self) -> list[Path]:
        """The dropped mask files and folders."""
        return self.session.mask_paths

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
        self.session.connecting()
        self.connection.connect_to(self.config)

    def _on_connected(self, api: ApiClient) -> None:
        kind = self.session.connected(api, self.connection.url, embedded=self.connection.is_embedded).kind
        self.server_label.setText(f"● {kind} {self.connection.url}")
        self.server_label.setProperty("state", "ok")
        self._repolish(self.server_label)
        self.picker.set_api(api)
        self.groups.set_api(api)
        self.review.set_api(api)
        self.status(f"Connected to the {kind} at {self.connection.url}")
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
        self.session.disconnected()
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
                self.change_server(config)
        dialog.deleteLater()

    def change_server(self, config: ServerConfig) -> bool:
        """Connect with ``config`` (another server, or the bundled one); ``False`` while an upload runs or
        masks are checked for one (the saved settings apply at the next start). The last upload's plan
        is dropped, so Retry can never send it, with its annotation id, to another server; its pending
        group stays resumable from the journal when that server is used again."""
        if self.upload.running or self.upload.checking:
            dialogs.show_info(self, "Settings saved", "The new server is used after the running upload.")
            return False
        self.upload.forget_plan()
        self.config = config
        self.start()
        return True

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
        cleared = self.session.open_series(series, source)  # clears what no longer applies (events)
        self.viewer.set_series(series)  # also drops the previous series' frames
        self.picker.set_series(series, source)
        self.setWindowTitle(
            f"PACS Mask Upload — {series.description or series.modality} ({len(series)} slices)"
        )
        note = f"; {len(series.warnings)} warning(s): {series.warnings[0]}" if series.warnings else ""
        cleared_note = f" {cleared.sentence()}" if cleared.sentence() else ""
        self.status(f"Opened {len(series)} slices ordered by {series.ordered_by}{note}.{cleared_note}")
        self._check_annotation_matches()
        if self.session.should_match_on_open(source):  # a PACS series is matched once complete
            self.run_matching()
        self.seriesLoaded.emit(series)

    def _on_series_opened(self, cleared: Cleared) -> None:
        """Another series replaced the open one: nothing checked against, or shown on, the old one stays
        (the session already dropped the checked masks and a foreign annotation)."""
        if not cleared.series:
            return
        if self._prepare_worker is not None:
            self._prepare_worker.cancel()
            self._prepare_worker = None
        self.viewer.set_overlay(None)
        if self.review.group is not None:
            self.review.clear()

    # --- PACS -------------------------------------------------------------------------------------

    def _on_server_config(self, config: ClientConfig) -> None:
        self.session.set_server_config(config)
        self.groups.set_server_config(config)
        self.review.set_role(config.role)

    def _apply_pacs_settings(self, dialog: SettingsDialog) -> None:
        pacs = dialog.pacs()
        password = dialog.pacs_password.text()
        notice = save_pacs_settings(pacs, password, pacs_url(pacs, self.server_config))
        if notice:
            self.status(notice)
        self.session.set_pacs_settings(pacs, new_password=bool(password))

    def pacs_client(self) -> PacsClient:
        """The PACS of this workstation (Settings) or of the server; ``PacsError`` when none is known."""
        return self.session.pacs_client(pacs_password)

    def use_pacs_client(self, client: PacsClient) -> None:
        """Use ``client`` for the PACS (scripts and tests with their own cache and credentials)."""
        self.session.use_pacs_client(client)

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
        self.session.update_series(series)
        self.viewer.update_series(series)
        self.picker.set_series(series, self.session.source)

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

    def offer_annotation_series(self, annotation: AnnotationOut) -> None:
        """A person picked ``annotation``: if its series is not open, offer to open it from the PACS."""
        if not self.session.needs_series_for(annotation):
            return
        if not self.session.has_pacs:
            self.status(f"Annotation {annotation.id}: open its DICOM series (no PACS is configured).")
            return
        if dialogs.confirm(
            self,
            "Open the annotation's series?",
            f"Annotation {annotation.id} belongs to series {annotation.series_instance_uid}, which is not "
            "open. Open it from the PACS?",
        ):
            self.open_from_pacs(
                PacsSeriesRef(
                    annotation.study_instance_uid,
                    annotation.series_instance_uid,
                    description=annotation.description or "",
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
        self.session.set_masks(paths)
        self.tabs.setCurrentIndex(TAB_MASKS)
        self.run_matching(then)

    def clear_masks(self) -> None:
        """Forget the dropped masks."""
        if self._prepare_worker is not None:
            self._prepare_worker.cancel()
            self._prepare_worker = None
        self.session.clear_masks()  # the mask table and the file overlay follow (prepared_changed)
        if not self.upload.running:
            self.volume_stage.cleanup()
        if not isinstance(self.viewer.view.overlay, GroupViewSource):
            self.viewer.set_overlay(None)

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
            self.session.matching_fields(self.upload.fields()),
            self.series,
            self.api if self.annotation is not None else None,
            self.volume_stage,
            on_result=done,
            on_error=failed,
            on_progress=lambda value: self.masks.set_busy(f"Checking masks {value[0]}/{value[1]}…"),
            name="prepare",
        )

    def _show_mask_rows(self, prepared: PreparedUpload | None) -> None:
        """The checked masks changed (``None``: gone): the mask table and the overlay of the files."""
        self.masks.set_prepared(prepared)
        drawable = drawable_masks(prepared) if prepared is not None else {}
        self.file_overlay = (
            MaskFileSource(drawable, title=f"dropped masks ({len(drawable)})") if drawable else None
        )

    def _show_prepared(self, prepared: PreparedUpload) -> None:
        self.session.set_prepared(prepared)  # the table and self.file_overlay follow (prepared_changed)
        if self.series is not None:
            self.viewer.set_overlay(self.file_overlay)
        self.status(prepared_summary(prepared))
        self.masksPrepared.emit(prepared)

    # --- annotation -------------------------------------------------------------------------------

    def set_annotation(self, annotation: AnnotationOut) -> None:
        """The annotation uploads go to and whose groups are listed."""
        self.session.set_annotation(annotation)  # label and group list follow (annotation_changed)
        self._check_annotation_matches()

    def _show_annotation(self, annotation: AnnotationOut | None) -> None:
        """The chosen annotation changed; ``None`` when opening another series dropped it."""
        if annotation is None:
            self.picker.clear_choice()
            self.groups.set_annotation(None)
            self.annotation_label.setText("No annotation")
            return
        self.annotation_label.setText(f"Annotation {annotation.id}")
        self.groups.set_annotation(annotation)

    def _check_annotation_matches(self) -> None:
        note = self.session.annotation_mismatch()
        if note is not None:
            self.status(note)

    # --- upload -----------------------------------------------------------------------------------

    def start_upload(self) -> None:
        """Check the masks with the typed group fields, then upload them (all in workers)."""
        if self.upload.running or self.upload.checking:
            return
        problem = self.session.upload_blocker(self.upload.fields())
        if problem:
            self.tabs.setCurrentIndex(TAB_UPLOAD)
            self.upload.set_idle(problem)
            dialogs.show_error(self, "Cannot upload yet", problem)
            return
        assert self.api is not None
        fields = self.session.upload_fields(self.upload.fields())
        self._check_then_upload(self.api, fields, list(self.mask_paths), self.session.source_path())

    def retry_upload(self) -> None:
        """Run the last plan again: only slices that did not land are sent.

        After masks failed the pixel check, the person fixes those files, so their checksums no longer
        match the last plan: the masks (those on the window, else the plan's own files) are checked
        again with the last plan's group fields, whatever the fields show now, and the upload continues
        the same pending group (the journal's resume) with only what is missing.
        """
        if self.upload.running or self.upload.checking or self.upload.plan is None or self.api is None:
            return
        plan, last = self.upload.plan, self.upload.last_result
        if last is not None and last.problems:
            fields = {
                "annotation_id": plan.annotation_id,
                "model_name": plan.model_name,
                "version": plan.version,
                "source": plan.source,
            }
            paths = list(self.mask_paths) or [s.path for s in plan.slices]
            self._check_then_upload(self.api, fields, paths, self.upload.source_path)
            return
        self.upload.start(self.api, plan, self.journal_path, self.upload.source_path)

    def _check_then_upload(
        self, api: ApiClient, fields: dict[str, Any], paths: list[Path], source_path: str | None
    ) -> None:
        """Check ``paths`` as an upload with ``fields`` (headers, names, indexes, the series; pixels are
        left to the upload), then upload them, or list the problems and send nothing."""
        self.tabs.setCurrentIndex(TAB_UPLOAD)
        self.upload.set_checking(f"Checking {len(paths)} input(s) before uploading…")

        def checked(prepared: PreparedUpload) -> None:
            if prepared.plan is None or prepared.plan.pixel_check is None:
                self._show_prepared(prepared)
            # else the mask table keeps the labels of the check made when the masks were dropped: this
            # one left the pixels to the upload, which names any file that fails to decode
            if prepared.plan is None:
                self.upload.set_idle("Nothing was sent: fix the problems listed in the Masks tab.")
                summary, details = dialogs.problems_text(prepared.problems)
                box = dialogs.show_error(self, "Masks need attention", summary)
                box.setDetailedText(details)
                self.tabs.setCurrentIndex(TAB_MASKS)
                self.masks.jump_to_next_problem()
                return
            self.upload.start(api, prepared.plan, self.journal_path, source_path)

        def failed(failure: WorkFailure) -> None:
            self.upload.set_idle("The masks could not be checked.")
            self._worker_error("Cannot check the masks")(failure)

        self.runner.start(
            prepare_task,
            paths,
            fields,
            self.series,
            api,  # the annotation's recorded series checks the masks and the open series
            self.volume_stage,
            defer_decode=True,  # pixels are decoded alongside the PUTs, as in the CLI (core.plan)
            on_result=checked,
            on_error=failed,
            on_progress=lambda value: self.upload.set_checking(f"Checking masks {value[0]}/{value[1]}…"),
            name="prepare upload",
        )

    def _on_group_opened(self, group_id: str, _kind: str) -> None:
        remember_upload_source(group_id, self.session.upload_source_record())

    def _on_upload_finished(self, result: Any) -> None:
        if result.ok and result.group_id:
            forget_upload_source(result.group_id)
            self.groups.refresh(select=result.group_id)
            self.picker.refresh()
            return
        failure = upload_failure(result)
        if failure is not None and not self._closing:
            dialogs.show_error(self, *failure)

    # --- resume after a crash ---------------------------------------------------------------------

    def check_unfinished_uploads(self, always: bool = False) -> None:
        """Offer to resume uploads the journal says never finished (on this server)."""

        def offer(entries: list[JournalEntry]) -> None:
            here = [e for e in entries if self.session.entry_is_ours(e)]
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

    def _forget_entry(self, entry: JournalEntry) -> None:
        forget_upload_source(entry.group_id)
        self.runner.start(
            forget_upload, self.journal_path, entry.group_id, on_error=self._worker_error("Journal")
        )

    def resume_upload(self, entry: JournalEntry) -> None:
        """Reopen what an interrupted upload used (annotation, series, masks) and continue it."""
        if self.api is None:
            return
        masks, series_dir = resume_inputs(entry, upload_source(entry.group_id))
        if not masks:
            dialogs.show_error(
                self, "Cannot resume", "The journal does not say where the masks of this upload are."
            )
            return

        def found(answer: tuple[AnnotationOut, GroupOut]) -> None:
            annotation, group = answer
            if group.status != "pending":
                self.status(f"Group {group.id} is already {group.status}; nothing to resume.")
                self._forget_entry(entry)
                return
            self.picker.choose(annotation)
            self.upload.set_fields(entry.model_name, entry.version, group.source)
            self.status(
                f"Resuming {entry.model_name} {entry.version}: {entry.landed} of {entry.total} slices landed"
            )

            def with_masks() -> None:
                self.add_masks(masks, then=self.start_upload)

            if series_dir is not None and series_dir.is_dir():
                if self.session.series_is_open_at(series_dir):
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

    def show_group(self, group: GroupOut, slices: list[MaskOut]) -> None:
        """Overlay a stored group on the open series (bytes through the view route, lazily)."""
        if self.api is None:
            return
        problem = self.session.group_view_blocker()
        if problem is not None:
            self.status(problem)
            return
        source = GroupViewSource(self.api, group, slices)
        self.viewer.set_overlay(source)
        labelled = [s.slice_index for s in slices if s.label]
        if labelled and self.viewer.view.index not in labelled:
            self.viewer.view.set_index(labelled[0])
        self.status(f"Showing group {group.model_name} {group.version} ({len(slices)} slices)")

    def review_group(self, group: GroupOut, slices: list[MaskOut]) -> None:
        """Open the QA review of a group, overlaid on the series."""
        self.show_group(group, slices)
        self.review.open_group(group, slices)
        self.tabs.setCurrentIndex(TAB_REVIEW)

    def _show_finding_marks(self, marks: list[Any]) -> None:
        """Findings are ticks on the slider while the reviewed group is the overlay drawn."""
        overlay, group = self.viewer.view.overlay, self.review.group
        shown = isinstance(overlay, GroupViewSource) and group is not None and overlay.group_id == group.id
        self.viewer.finding_marks.set_marks(marks if shown else [])

    def _on_reviewed(self, group: GroupOut) -> None:
        self.groups.refresh(select=group.id)

    def _on_group_deleted(self, group_id: str) -> None:
        forget_upload_source(group_id)
        overlay = self.viewer.view.overlay
        if isinstance(overlay, GroupViewSource) and overlay.group_id == group_id:
            self.viewer.set_overlay(self.file_overlay)
        if self.review.group is not None and self.review.group.id == group_id:
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

        def ready(answer: tuple[DemoData, AnnotationOut]) -> None:
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
        start = richest_slice(self.prepared) if self.prepared is not None else None
        if start is not None:
            self.viewer.view.set_index(start)
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
        self.connection.shutdown()
        self.session.close()  # the PACS client and the open series' frame cache
        super().closeEvent(event)
