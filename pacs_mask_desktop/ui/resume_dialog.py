"""The offer to resume uploads that a crash, a kill or a cancel left unfinished (from the journal)."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.journal import JournalEntry
from pacs_mask_desktop.ui.formatting import short_time


class ResumeDialog(QDialog):
    """Lists unfinished uploads; "Resume" continues the chosen one, "Forget" drops it from the journal."""

    resumeChosen = Signal(object)  # JournalEntry
    forgetChosen = Signal(object)  # JournalEntry

    def __init__(self, entries: list[JournalEntry], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("resumeDialog")
        self.setWindowTitle("Resume interrupted uploads")
        self.setMinimumWidth(560)
        self.entries = list(entries)
        intro = QLabel(
            f"{len(entries)} upload(s) did not finish (the app was closed, crashed or the upload was "
            "cancelled). The slices that already landed are kept; resuming sends only the rest."
        )
        intro.setWordWrap(True)
        self.list = QListWidget()
        for entry in self.entries:
            text = (
                f"{entry.model_name} {entry.version} → annotation {entry.annotation_id}: "
                f"{entry.landed} of {entry.total} slices landed · {short_time(entry.updated_at)}"
            )
            item = QListWidgetItem(text)
            item.setToolTip(
                f"group {entry.group_id}\nserver {entry.server}\nmasks {entry.source_path or '?'}"
            )
            self.list.addItem(item)
        self.list.setCurrentRow(0)
        buttons = QDialogButtonBox()
        self.resume_button = QPushButton("Resume")
        self.resume_button.setDefault(True)
        self.forget_button = QPushButton("Forget")
        self.forget_button.setToolTip(
            "Drop it from the journal (the server cleans up the pending group later)"
        )
        later = QPushButton("Later")
        buttons.addButton(self.resume_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(self.forget_button, QDialogButtonBox.ButtonRole.DestructiveRole)
        buttons.addButton(later, QDialogButtonBox.ButtonRole.RejectRole)
        self.resume_button.clicked.connect(self._resume)
        self.forget_button.clicked.connect(self._forget)
        later.clicked.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.list)
        layout.addWidget(buttons)

    def selected(self) -> JournalEntry | None:
        """The highlighted entry."""
        row = self.list.currentRow()
        return self.entries[row] if 0 <= row < len(self.entries) else None

    def _resume(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.accept()
            self.resumeChosen.emit(entry)

    def _forget(self) -> None:
        entry = self.selected()
        if entry is None:
            return
        self.forgetChosen.emit(entry)
        row = self.list.currentRow()
        self.list.takeItem(row)
        self.entries.pop(row)
        if not self.entries:
            self.reject()
