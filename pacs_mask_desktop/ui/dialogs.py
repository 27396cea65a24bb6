"""Message boxes in one place: confirmations block, errors do not.

Errors open window-modal boxes with :meth:`QDialog.open` (the event loop keeps running, uploads keep
updating) and delete themselves when closed. Confirmations ask and wait. Tests replace
:func:`confirm` to answer without a person.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from pacs_mask_desktop.core.plan import Problem

log = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 25


def confirm(parent: QWidget | None, title: str, text: str, *, destructive: bool = False) -> bool:
    """Ask a yes/no question; ``destructive`` makes "Cancel" the default button."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning if destructive else QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setText(text)
    ok = box.addButton("Delete" if destructive else "OK", QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel if destructive else ok)
    box.exec()
    answer = box.clickedButton() is ok
    box.deleteLater()
    return answer


def show_error(parent: QWidget | None, title: str, text: str, details: str | None = None) -> QMessageBox:
    """Show an error without blocking; returns the box (closed by the user, deleted on close)."""
    log.warning("%s: %s", title, text)
    box = QMessageBox(parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box


def show_info(parent: QWidget | None, title: str, text: str) -> QMessageBox:
    """An information box that does not block."""
    box = QMessageBox(parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setIcon(QMessageBox.Icon.Information)
    box.setWindowTitle(title)
    box.setText(text)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.open()
    return box


def problems_text(problems: list[Problem]) -> tuple[str, str]:
    """A short summary and the full list of ``prepare()`` problems for a message box."""
    lines = [f"{p.filename or '(group)'}: {p.message}" for p in problems]
    shown = lines[:MAX_PROBLEMS_SHOWN]
    summary = f"{len(problems)} problem(s) must be fixed before uploading; nothing was sent.\n\n" + "\n".join(
        shown
    )
    if len(lines) > len(shown):
        summary += f"\n… and {len(lines) - len(shown)} more (see details)."
    return summary, "\n".join(lines)
