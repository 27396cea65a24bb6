"""QA review: step through a group's slices on the series, then approve or reject with a comment.

Keys while the panel's group is open: N / Space next slice with a mask, P / Shift+Space previous one
(also from the Review menu), Ctrl+Return approve, Ctrl+Shift+Return reject. The decision goes to
``POST /api/mask-group/{id}/review`` through ``ApiClient.review`` in a worker; a rejection needs a
comment (the server insists, and the panel says so before asking).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.ui.formatting import failure_text, short_time
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure


def _review(
    _context: WorkContext, api: ApiClient, group_id: str, decision: str, comment: str
) -> dict[str, Any]:
    return api.review(group_id, decision, comment)


class ReviewPanel(QWidget):
    """The group under review, its slices, and the decision."""

    sliceRequested = Signal(int)
    reviewRecorded = Signal(object)  # the updated group dict
    statusMessage = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.group: dict[str, Any] | None = None
        self.slices: list[dict[str, Any]] = []
        self.position = -1

        self.title = QLabel("Open a group from the Groups tab (Review…) to check it here.")
        self.title.setObjectName("panelTitle")
        self.title.setWordWrap(True)
        self.state = QLabel("")
        self.state.setObjectName("reviewState")
        self.state.setWordWrap(True)
        self.slice_list = QListWidget()
        self.slice_list.setObjectName("reviewSlices")
        self.slice_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.position_label = QLabel("")
        self.previous_button = QPushButton("◀ Previous (P)")
        self.next_button = QPushButton("Next (N) ▶")
        steps = QHBoxLayout()
        steps.addWidget(self.previous_button)
        steps.addWidget(self.position_label, 1, Qt.AlignmentFlag.AlignCenter)
        steps.addWidget(self.next_button)

        self.comment = QPlainTextEdit()
        self.comment.setObjectName("reviewComment")
        self.comment.setPlaceholderText("Comment (required to reject): what is wrong, on which slices…")
        self.comment.setFixedHeight(90)
        self.approve_button = QPushButton("Approve (Ctrl+Enter)")
        self.approve_button.setObjectName("approveButton")
        self.reject_button = QPushButton("Reject (Ctrl+Shift+Enter)")
        self.reject_button.setObjectName("rejectButton")
        decide = QHBoxLayout()
        decide.addWidget(self.approve_button)
        decide.addWidget(self.reject_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addWidget(self.state)
        layout.addWidget(self.slice_list, 1)
        layout.addLayout(steps)
        layout.addWidget(QLabel("Decision"))
        layout.addWidget(self.comment)
        layout.addLayout(decide)

        self.previous_button.clicked.connect(self.previous_slice)
        self.next_button.clicked.connect(self.next_slice)
        self.approve_button.clicked.connect(self.approve)
        self.reject_button.clicked.connect(self.reject)
        self.slice_list.currentRowChanged.connect(self._on_row)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (
            self.previous_button,
            self.next_button,
            self.approve_button,
            self.reject_button,
            self.comment,
        ):
            widget.setEnabled(enabled)

    def set_api(self, api: ApiClient | None) -> None:
        """Connected to a server."""
        self.api = api

    def open_group(self, group: dict[str, Any], slices: list[dict[str, Any]]) -> None:
        """Review ``group``: list its slices and go to the first one that has labels."""
        self.group = group
        self.slices = sorted(slices, key=lambda s: s["slice_index"])
        self.title.setText(
            f"Review: {group['model_name']} {group['version']} ({group['source']}) — "
            f"{len(self.slices)} slices by {group.get('created_by', '?')}"
        )
        self._show_state()
        self.slice_list.blockSignals(True)
        self.slice_list.clear()
        for item in self.slices:
            labels = item.get("label") or "empty"
            entry = QListWidgetItem(f"Slice {item['slice_index']}  ·  {item['filename']}  ·  labels {labels}")
            if not item.get("label"):
                entry.setForeground(Qt.GlobalColor.gray)
            self.slice_list.addItem(entry)
        self.slice_list.blockSignals(False)
        self.comment.setPlainText(group.get("review_comment") or "")
        self._set_enabled(bool(self.slices) and group["status"] == "complete")
        first = next((i for i, s in enumerate(self.slices) if s.get("label")), 0)
        self.go_to(first if self.slices else -1)

    def clear(self) -> None:
        """Nothing under review (e.g. the group was deleted)."""
        self.group, self.slices, self.position = None, [], -1
        self.slice_list.clear()
        self.title.setText("Open a group from the Groups tab (Review…) to check it here.")
        self.state.setText("")
        self.position_label.setText("")
        self.comment.clear()  # a comment typed for a group that is gone must not be sent with another
        self._set_enabled(False)

    def _show_state(self) -> None:
        group = self.group
        if group is None:
            return
        if group.get("review_status"):
            text = (
                f"Currently {group['review_status']} by {group.get('reviewed_by')} "
                f"on {short_time(group.get('reviewed_at'))}"
            )
            if group.get("review_comment"):
                text += f": “{group['review_comment']}”"
        else:
            text = "Not reviewed yet."
        self.state.setText(text)
        colour = {"approved": "#3ddc84", "rejected": "#ff5c5c"}.get(
            group.get("review_status") or "", "#c9ccd1"
        )
        self.state.setStyleSheet(f"color: {colour};")

    # --- stepping -----------------------------------------------------------------------------------

    def go_to(self, position: int) -> None:
        """Show the ``position``-th slice of the group (list order)."""
        if not self.slices or position < 0:
            self.position_label.setText("")
            return
        position = max(0, min(len(self.slices) - 1, position))
        self.position = position
        self.slice_list.blockSignals(True)
        self.slice_list.setCurrentRow(position)
        self.slice_list.blockSignals(False)
        self.position_label.setText(
            f"{position + 1} of {len(self.slices)} in the group"
        )  # a count, not an index
        self.sliceRequested.emit(int(self.slices[position]["slice_index"]))

    def next_slice(self) -> None:
        """The next slice of the group."""
        if self.slices:
            self.go_to(min(self.position + 1, len(self.slices) - 1))

    def previous_slice(self) -> None:
        """The previous slice of the group."""
        if self.slices:
            self.go_to(max(self.position - 1, 0))

    def _on_row(self, row: int) -> None:
        if row >= 0:
            self.go_to(row)

    # --- decision -----------------------------------------------------------------------------------

    def approve(self) -> None:
        """Approve the group (comment optional)."""
        self._decide("approved")

    def reject(self) -> None:
        """Reject the group (comment required)."""
        if not self.comment.toPlainText().strip():
            self.statusMessage.emit("A rejection needs a comment saying what is wrong.")
            self.comment.setFocus()
            return
        self._decide("rejected")

    def _decide(self, decision: str) -> None:
        if self.api is None or self.group is None:
            return
        self.approve_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        self._runner.start(
            _review,
            self.api,
            self.group["id"],
            decision,
            self.comment.toPlainText().strip(),
            on_result=self._on_reviewed,
            on_error=self._on_failed,
            name="review",
        )

    def _on_reviewed(self, group: dict[str, Any]) -> None:
        self.group = group
        self._show_state()
        self._set_enabled(True)
        self.statusMessage.emit(f"Group {group['model_name']} {group['version']} {group['review_status']}.")
        self.reviewRecorded.emit(group)

    def _on_failed(self, failure: WorkFailure) -> None:
        self._set_enabled(self.group is not None)
        self.statusMessage.emit(f"Review not recorded: {failure_text(failure)}")
