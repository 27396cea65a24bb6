"""The group browser: the mask groups of the chosen annotation and the slices of the selected group.

Columns follow the server's ``GroupOut``: model, version, source, status, slices, confidence, created
by/at, the review status and, once the server computed them, each label's volume in mL (slice extent in
the tooltip). "Show on series" overlays the group (bytes from the view route, fetched lazily in the
frame loader's worker), "Review" opens the QA view, "Compare with…" picks a second complete group of the
annotation (:mod:`~pacs_mask_desktop.ui.compare_view`), "Delete" asks first (admins only; the server
refuses other roles and the message says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.ui import dialogs, seg_actions
from pacs_mask_desktop.ui.formatting import failure_text, human_bytes, short_time
from pacs_mask_desktop.ui.tables import RowsModel, make_table
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure
from server.contract.messages import (
    AnnotationOut,
    ClientConfig,
    DeleteResult,
    GroupOut,
    MaskList,
    MaskOut,
    SegOut,
    SendOut,
)

ModelIndex = QModelIndex | QPersistentModelIndex

REVIEW_COLOUR = {"approved": "#3ddc84", "rejected": "#ff5c5c"}
STATUS_COLOUR = {"complete": "#3ddc84", "pending": "#ffb020", "deleting": "#ff5c5c"}


def label_names(group: GroupOut) -> dict[int, str]:
    """Label value -> name from the group's label table (empty when it has none)."""
    return {int(value): str(info.name or "") for value, info in (group.labels or {}).items()}


def volume_text(group: GroupOut) -> str:
    """Each label's volume, e.g. ``liver 1520.3 mL · 2: 12.1 mL`` (voxels when the mL are unknown)."""
    volumes = group.volumes or {}
    names = label_names(group)
    parts = []
    for value, info in sorted(volumes.items(), key=lambda kv: int(kv[0])):
        name = names.get(int(value)) or f"{value}:"
        amount = f"{info.volume_ml:.1f} mL" if info.volume_ml is not None else f"{info.voxels} vx"
        parts.append(f"{name} {amount}")
    return " · ".join(parts)


def volume_tooltip(group: GroupOut) -> list[str]:
    """Tooltip lines: per label its volume, voxel count and slice extent."""
    names = label_names(group)
    lines = []
    for value, info in sorted((group.volumes or {}).items(), key=lambda kv: int(kv[0])):
        ml = f"{info.volume_ml:.2f} mL, " if info.volume_ml is not None else ""
        lines.append(
            f"Label {value} {names.get(int(value), '')}: {ml}{info.voxels} voxels, "
            f"slices {info.first_slice}–{info.last_slice}"
        )
    return lines


class GroupModel(RowsModel):
    """Groups of an annotation."""

    HEADERS = (
        "Model",
        "Version",
        "Source",
        "Status",
        "Review",
        "Slices",
        "Confidence",
        "Created by",
        "Created",
        "Volume",
    )
    REVIEW_COLUMN = 4
    VOLUME_COLUMN = 9

    def cell(self, item: GroupOut, column: int) -> Any:
        confidence = item.confidence
        return (
            item.model_name,
            item.version,
            item.source,
            item.status,
            item.review_status or "not reviewed",
            item.slice_count,
            "" if confidence is None else f"{confidence:.2f}",
            item.created_by,
            short_time(item.created_at),
            volume_text(item),
        )[column]

    def colour(self, item: GroupOut, column: int) -> str | None:
        if column == 3:
            return STATUS_COLOUR.get(item.status)
        if column == self.REVIEW_COLUMN:
            return REVIEW_COLOUR.get(item.review_status or "", "#8a9099")
        return None

    def tooltip(self, item: GroupOut) -> str | None:
        lines = [f"Group {item.id}"]
        if item.review_status:
            lines.append(f"{item.review_status} by {item.reviewed_by} at {short_time(item.reviewed_at)}")
            if item.review_comment:
                lines.append(f"“{item.review_comment}”")
        lines.extend(volume_tooltip(item))
        return "\n".join(lines)

    def row_of(self, group_id: str) -> int | None:
        """Row number of ``group_id``."""
        return next((i for i, item in enumerate(self.items) if item.id == group_id), None)


class SliceModel(RowsModel):
    """Slices of one group."""

    HEADERS = ("Slice", "File", "Labels", "Size", "Bytes", "SOP Instance UID")

    def cell(self, item: MaskOut, column: int) -> Any:
        return (
            item.slice_index,  # 0-based, like the file names
            item.filename,
            item.label or "empty",
            f"{item.width}×{item.height}",
            human_bytes(item.size_bytes),
            item.sop_instance_uid or "",
        )[column]


def _list_groups(_context: WorkContext, api: ApiClient, annotation_id: int) -> list[GroupOut]:
    return api.list_groups(annotation_id)


def _group_slices(_context: WorkContext, api: ApiClient, group_id: str) -> MaskList:
    return api.group_with_slices(group_id)


def _groups_with_volumes(_context: WorkContext, api: ApiClient, groups: list[GroupOut]) -> list[GroupOut]:
    return api.groups_with_volumes(groups)


def _delete_group(_context: WorkContext, api: ApiClient, group_id: str, journal_path: Path) -> DeleteResult:
    answer = api.delete_group(group_id)
    with Journal(journal_path) as journal:
        journal.forget(group_id)
    return answer


class GroupBrowser(QWidget):
    """Groups of the annotation on top, the selected group's slices below."""

    showRequested = Signal(object, object)  # GroupOut, list[MaskOut]
    reviewRequested = Signal(object, object)  # GroupOut, list[MaskOut]
    compareRequested = Signal(object, object)  # the selected group (filled), the other one (outline)
    groupsLoaded = Signal(int)  # how many groups the annotation has
    volumesLoaded = Signal(int)  # how many listed groups just got their volumes from the server
    groupDeleted = Signal(str)
    statusMessage = Signal(str)
    segExported = Signal(object, object)  # Path, SegOut
    segSent = Signal(object)  # SendOut

    def __init__(self, runner: TaskRunner, journal_path: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.journal_path = journal_path
        self.api: ApiClient | None = None
        self.annotation_id: int | None = None
        self.selected: GroupOut | None = None
        self.slices: list[MaskOut] = []
        self.server_config: ClientConfig | None = None  # GET /api/config: the PACS, send rules
        self._serial = 0
        self._then: str | None = None

        self.title = QLabel("Pick an annotation to see its mask groups.")
        self.title.setObjectName("panelTitle")
        self.groups = GroupModel()
        self.group_table = make_table(self.groups, "groupTable", fit_contents=True)
        self.slice_model = SliceModel()
        self.slice_table = make_table(
            self.slice_model, "groupSliceTable", {0: 52, 1: 130, 2: 60, 3: 80, 4: 70}
        )

        self.refresh_button = QPushButton("Refresh")
        self.show_button = QPushButton("Show on series")
        self.show_button.setToolTip("Overlay this group's stored masks on the open series")
        self.review_button = QPushButton("Review…")
        self.compare_button = QPushButton("Compare with…")
        self.compare_button.setObjectName("compareButton")
        self.compare_button.setToolTip(
            "Compare this group with another complete group of the annotation (Dice, volumes)"
        )
        self.compare_menu = QMenu(self.compare_button)
        self.compare_button.setMenu(self.compare_menu)
        self.compare_menu.aboutToShow.connect(self._fill_compare_menu)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setObjectName("dangerButton")
        for button in (self.show_button, self.review_button, self.compare_button, self.delete_button):
            button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.show_button)
        buttons.addWidget(self.review_button)
        buttons.addWidget(self.compare_button)
        buttons.addStretch(1)
        buttons.addWidget(self.delete_button)
        self.export_button = QPushButton("Export as DICOM SEG…")
        self.send_button = QPushButton("Send to PACS")
        seg_buttons = QHBoxLayout()
        seg_buttons.addWidget(self.export_button)
        seg_buttons.addWidget(self.send_button)
        seg_buttons.addStretch(1)
        self.seg_label = QLabel("")
        self.seg_label.setObjectName("segState")
        self.seg_label.setWordWrap(True)
        self.seg_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.slices_title = QLabel("Slices")
        self.slices_title.setObjectName("panelTitle")
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.slices_title)
        lower_layout.addWidget(self.slice_table)
        upper = QWidget()
        upper_layout = QVBoxLayout(upper)
        upper_layout.setContentsMargins(0, 0, 0, 0)
        upper_layout.addWidget(self.title)
        upper_layout.addWidget(self.group_table)
        upper_layout.addLayout(buttons)
        upper_layout.addLayout(seg_buttons)
        upper_layout.addWidget(self.seg_label)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(upper)
        splitter.addWidget(lower)
        splitter.setSizes([230, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(splitter)

        self.refresh_button.clicked.connect(self.refresh)
        self.group_table.selectionModel().currentRowChanged.connect(self._on_group_row)
        self.group_table.doubleClicked.connect(lambda _index: self.show_selected())
        self.show_button.clicked.connect(self.show_selected)
        self.review_button.clicked.connect(self.review_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self.export_button.clicked.connect(lambda: self.export_selected())
        self.send_button.clicked.connect(self.send_selected)
        self._update_seg_actions()

    # --- loading ------------------------------------------------------------------------------------

    def set_api(self, api: ApiClient | None) -> None:
        """Connected to a server."""
        self.api = api

    def set_server_config(self, config: ClientConfig | None) -> None:
        """The server's ``GET /api/config`` (whether it has a PACS, whether unreviewed groups may be sent)."""
        self.server_config = config
        self._update_seg_actions()

    def set_annotation(self, annotation: AnnotationOut | None) -> None:
        """Show the groups of ``annotation``."""
        self.annotation_id = int(annotation.id) if annotation else None
        self.title.setText(
            f"Mask groups of annotation {self.annotation_id}" if annotation else "Pick an annotation."
        )
        self._select(None)
        self.groups.set_items([])
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Reload the group list (then select ``select`` if given, else keep the selection)."""
        if self.api is None or self.annotation_id is None:
            return
        keep = select if isinstance(select, str) else (self.selected.id if self.selected else None)
        self._serial += 1
        serial = self._serial
        self._runner.start(
            _list_groups,
            self.api,
            self.annotation_id,
            on_result=lambda items: self._on_groups(serial, items, keep),
            on_error=self._on_error,
            name="groups",
        )

    def _on_groups(self, serial: int, items: list[GroupOut], keep: str | None) -> None:
        if serial != self._serial:
            return
        self.groups.set_items(items)
        self.title.setText(f"Mask groups of annotation {self.annotation_id} ({len(items)})")
        row = self.groups.row_of(keep) if keep else None
        if row is not None:
            self.group_table.selectRow(row)
        else:
            self._select(None)
        self.groupsLoaded.emit(len(items))
        if self.api is not None and any(g.status == "complete" and g.volumes is None for g in items):
            self._runner.start(
                _groups_with_volumes,
                self.api,
                items,
                on_result=lambda groups: self._on_volumes(serial, groups),
                on_error=self._on_error,
                name="group volumes",
            )

    def _on_volumes(self, serial: int, groups: list[GroupOut]) -> None:
        """Show the volumes the server computed for groups listed without them."""
        if serial != self._serial:
            return
        for group in groups:
            self._replace_row(group)
        self.volumesLoaded.emit(len(groups))

    def _replace_row(self, group: GroupOut) -> None:
        row = self.groups.row_of(group.id)
        if row is not None:
            self.groups.items[row] = group
            self.groups.dataChanged.emit(
                self.groups.index(row, 0), self.groups.index(row, self.groups.columnCount() - 1)
            )

    def select_group(self, group_id: str) -> bool:
        """Select ``group_id`` in the list (True when it is listed)."""
        row = self.groups.row_of(group_id)
        if row is None:
            return False
        self.group_table.selectRow(row)
        return True

    def _on_group_row(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self._select(self.groups.items[current.row()] if current.isValid() else None)

    def _select(self, group: GroupOut | None) -> None:
        changed = (group.id if group else None) != (self.selected.id if self.selected else None)
        self.selected = group
        for button in (self.show_button, self.review_button, self.delete_button):
            button.setEnabled(group is not None)
        self.review_button.setEnabled(group is not None and group.status == "complete")
        self.show_button.setEnabled(group is not None and group.status == "complete")
        self.compare_button.setEnabled(bool(self.compare_candidates()))
        self._update_seg_actions()
        if group is None:
            self.slices = []
            self.slice_model.set_items([])
            self.slices_title.setText("Slices")
            return
        if changed or not self.slices:
            self._load_slices(group.id)

    def _load_slices(self, group_id: str, then: str | None = None) -> None:
        if self.api is None:
            return
        self._then = then
        self._runner.start(
            _group_slices,
            self.api,
            group_id,
            on_result=self._on_slices,
            on_error=self._on_error,
            name="group slices",
        )

    def _on_slices(self, answer: MaskList) -> None:
        group = answer.group
        if self.selected is None or group.id != self.selected.id:
            return
        self.selected = group
        self._replace_row(group)  # opening a group computes its volumes on the server: show them
        self._update_seg_actions()
        self.slices = answer.items
        self.slice_model.set_items(self.slices)
        self.slices_title.setText(f"Slices of {group.model_name} {group.version} ({len(self.slices)})")
        then, self._then = self._then, None
        if then == "show":
            self.showRequested.emit(group, self.slices)
        elif then == "review":
            self.reviewRequested.emit(group, self.slices)

    def _on_error(self, failure: WorkFailure) -> None:
        self.statusMessage.emit(failure_text(failure))

    # --- actions ------------------------------------------------------------------------------------

    def show_selected(self) -> None:
        """Overlay the selected group on the series."""
        if self.selected is not None:
            self._load_slices(self.selected.id, then="show")

    def review_selected(self) -> None:
        """Open the QA review of the selected group."""
        if self.selected is not None:
            self._load_slices(self.selected.id, then="review")

    def compare_candidates(self) -> list[GroupOut]:
        """The other complete groups of the annotation the selected (complete) group can be compared with."""
        group = self.selected
        if group is None or group.status != "complete":
            return []
        return [g for g in self.groups.items if g.status == "complete" and g.id != group.id]

    def _fill_compare_menu(self) -> None:
        self.compare_menu.clear()
        for other in self.compare_candidates():
            review = other.review_status or "not reviewed"
            action = self.compare_menu.addAction(
                f"{other.model_name} {other.version} ({other.source}, {review}, {other.slice_count} slices)"
            )
            action.triggered.connect(lambda _checked=False, gid=other.id: self.compare_with(gid))

    def compare_with(self, group_id: str) -> bool:
        """Compare the selected group (filled) with ``group_id`` (outline); False when not possible."""
        other = next((g for g in self.compare_candidates() if g.id == group_id), None)
        if other is None or self.selected is None:
            return False
        self.compareRequested.emit(self.selected, other)
        return True

    def delete_selected(self) -> None:
        """Delete the selected group after confirmation."""
        if self.api is None or self.selected is None:
            return
        group = self.selected
        question = (
            f"Delete group {group.model_name} {group.version} ({group.slice_count} slices)?\n\n"
            "Its stored masks are removed from storage and the database. This cannot be undone."
        )
        if not dialogs.confirm(self, "Delete mask group", question, destructive=True):
            return
        self.delete_button.setEnabled(False)
        group_id = group.id
        self._runner.start(
            _delete_group,
            self.api,
            group_id,
            self.journal_path,
            on_result=lambda _answer: self._on_deleted(group_id),
            on_error=self._on_delete_failed,
            name="delete group",
        )

    def _on_deleted(self, group_id: str) -> None:
        self.statusMessage.emit(f"Group {group_id} deleted.")
        self.groupDeleted.emit(group_id)
        self._select(None)
        self.refresh()

    def _on_delete_failed(self, failure: WorkFailure) -> None:
        self.delete_button.setEnabled(self.selected is not None)
        dialogs.show_error(self, "Delete failed", failure_text(failure))

    # --- DICOM SEG ----------------------------------------------------------------------------------

    def _update_seg_actions(self) -> None:
        """Enable export/send for the selected group and say why not in the tooltips; show its SEG state."""
        group = self.selected
        for button, (enabled, why) in (
            (self.export_button, seg_actions.can_export(group)),
            (self.send_button, seg_actions.can_send(group, self.server_config)),
        ):
            button.setEnabled(enabled and self.api is not None)
            button.setToolTip(why)
        self.seg_label.setText(seg_actions.seg_state_text(group, self.server_config))

    def export_selected(self, path: Path | None = None) -> None:
        """Save the selected group as a DICOM SEG file (asks where unless ``path`` is given)."""
        if self.api is None or self.selected is None:
            return
        group = self.selected
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(
                self,
                "Export as DICOM SEG",
                str(Path.home() / seg_actions.default_file_name(group)),
                "DICOM SEG (*.dcm)",
            )
            if not chosen:
                return
            path = Path(chosen)
        self.export_button.setEnabled(False)
        self.statusMessage.emit(f"Building the DICOM SEG of {group.model_name} {group.version}…")
        target = path
        self._runner.start(
            seg_actions.export_seg,
            self.api,
            group.id,
            target,
            on_result=lambda meta: self._on_exported(group, meta, target),
            on_error=lambda failure: self._on_seg_failed("Export as DICOM SEG failed", failure),
            name="export seg",
        )

    def _on_exported(self, group: GroupOut, meta: SegOut, path: Path) -> None:
        self.statusMessage.emit(seg_actions.exported_text(group, meta, path))
        self.segExported.emit(path, meta)
        self._reload_selected(group.id)

    def send_selected(self) -> None:
        """Store the selected group's DICOM SEG in the PACS (the server builds it first if needed)."""
        if self.api is None or self.selected is None:
            return
        group = self.selected
        self.send_button.setEnabled(False)
        self.statusMessage.emit(f"Sending the DICOM SEG of {group.model_name} {group.version} to the PACS…")
        self._runner.start(
            seg_actions.send_seg,
            self.api,
            group.id,
            on_result=lambda answer: self._on_sent(group.id, answer),
            on_error=lambda failure: self._on_seg_failed("Send to PACS failed", failure),
            name="send seg",
        )

    def _on_sent(self, group_id: str, answer: SendOut) -> None:
        text = seg_actions.sent_text(answer)
        self.seg_label.setText(text)
        self.statusMessage.emit(text)
        self.segSent.emit(answer)
        self._reload_selected(group_id)

    def _on_seg_failed(self, title: str, failure: WorkFailure) -> None:
        text = failure_text(failure)
        self.statusMessage.emit(f"{title}: {text}")
        self._update_seg_actions()
        dialogs.show_error(self, title, text)
        if self.selected is not None:
            self._reload_selected(self.selected.id)  # the server may have recorded the failure

    def _reload_selected(self, group_id: str) -> None:
        """Fetch the group again (its ``seg``/``sent_at``) and the list, keeping the selection."""
        if self.selected is not None and self.selected.id == group_id:
            self._load_slices(group_id)
        self.refresh(select=group_id)
