"""QA review: step through a group's slices on the series, note findings, then approve or reject.

Keys while the panel's group is open: N / Space next slice with a mask, P / Shift+Space previous one
(also from the Review menu), Ctrl+Return approve, Ctrl+Shift+Return reject. The decision goes to
``POST /api/mask-group/{id}/review`` through ``ApiClient.review`` in a worker, with the findings noted
here (``{"slice_index", "label", "comment"}``: "Add finding" at the slice the viewer shows); a rejection
needs a comment (the server insists, and the panel says so before asking).

The group's current findings and its review history (who, when, decision, comment) are listed; every
finding is also a tick on the slice slider (:mod:`~pacs_mask_desktop.ui.slice_marks`), and a click on a
finding or its tick goes to its slice. Four eyes: the server refuses to let the uploader approve their
own group (403 ``four_eyes``); the panel shows that message and offers the explicit admin override
checkbox, which only an admin token can use.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.ui import dialogs
from pacs_mask_desktop.ui.formatting import failure_text, short_time
from pacs_mask_desktop.ui.render import label_colour
from pacs_mask_desktop.ui.slice_marks import Mark
from pacs_mask_desktop.ui.workers import TaskRunner, WorkContext, WorkFailure
from server.contract.errors import ErrorCode
from server.contract.messages import Decision, FindingIn, FindingOut, GroupOut, MaskOut, ReviewOut

FINDING_COMMENT_MAX = 2000
"""What the server accepts for a finding's comment."""
WHOLE_SLICE_COLOUR = "#e6e8eb"
DECISION_COLOUR = {"approved": "#3ddc84", "rejected": "#ff5c5c"}


def _review(
    _context: WorkContext,
    api: ApiClient,
    group_id: str,
    decision: Decision,
    comment: str,
    findings: list[FindingIn],
    override_four_eyes: bool,
) -> GroupOut:
    return api.review(group_id, decision, comment, findings=findings, override_four_eyes=override_four_eyes)


def group_labels(group: GroupOut, slices: Sequence[MaskOut]) -> list[tuple[int, str]]:
    """The labels a finding may name: the group's label table, else the label values its slices hold."""
    table = group.labels or {}
    if table:
        return sorted((int(value), str(info.name or f"label {value}")) for value, info in table.items())
    present: set[int] = set()
    for item in slices:
        for part in str(item.label or "").split(","):
            if part.strip().isdigit() and int(part) > 0:
                present.add(int(part))
    return [(value, f"label {value}") for value in sorted(present)]


def finding_text(finding: FindingIn | FindingOut, names: dict[int, str]) -> str:
    """One line for a finding: slice, label (or the whole slice) and comment."""
    label = finding.label
    what = "whole slice" if label is None else names.get(int(label), f"label {label}")
    comment = str(finding.comment or "").replace("\n", " ")
    return f"Slice {finding.slice_index} · {what}" + (f" — {comment}" if comment else "")


def review_line(review: ReviewOut) -> str:
    """One line of the history: when, who, decision, override, findings and comment."""
    parts = [f"{short_time(review.reviewed_at)}  {review.reviewed_by}: {review.decision}"]
    if review.override_four_eyes:
        parts.append("(admin override of four eyes)")
    if review.findings:
        parts.append(f"· {len(review.findings)} finding(s)")
    if review.comment:
        parts.append(f"— “{review.comment}”")
    return " ".join(parts)


class ReviewPanel(QWidget):
    """The group under review, its slices, and the decision."""

    sliceRequested = Signal(int)
    reviewRecorded = Signal(object)  # the updated GroupOut
    statusMessage = Signal(str)
    marksChanged = Signal(object)  # list[Mark]: the findings as ticks for the slice slider
    nextInQueueRequested = Signal()
    fourEyesRefused = Signal(str)  # the server's message

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.api: ApiClient | None = None
        self.group: GroupOut | None = None
        self.slices: list[MaskOut] = []
        self.position = -1
        self.current_slice = -1  # the slice the viewer shows (findings are added there)
        self.findings: list[FindingIn] = []  # noted here, sent with the next decision
        self.marks: list[Mark] = []  # every finding listed, as ticks for the slice slider
        self.label_names: dict[int, str] = {}
        self.role = ""  # the caller's role from GET /api/config: only an admin is offered the override

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

        self.findings_title = QLabel("Findings")
        self.finding_label = QComboBox()
        self.finding_label.setObjectName("findingLabel")
        self.finding_label.setToolTip("The label the finding is about, or the whole slice")
        self.finding_comment = QLineEdit()
        self.finding_comment.setObjectName("findingComment")
        self.finding_comment.setMaxLength(FINDING_COMMENT_MAX)
        self.finding_comment.setPlaceholderText("What is wrong on this slice…")
        self.add_finding_button = QPushButton("Add finding")
        self.add_finding_button.setObjectName("addFindingButton")
        self.add_finding_button.setToolTip("Note a finding on the slice the viewer shows")
        add_row = QHBoxLayout()
        add_row.addWidget(self.finding_label)
        add_row.addWidget(self.finding_comment, 1)
        add_row.addWidget(self.add_finding_button)
        self.findings_list = QListWidget()
        self.findings_list.setObjectName("reviewFindings")
        self.findings_list.setToolTip("Click a finding to go to its slice")
        self.findings_list.setMaximumHeight(100)
        self.findings_list.setWordWrap(True)
        self.findings_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.remove_finding_button = QPushButton("Remove finding")
        self.remove_finding_button.setEnabled(False)
        self.history_title = QLabel("History")
        self.history = QListWidget()
        self.history.setObjectName("reviewHistory")
        self.history.setMaximumHeight(70)
        self.history.setWordWrap(True)
        self.history.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.notice = QLabel("")
        self.notice.setObjectName("reviewNotice")
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("color: #ff8a5c; font-weight: bold;")
        self.notice.hide()
        self.override_box = QCheckBox("Approve my own group (admin override)")
        self.override_box.setObjectName("overrideFourEyes")
        self.override_box.setToolTip(
            "Four eyes: the uploader may not approve their own group. An admin may, explicitly; "
            "the override is recorded in the review and the audit log."
        )
        self.override_box.hide()
        self.next_queue_button = QPushButton("Next in queue ▶")
        self.next_queue_button.setObjectName("nextInQueue")
        self.next_queue_button.hide()

        self.comment = QPlainTextEdit()
        self.comment.setObjectName("reviewComment")
        self.comment.setPlaceholderText("Comment (required to reject): what is wrong, on which slices…")
        self.comment.setFixedHeight(64)
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
        layout.addWidget(self.findings_title)
        layout.addLayout(add_row)
        layout.addWidget(self.findings_list)
        layout.addWidget(self.remove_finding_button, 0, Qt.AlignmentFlag.AlignRight)
        layout.addWidget(self.history_title)
        layout.addWidget(self.history)
        layout.addWidget(QLabel("Decision"))
        layout.addWidget(self.comment)
        layout.addWidget(self.notice)
        layout.addWidget(self.override_box)
        layout.addLayout(decide)
        layout.addWidget(self.next_queue_button)

        self.previous_button.clicked.connect(self.previous_slice)
        self.next_button.clicked.connect(self.next_slice)
        self.approve_button.clicked.connect(self.approve)
        self.reject_button.clicked.connect(self.reject)
        self.slice_list.currentRowChanged.connect(self._on_row)
        self.add_finding_button.clicked.connect(self.add_finding)
        self.finding_comment.returnPressed.connect(self.add_finding)
        self.findings_list.itemClicked.connect(self._on_finding_clicked)
        self.findings_list.currentRowChanged.connect(self._on_finding_row)
        self.remove_finding_button.clicked.connect(self.remove_finding)
        self.next_queue_button.clicked.connect(self.nextInQueueRequested)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (
            self.previous_button,
            self.next_button,
            self.approve_button,
            self.reject_button,
            self.comment,
            self.finding_label,
            self.finding_comment,
            self.add_finding_button,
        ):
            widget.setEnabled(enabled)

    def set_api(self, api: ApiClient | None) -> None:
        """Connected to a server."""
        self.api = api

    def open_group(self, group: GroupOut, slices: Sequence[MaskOut]) -> None:
        """Review ``group``: list its slices and go to the first one that has labels."""
        self.group = group
        self.slices = sorted(slices, key=lambda s: s.slice_index)
        self.title.setText(
            f"Review: {group.model_name} {group.version} ({group.source}) — "
            f"{len(self.slices)} slices by {group.created_by}"
        )
        self._show_state()
        self.slice_list.blockSignals(True)
        self.slice_list.clear()
        for item in self.slices:
            labels = item.label or "empty"
            entry = QListWidgetItem(f"Slice {item.slice_index}  ·  {item.filename}  ·  labels {labels}")
            if not item.label:
                entry.setForeground(Qt.GlobalColor.gray)
            self.slice_list.addItem(entry)
        self.slice_list.blockSignals(False)
        self.comment.setPlainText(group.review_comment or "")
        self.findings = []
        self.label_names = dict(group_labels(group, self.slices))
        self.finding_label.clear()
        self.finding_label.addItem("Whole slice", None)
        for value, name in self.label_names.items():
            self.finding_label.addItem(f"{value}: {name}", value)
        self.finding_comment.clear()
        self._hide_four_eyes()
        self._show_findings()
        self._show_history()
        self._set_enabled(bool(self.slices) and group.status == "complete")
        first = next((i for i, s in enumerate(self.slices) if s.label), 0)
        self.go_to(first if self.slices else -1)

    def clear(self) -> None:
        """Nothing under review (e.g. the group was deleted)."""
        self.group, self.slices, self.position = None, [], -1
        self.slice_list.clear()
        self.title.setText("Open a group from the Groups tab (Review…) to check it here.")
        self.state.setText("")
        self.position_label.setText("")
        self.comment.clear()  # a comment typed for a group that is gone must not be sent with another
        self.findings = []
        self.finding_comment.clear()
        self.finding_label.clear()
        self._hide_four_eyes()
        self._show_findings()
        self.history.clear()
        self.offer_next(None)
        self._set_enabled(False)

    def _show_state(self) -> None:
        group = self.group
        if group is None:
            return
        if group.review_status:
            text = (
                f"Currently {group.review_status} by {group.reviewed_by} on {short_time(group.reviewed_at)}"
            )
            if group.review_comment:
                text += f": “{group.review_comment}”"
        else:
            text = "Not reviewed yet."
        self.state.setText(text)
        colour = {"approved": "#3ddc84", "rejected": "#ff5c5c"}.get(group.review_status or "", "#c9ccd1")
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
        self.sliceRequested.emit(int(self.slices[position].slice_index))

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

    # --- findings -----------------------------------------------------------------------------------

    def set_current_slice(self, index: int) -> None:
        """The viewer shows slice ``index``: a new finding goes there."""
        self.current_slice = index
        self.add_finding_button.setText(f"Add finding at slice {index}" if index >= 0 else "Add finding")
        row = next((i for i, s in enumerate(self.slices) if int(s.slice_index) == index), None)
        if row is not None and row != self.position:  # the list follows the viewer (wheel, ticks)
            self.position = row
            self.slice_list.blockSignals(True)
            self.slice_list.setCurrentRow(row)
            self.slice_list.blockSignals(False)
            self.position_label.setText(f"{row + 1} of {len(self.slices)} in the group")

    def add_finding(self) -> None:
        """Note a finding on the current slice with the chosen label and the typed comment."""
        if self.group is None or self.current_slice < 0 or not self.add_finding_button.isEnabled():
            return
        finding = FindingIn(
            slice_index=self.current_slice,
            label=self.finding_label.currentData(),
            comment=self.finding_comment.text().strip(),
        )
        self.findings.append(finding)
        self.findings.sort(key=lambda f: f.slice_index)
        self.finding_comment.clear()
        self._show_findings()
        self.statusMessage.emit(
            f"Finding noted on slice {finding.slice_index}; it is sent with the decision."
        )

    def remove_finding(self) -> None:
        """Drop the selected finding (only the ones not sent yet)."""
        row = self.findings_list.currentRow()
        item = self.findings_list.item(row) if row >= 0 else None
        if item is None or item.data(Qt.ItemDataRole.UserRole + 1) != "new":
            return
        self.findings.remove(item.data(Qt.ItemDataRole.UserRole + 2))
        self._show_findings()

    def current_findings(self) -> list[FindingOut]:
        """The findings of the group's current (latest) review, as the server returned them."""
        return list(self.group.findings) if self.group is not None else []

    def _show_findings(self) -> None:
        self.findings_list.clear()
        marks: list[Mark] = []
        reviewer = (self.group.reviewed_by if self.group is not None else None) or "?"
        for kind, finding in [("new", f) for f in self.findings] + [
            ("stored", f) for f in self.current_findings()
        ]:
            text = finding_text(finding, self.label_names)
            if kind == "stored":
                text = f"{text}  (by {reviewer})"
            entry = QListWidgetItem(("✚ " if kind == "new" else "") + text)
            entry.setData(Qt.ItemDataRole.UserRole, int(finding.slice_index))
            entry.setData(Qt.ItemDataRole.UserRole + 1, kind)
            entry.setData(Qt.ItemDataRole.UserRole + 2, finding)
            label = finding.label
            colour = WHOLE_SLICE_COLOUR if label is None else label_colour(int(label)).name()
            entry.setForeground(Qt.GlobalColor.gray if kind == "stored" else Qt.GlobalColor.white)
            self.findings_list.addItem(entry)
            marks.append(Mark(int(finding.slice_index), colour, text))
        new, stored = len(self.findings), len(self.current_findings())
        self.findings_title.setText(
            f"Findings ({new} new, sent with the decision; {stored} in the current review)"
            if self.group is not None
            else "Findings"
        )
        self.remove_finding_button.setEnabled(False)
        self.marks = marks
        self.marksChanged.emit(marks)

    def _on_finding_clicked(self, item: QListWidgetItem) -> None:
        self.sliceRequested.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    def _on_finding_row(self, row: int) -> None:
        item = self.findings_list.item(row) if row >= 0 else None
        self.remove_finding_button.setEnabled(
            item is not None and item.data(Qt.ItemDataRole.UserRole + 1) == "new"
        )

    def _show_history(self) -> None:
        self.history.clear()
        reviews = list(self.group.reviews) if self.group is not None else []
        for review in reversed(reviews):  # newest first
            entry = QListWidgetItem(review_line(review))
            entry.setForeground(Qt.GlobalColor.green if review.decision == "approved" else Qt.GlobalColor.red)
            self.history.addItem(entry)
        self.history_title.setText(f"History ({len(reviews)} review(s))" if reviews else "History: none yet")

    # --- queue ----------------------------------------------------------------------------------------

    def offer_next(self, text: str | None) -> None:
        """Show "Next in queue" with ``text`` (what comes next), or hide it (``None``)."""
        self.next_queue_button.setVisible(text is not None)
        if text is not None:
            self.next_queue_button.setText(f"Next in queue ▶  {text}")

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

    def _decide(self, decision: Decision) -> None:
        if self.api is None or self.group is None:
            return
        self.approve_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        override = decision == "approved" and self.override_box.isVisible() and self.override_box.isChecked()
        self._runner.start(
            _review,
            self.api,
            self.group.id,
            decision,
            self.comment.toPlainText().strip(),
            list(self.findings),  # a copy: the list may change while the request runs
            override,
            on_result=self._on_reviewed,
            on_error=self._on_failed,
            name="review",
        )

    def _on_reviewed(self, group: GroupOut) -> None:
        if self.group is None or group.id != self.group.id:
            return  # another group was opened while the decision travelled
        self.group = group
        self.findings = []  # sent: they are the current review's findings now
        self._hide_four_eyes()
        self._show_state()
        self._show_findings()
        self._show_history()
        self._set_enabled(True)
        self.statusMessage.emit(f"Group {group.model_name} {group.version} {group.review_status}.")
        self.reviewRecorded.emit(group)

    def _on_failed(self, failure: WorkFailure) -> None:
        self._set_enabled(self.group is not None)
        error = failure.error
        if isinstance(error, ApiError) and error.code == ErrorCode.FOUR_EYES:
            message = f"{error.message}\nAsk another reviewer to approve it (rejecting it is allowed)."
            if self.role == "admin":  # the server's message says an admin may override
                self.override_box.show()
            self.notice.setText(f"Four eyes: {message}")
            self.notice.show()
            self.statusMessage.emit(f"Review not recorded: {error.message}")
            dialogs.show_error(self, "Four eyes: not approved", message)
            self.fourEyesRefused.emit(error.message)
            return
        self.statusMessage.emit(f"Review not recorded: {failure_text(failure)}")

    def set_role(self, role: str) -> None:
        """Remember the connected token's role: the four-eyes override is offered to an admin only."""
        self.role = role

    def _hide_four_eyes(self) -> None:
        self.notice.hide()
        self.notice.clear()
        self.override_box.setChecked(False)
        self.override_box.hide()
