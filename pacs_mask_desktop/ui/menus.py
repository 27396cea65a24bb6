"""The main window's menus: every command with its shortcut, so the shortcuts are listed where users look.

Single-letter shortcuts (O, F, N, P, 1-4) are window-wide but yield to text fields, which claim
printable keys; the slice-stepping arrows only act while the viewer has focus, so tables keep their
own arrow keys.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QWidget

if TYPE_CHECKING:
    from pacs_mask_desktop.ui.main_window import MainWindow

SHORTCUTS_HELP = (
    "Wheel, ↑/↓, PgUp/PgDn, Home/End: change slice\n"
    "Right-drag: window/level · 1-4: soft tissue, lung, bone, brain · 0: file default\n"
    "Ctrl+wheel, +/-: zoom · Ctrl+0: 100% · middle- or left-drag: pan · F or double-click: fit\n"
    "O: overlay on/off · F8: next mask problem · F9: next disagreement of a compare\n"
    "Ctrl+O: open series · Ctrl+Shift+O: open from PACS · Ctrl+M: add masks · Ctrl+U: upload · "
    "Ctrl+Shift+R: retry/resume\n"
    "Review: Ctrl+R queue · N/P next/previous group slice · Ctrl+Enter approve · Ctrl+Shift+Enter reject\n"
    "Drop a DICOM folder, mask PNGs/folders, or a NIfTI (.nii/.nii.gz) or DICOM SEG file anywhere on the window."
)


def build_menus(window: MainWindow) -> dict[str, QAction]:
    """Create the menu bar of ``window``; returns its actions by key (tests and scripts trigger them)."""
    actions: dict[str, QAction] = {}

    def action(
        key: str,
        text: str,
        slot: Callable[[], object],
        shortcut: str | None = None,
        *,
        context: Qt.ShortcutContext = Qt.ShortcutContext.WindowShortcut,
        widget: QWidget | None = None,
    ) -> QAction:
        item = QAction(text, window)
        if shortcut is not None:
            item.setShortcut(QKeySequence(shortcut))
            item.setShortcutContext(context)
        item.triggered.connect(lambda _checked=False: slot())
        (widget or window).addAction(item)
        actions[key] = item
        return item

    view = window.viewer.view
    bar = window.menuBar()

    file_menu = bar.addMenu("&File")
    file_menu.addAction(action("open_series", "Open DICOM series…", window.choose_series, "Ctrl+O"))
    file_menu.addAction(action("open_pacs", "Open from PACS…", window.open_pacs_browser, "Ctrl+Shift+O"))
    file_menu.addAction(action("add_masks", "Add mask files…", window.choose_mask_files, "Ctrl+M"))
    file_menu.addAction(
        action("add_mask_folder", "Add mask folder…", window.choose_mask_folder, "Ctrl+Shift+M")
    )
    file_menu.addAction(action("clear_masks", "Clear masks", window.clear_masks))
    file_menu.addSeparator()
    file_menu.addAction(
        action("resume", "Resume interrupted uploads…", lambda: window.check_unfinished_uploads(True))
    )
    file_menu.addAction(action("settings", "Settings…", window.open_settings, "Ctrl+,"))
    file_menu.addSeparator()
    file_menu.addAction(action("quit", "Quit", window.close, "Ctrl+Q"))

    view_menu = bar.addMenu("&View")
    presets = view_menu.addMenu("Window preset")
    for key, title, shortcut in (
        ("soft_tissue", "Soft tissue", "1"),
        ("lung", "Lung", "2"),
        ("bone", "Bone", "3"),
        ("brain", "Brain", "4"),
        ("default", "File default", "0"),
    ):
        presets.addAction(action(f"preset_{key}", title, partial(window.viewer.apply_preset, key), shortcut))
    view_menu.addAction(action("toggle_overlay", "Toggle overlay", window.viewer.toggle_overlay, "O"))
    view_menu.addSeparator()
    view_menu.addAction(action("zoom_in", "Zoom in", lambda: view.zoom_by(1.25), "+"))
    action("zoom_in_alt", "Zoom in", lambda: view.zoom_by(1.25), "=")
    view_menu.addAction(action("zoom_out", "Zoom out", lambda: view.zoom_by(0.8), "-"))
    view_menu.addAction(action("fit", "Fit to window", view.fit, "F"))
    view_menu.addAction(
        action("zoom_100", "Zoom 100% (one image pixel per screen pixel)", view.zoom_actual_size, "Ctrl+0")
    )
    view_menu.addSeparator()
    in_viewer = Qt.ShortcutContext.WidgetWithChildrenShortcut
    view_menu.addAction(
        action(
            "next_slice", "Next slice (wheel)", lambda: view.step(1), "Down", context=in_viewer, widget=view
        )
    )
    view_menu.addAction(
        action(
            "previous_slice",
            "Previous slice (wheel)",
            lambda: view.step(-1),
            "Up",
            context=in_viewer,
            widget=view,
        )
    )
    view_menu.addAction(action("next_problem", "Next mask problem", window.masks.jump_to_next_problem, "F8"))
    view_menu.addSeparator()
    view_menu.addAction(window.left_dock.toggleViewAction())
    view_menu.addAction(window.right_dock.toggleViewAction())

    upload_menu = bar.addMenu("&Upload")
    upload_menu.addAction(action("upload", "Upload masks", window.start_upload, "Ctrl+U"))
    upload_menu.addAction(action("cancel_upload", "Cancel upload", window.upload.cancel, "Ctrl+Shift+X"))
    upload_menu.addAction(
        action("retry_upload", "Retry failed / resume", window.retry_upload, "Ctrl+Shift+R")
    )

    review_menu = bar.addMenu("&Review")
    review_menu.addAction(action("review_queue", "Queue…", window.queue.show_panel, "Ctrl+R"))
    review_menu.addAction(action("refresh_groups", "Refresh groups", window.groups.refresh, "F5"))
    review_menu.addAction(action("review_next", "Next group slice", window.review.next_slice, "N"))
    review_menu.addAction(
        action("review_previous", "Previous group slice", window.review.previous_slice, "P")
    )
    review_menu.addAction(action("approve", "Approve group", window.review.approve, "Ctrl+Return"))
    review_menu.addAction(action("reject", "Reject group", window.review.reject, "Ctrl+Shift+Return"))
    review_menu.addSeparator()
    review_menu.addAction(
        action("next_disagreement", "Next disagreement (compare)", window.compare.next_disagreement, "F9")
    )

    help_menu = bar.addMenu("&Help")
    help_menu.addAction(action("shortcuts", "Keyboard and mouse", window.show_shortcuts, "F1"))
    help_menu.addAction(action("log_folder", "Open log folder", window.open_log_folder))
    help_menu.addAction(action("about", "About", window.show_about))
    return actions
