"""The app's resource files (stylesheet, icon), read with :mod:`importlib.resources`.

The repository keeps them in the top-level ``resources/`` folder; every shipped form carries them inside
the package as ``pacs_mask_desktop/resources/``: the wheel (``setup.py`` maps the folder there) and the
frozen build (``build.spec`` lists it as data at that path). A source checkout, and the editable install
made from one, reads the repository's folder itself. A missing file is not fatal: the app falls back to
the Fusion style with a dark palette and an icon painted at run time, and logs a warning.
"""

from __future__ import annotations

import importlib.resources
import logging
from importlib.resources.abc import Traversable
from pathlib import Path

from PySide6.QtGui import QColor, QGuiApplication, QIcon, QImage, QPalette, QPixmap

from pacs_mask_desktop.ui.icon import paint_app_icon

log = logging.getLogger(__name__)

STYLESHEET = ("styles", "dark.qss")
APP_ICON = ("icons", "app.png")
#: The folder's name inside the installed package (and the repository's top-level folder's name).
RESOURCES = "resources"


def resources_root() -> Traversable:
    """The resources folder: inside the installed package or frozen build, else the source tree's."""
    packaged = importlib.resources.files("pacs_mask_desktop").joinpath(RESOURCES)
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / RESOURCES  # a source checkout (or its editable install)


def resource(*parts: str) -> Traversable | None:
    """The file ``resources/<parts>``, or ``None`` when this build does not ship it."""
    item = resources_root().joinpath(*parts)
    return item if item.is_file() else None


def load_stylesheet() -> str:
    """The dark stylesheet's text ('' when missing: the palette alone still gives a dark look)."""
    item = resource(*STYLESHEET)
    if item is None:
        log.warning("stylesheet %s not found; using the plain dark palette", "/".join(STYLESHEET))
        return ""
    return item.read_text(encoding="utf-8")


def app_icon() -> QIcon:
    """The application icon (the shipped PNG, else the same drawing made now)."""
    item = resource(*APP_ICON)
    if item is not None:
        pixmap = QPixmap()
        if pixmap.loadFromData(item.read_bytes(), "PNG"):
            return QIcon(pixmap)
        log.warning("icon %s is not a readable PNG; painting it instead", "/".join(APP_ICON))
    else:
        log.warning("icon %s not found; painting it instead", "/".join(APP_ICON))
    return QIcon(QPixmap.fromImage(paint_app_icon(256)))


def dark_palette() -> QPalette:
    """A dark palette matching the stylesheet (used by the Fusion style for everything QSS misses)."""
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#1e2126",
        QPalette.ColorRole.WindowText: "#d7dae0",
        QPalette.ColorRole.Base: "#16181c",
        QPalette.ColorRole.AlternateBase: "#1b1e23",
        QPalette.ColorRole.ToolTipBase: "#2a2e35",
        QPalette.ColorRole.ToolTipText: "#e6e8eb",
        QPalette.ColorRole.Text: "#d7dae0",
        QPalette.ColorRole.Button: "#2a2e35",
        QPalette.ColorRole.ButtonText: "#d7dae0",
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: "#2f6fb3",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#5aa9ff",
        QPalette.ColorRole.PlaceholderText: "#7d838c",
    }
    for role, value in colours.items():
        palette.setColor(role, QColor(value))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7079"))
    return palette


def apply_theme(app: QGuiApplication) -> None:
    """Fusion style, dark palette, the QSS on top, and the window icon."""
    from PySide6.QtWidgets import QApplication

    if isinstance(app, QApplication):
        app.setStyle("Fusion")
        app.setPalette(dark_palette())
        app.setStyleSheet(load_stylesheet())
    app.setWindowIcon(app_icon())


def write_icon_png(path: Path, size: int = 256) -> None:
    """Write the app icon as a PNG (how ``resources/icons/app.png`` was made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image: QImage = paint_app_icon(size)
    if not image.save(str(path), b"PNG"):
        raise OSError(f"could not write {path}")
