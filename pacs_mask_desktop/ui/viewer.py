"""The slice viewer: one DICOM slice with its mask overlay, window/level, zoom, pan and scrolling.

Interaction follows the viewers radiologists know (OHIF, 3D Slicer):

* mouse wheel or Up/Down/PageUp/PageDown/Home/End: previous/next slice;
* right-drag: window/level (horizontal = width, vertical = level); presets from the menu (1-4);
* Ctrl+wheel or +/-: zoom around the cursor; middle- or left-drag: pan; F or double-click: fit;
  Ctrl+0: 100%, one image pixel per screen pixel (the corner shows that real scale, not the fit factor);
* the patient orientation (R/L, A/P, H/F) is marked on the middle of each edge, from
  ImageOrientationPatient (:mod:`~pacs_mask_desktop.core.orientation`);
* O toggles the overlay, the opacity comes from the viewer bar's slider.

Pixels come from :class:`~pacs_mask_desktop.ui.frame_loader.FrameLoader` (decoded in a worker), the
windowing is one vectorised numpy pass on the GUI thread (~1 ms for 512x512) and the images handed to
QPainter point into the numpy buffers (:mod:`~pacs_mask_desktop.ui.render`). Only a bounded number of
frames is kept, so a 1000-slice series never sits in memory whole.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from pacs_mask_desktop.core.dicom_series import Series, Window, window_level
from pacs_mask_desktop.core.orientation import EdgeLabels, edge_labels
from pacs_mask_desktop.ui.formatting import slice_text
from pacs_mask_desktop.ui.frame_loader import FrameLoader
from pacs_mask_desktop.ui.overlay_sources import OverlaySource
from pacs_mask_desktop.ui.render import ArrayImage, gray_image, label_colour, label_image
from pacs_mask_desktop.ui.workers import TaskRunner

FRAMES_KEPT = 24
"""Decoded slices the view keeps for instant back-and-forth (on top of the Series' own cache)."""
PREFETCH_AHEAD = 6
PREFETCH_BEHIND = 2
MIN_ZOOM, MAX_ZOOM = 0.1, 40.0


class SliceView(QWidget):
    """Paints one slice of a :class:`Series` with an optional label overlay."""

    indexChanged = Signal(int)
    windowChanged = Signal(float, float)
    frameShown = Signal(int)  # a frame for this index was painted for the first time
    statusMessage = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sliceView")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.loader = FrameLoader(runner, self)
        self.loader.frameReady.connect(self._on_frame)
        self.loader.frameFailed.connect(self._on_frame_failed)

        self.series: Series | None = None
        self.overlay: OverlaySource | None = None
        self.index = 0
        self.display_window = Window(40.0, 400.0)  # window / level (QWidget.window() is the top level)
        self.invert = False
        self.zoom = 1.0
        self.pan = QPointF(0.0, 0.0)
        self.overlay_visible = True
        self.opacity = 0.45
        self.caption = ""
        self.markers: EdgeLabels | None = None

        self._frames: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._shown_index: int | None = None
        self._painted_index: int | None = None
        self._gray: ArrayImage | None = None
        self._mask: ArrayImage | None = None
        self._mask_top: ArrayImage | None = None  # the overlay's opaque value (a compare's outline)
        self._mask_labels: tuple[int, ...] = ()
        self._pixels: np.ndarray | None = None
        self._direction = 1
        self._drag_button: Qt.MouseButton | None = None
        self._drag_start = QPointF()
        self._drag_window = self.display_window
        self._drag_pan = QPointF()
        self._wheel_rest = 0
        self._error: str | None = None
        self.mask_mismatch: str | None = None
        """Why the shown slice's mask, or part of it, is not drawn (another size), else ``None``."""
        self._mask_dropped = False
        self._auto_window = False
        self.last_request_at = 0.0

    # --- content ----------------------------------------------------------------------------------

    def set_series(self, series: Series | None) -> None:
        """Show ``series`` from its middle slice in its default window (or clear the view)."""
        if self.series is not None and self.series is not series:
            self.series.clear_cache()
        self.series = series
        self.overlay = None
        self.markers = edge_labels(series.orientation) if series is not None else None
        self._frames.clear()
        self._reset_images()
        self.loader.set_sources(series, None)
        if series is None:
            self.update()
            return
        self.invert = series.photometric_interpretation == "MONOCHROME1"
        # The files' window, or soft tissue for CT; other modalities get a percentile window from the
        # first frame that arrives (computing it here would read pixels on the GUI thread).
        self._auto_window = series.file_window is None and series.modality != "CT"
        if not self._auto_window:
            self.display_window = series.default_window()
        self.zoom, self.pan = 1.0, QPointF()
        self.index = -1
        self.windowChanged.emit(self.display_window.center, self.display_window.width)
        self.set_index(len(series) // 2)

    def update_series(self, series: Series) -> None:
        """The same series with more slices (streaming in from the PACS): keep the window, zoom and pan,
        and stay on the instance shown (its index may move as slices arrive around it)."""
        if self.series is None or self.series.series_instance_uid != series.series_instance_uid:
            self.set_series(series)
            return
        old = self.series
        shown = old[self.index].sop_instance_uid if 0 <= self.index < len(old) else None
        frame = old[self.index].frame_index if shown is not None else None
        # Decoded frames stay valid (same files): carry them to their new indexes.
        new_index = {(ref.sop_instance_uid, ref.frame_index): i for i, ref in enumerate(series.slices)}
        kept = {(old[i].sop_instance_uid, old[i].frame_index): frame for i, frame in self._frames.items()}
        self._frames = OrderedDict((new_index[key], frame) for key, frame in kept.items() if key in new_index)
        self.series = series
        self.markers = edge_labels(series.orientation)
        self.loader.set_sources(series, self.overlay)
        candidates = series.indexes_of_sop(shown) if shown is not None else []
        index = next((i for i in candidates if series[i].frame_index == frame), len(series) // 2)
        self._shown_index = None  # the old image stays painted until the same instance is decoded again
        self.index = -1
        self.set_index(index)

    def set_overlay(self, overlay: OverlaySource | None) -> None:
        """Draw ``overlay`` on top of the slices (``None`` removes it)."""
        self.overlay = overlay
        self._frames.clear()
        self._mask = self._mask_top = None
        self._mask_labels = ()
        self.loader.set_sources(self.series, overlay)
        if self.series is not None:
            self._shown_index = None
            self._request(self.index)
        self.update()

    def _reset_images(self) -> None:
        self._gray = self._mask = self._mask_top = None
        self._pixels = None
        self._mask_labels = ()
        self._shown_index = self._painted_index = None
        self._error = self.mask_mismatch = None

    # --- navigation -------------------------------------------------------------------------------

    def set_index(self, index: int) -> None:
        """Go to slice ``index`` (clamped); shows it at once when it is already decoded."""
        if self.series is None or len(self.series) == 0:
            return
        index = max(0, min(len(self.series) - 1, int(index)))
        if index == self.index and self._shown_index == index:
            return
        if index != self.index:
            self._direction = 1 if index > self.index else -1
        self.index = index
        self.last_request_at = time.perf_counter()
        self.indexChanged.emit(index)
        self._request(index)

    def step(self, delta: int) -> None:
        """Move ``delta`` slices (negative: towards index 0)."""
        self.set_index(self.index + delta)

    def _request(self, index: int) -> None:
        frame = self._frames.get(index)
        if frame is not None:
            self._frames.move_to_end(index)
            self._show(index, *frame)
        assert self.series is not None
        count = len(self.series)
        ahead = [index + self._direction * k for k in range(1, PREFETCH_AHEAD + 1)]
        behind = [index - self._direction * k for k in range(1, PREFETCH_BEHIND + 1)]
        wanted = [] if frame is not None else [index]
        wanted += [i for i in ahead + behind if 0 <= i < count and i not in self._frames]
        self.loader.request(wanted)

    def _on_frame(self, index: int, pixels: np.ndarray, mask: np.ndarray | None) -> None:
        self._frames[index] = (pixels, mask)
        self._frames.move_to_end(index)
        while len(self._frames) > FRAMES_KEPT:
            self._frames.popitem(last=False)
        if index == self.index:
            self._show(index, pixels, mask)

    def _on_frame_failed(self, index: int, message: str) -> None:
        if index == self.index:
            self._error = f"Slice {index} cannot be shown: {message}"
            self._gray = None
            self.statusMessage.emit(self._error)
            self.update()

    def _show(self, index: int, pixels: np.ndarray, mask: np.ndarray | None) -> None:
        self._pixels = pixels
        self._error = None
        dropped = None
        if mask is not None and mask.shape != pixels.shape:
            # Never stretched onto the image: a mask of another size belongs to another grid, and drawn
            # scaled it would look right while the stored pixels are not.
            dropped = (
                f"The mask of slice {index} is {mask.shape[1]}×{mask.shape[0]} but the image is "
                f"{pixels.shape[1]}×{pixels.shape[0]}: not drawn. It does not fit this series."
            )
            mask = None
        self._mask_dropped = dropped is not None
        note = self.overlay.note(index) if self.overlay is not None else None
        self.mask_mismatch = " ".join(text for text in (dropped, note) if text) or None
        if self.mask_mismatch is not None:
            self.statusMessage.emit(self.mask_mismatch)
        if self._auto_window:
            self._auto_window = False
            low, high = np.percentile(pixels, [1.0, 99.0])
            width = max(float(high - low), 1.0)
            self.display_window = Window(float(low) + width / 2.0, width)
            self.windowChanged.emit(self.display_window.center, self.display_window.width)
        self._gray = self._windowed(pixels)
        if mask is not None and mask.any():
            table = self.overlay.colour_table if self.overlay is not None else None
            opaque = self.overlay.opaque_value if self.overlay is not None else None
            self._mask_top = None
            if opaque is not None and (on_top := mask == opaque).any():
                # Drawn at full opacity above the rest, so an outline stays visible at any opacity.
                self._mask_top = label_image(np.where(on_top, mask, 0).astype(mask.dtype), table)
                mask = np.where(on_top, 0, mask).astype(mask.dtype)
            self._mask = label_image(mask, table)
            top = int(mask.max())
            self._mask_labels = tuple(v for v in range(1, min(top, 10) + 1) if (mask == v).any())
        else:
            self._mask = self._mask_top = None
            self._mask_labels = ()
        self._shown_index = index
        self.update()

    # --- display settings -------------------------------------------------------------------------

    def _windowed(self, pixels: np.ndarray) -> ArrayImage:
        """``pixels`` (modality units) as the grey image the current window, level and invert give."""
        window = self.display_window
        return gray_image(window_level(pixels, window.center, window.width, invert=self.invert))

    def set_window(self, center: float, width: float) -> None:
        """Apply a window (level ``center``, ``width``) in modality units."""
        self.display_window = Window(float(center), max(1.0, float(width)))
        if self._pixels is not None:
            self._gray = self._windowed(self._pixels)
        self.windowChanged.emit(self.display_window.center, self.display_window.width)
        self.update()

    def set_overlay_visible(self, visible: bool) -> None:
        """Show or hide the overlay (the O key)."""
        self.overlay_visible = visible
        self.update()

    def set_opacity(self, opacity: float) -> None:
        """Overlay opacity, 0..1."""
        self.opacity = max(0.0, min(1.0, opacity))
        self.update()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom by ``factor`` keeping ``anchor`` (widget coordinates; default the centre) in place."""
        new_zoom = max(min(MIN_ZOOM, self.zoom), min(max(MAX_ZOOM, self.zoom), self.zoom * factor))
        factor = new_zoom / self.zoom
        if anchor is not None:
            centre = QPointF(self.width() / 2, self.height() / 2) + self.pan
            self.pan = self.pan + (centre - anchor) * (factor - 1.0)
        else:
            self.pan = self.pan * factor
        self.zoom = new_zoom
        self.update()

    def fit(self) -> None:
        """Fit the slice to the view (zoom 1, no pan)."""
        self.zoom, self.pan = 1.0, QPointF()
        self.update()

    def actual_scale(self) -> float:
        """Device (screen) pixels per image column at the current zoom: 1.0 is "100%"."""
        if self.series is None or self.series.columns == 0:
            return 1.0
        return self.image_rect().width() / self.series.columns * self.devicePixelRatioF()

    def zoom_actual_size(self) -> None:
        """Zoom 100%: one image pixel per screen pixel (along a row; rows follow the pixel aspect)."""
        scale = self.actual_scale()
        if scale > 0:  # not through zoom_by's limits: a 16x16 slice is far below "fit / 10" at 100%
            self.zoom /= scale
            self.pan = self.pan / scale
            self.update()

    # --- geometry ---------------------------------------------------------------------------------

    def image_rect(self) -> QRectF:
        """Where the slice is drawn, in widget coordinates."""
        if self.series is None:
            return QRectF()
        rows, cols = self.series.rows, self.series.columns
        aspect = 1.0
        if self.series.pixel_spacing and self.series.pixel_spacing[1] > 0:
            aspect = self.series.pixel_spacing[0] / self.series.pixel_spacing[1]
        height_units = rows * aspect
        scale = min(self.width() / cols, self.height() / height_units) * self.zoom
        w, h = cols * scale, height_units * scale
        centre = QPointF(self.width() / 2, self.height() / 2) + self.pan
        # Whole-pixel corner: at 100% each image pixel then falls on exactly one screen pixel.
        return QRectF(round(centre.x() - w / 2), round(centre.y() - h / 2), w, h)

    def image_to_widget(self, column: float, row: float) -> QPointF:
        """Widget position of the centre of image pixel (``column``, ``row``)."""
        rect = self.image_rect()
        assert self.series is not None
        return QPointF(
            rect.left() + (column + 0.5) * rect.width() / self.series.columns,
            rect.top() + (row + 0.5) * rect.height() / self.series.rows,
        )

    def shown_index(self) -> int | None:
        """The slice index whose pixels are on screen (``None`` while loading)."""
        return self._shown_index

    def sizeHint(self) -> QSize:
        return QSize(800, 800)

    # --- painting ---------------------------------------------------------------------------------

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#000000"))
        if self.series is None:
            self._paint_empty(painter)
            painter.end()
            return
        target = self.image_rect()
        if self._gray is not None:
            # Magnified: nearest-neighbour, like the overlay, so each image pixel is a sharp block that
            # lines up with the mask's blocks. Reduced: smooth, so a big slice does not alias.
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.actual_scale() < 1.0)
            painter.drawImage(target, self._gray.image)
            if self._mask is not None and self.overlay_visible and self.opacity > 0:
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
                painter.setOpacity(self.opacity)
                painter.drawImage(target, self._mask.image)
                painter.setOpacity(1.0)
                if self._mask_top is not None:
                    painter.drawImage(target, self._mask_top.image)
        self._paint_corners(painter)
        painter.end()
        if self._shown_index is not None and self._painted_index != self._shown_index:
            self._painted_index = self._shown_index
            self.frameShown.emit(self._shown_index)

    def _paint_empty(self, painter: QPainter) -> None:
        painter.setPen(QColor("#8a9099"))
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.3)
        painter.setFont(font)
        painter.drawText(
            self.rect(),
            Qt.AlignmentFlag.AlignCenter,
            "Open a DICOM folder (File ▸ Open series, Ctrl+O)\nor drop a series folder or mask PNGs here",
        )

    def _paint_corners(self, painter: QPainter) -> None:
        series = self.series
        assert series is not None
        margin = 10
        painter.setFont(self.font())
        metrics = painter.fontMetrics()
        line = metrics.height()
        ref = series[self.index] if 0 <= self.index < len(series) else None
        position = f"  pos {ref.position:.1f} mm" if ref is not None and ref.position is not None else ""
        top_left = [
            series.patient_id or "(no patient id)",
            series.description or series.modality,
            f"{series.modality}  {series.columns}×{series.rows}  {len(series)} slices",
        ]
        bottom_left = [f"{slice_text(self.index, len(series))}{position}"]
        if self._shown_index != self.index:
            bottom_left.append("loading…")
        bottom_right = [
            f"W {self.display_window.width:.0f}  L {self.display_window.center:.0f}",
            f"Zoom {self.actual_scale() * 100:.0f}%",
        ]
        top_right: list[str] = []
        if self.overlay is not None:
            state = "" if self.overlay_visible else " (hidden, O)"
            top_right.append(f"Overlay: {self.overlay.title}{state}")
            if self.mask_mismatch is not None and self._shown_index == self.index:
                top_right.append(
                    "mask of another size: not drawn" if self._mask_dropped else "part not drawn"
                )
            elif self.overlay.has(self.index):
                top_right.append(f"mask on this slice · opacity {self.opacity * 100:.0f}%")
            else:
                top_right.append("no mask on this slice")

        def draw(lines: list[str], right: bool, bottom: bool) -> None:
            for i, text in enumerate(lines):
                y = (
                    (self.height() - margin - (len(lines) - 1 - i) * line - metrics.descent())
                    if bottom
                    else (margin + metrics.ascent() + i * line)
                )
                x = self.width() - margin - metrics.horizontalAdvance(text) if right else margin
                painter.setPen(QColor(0, 0, 0, 200))
                painter.drawText(int(x) + 1, int(y) + 1, text)
                painter.setPen(QColor("#e8d27a") if bottom and not right else QColor("#e6e8eb"))
                painter.drawText(int(x), int(y), text)

        draw(top_left, right=False, bottom=False)
        draw(bottom_left, right=False, bottom=True)
        draw(bottom_right, right=True, bottom=True)
        draw(top_right, right=True, bottom=False)
        if self._mask_labels and self.overlay_visible:
            x = self.width() - margin
            y = margin + len(top_right) * line + 6
            for label in self._mask_labels:
                text = f"label {label}"
                width = metrics.horizontalAdvance(text)
                painter.fillRect(int(x - width - 18), int(y + 3), 12, 12, label_colour(label))
                painter.setPen(QColor("#e6e8eb"))
                painter.drawText(int(x - width), int(y + metrics.ascent()), text)
                y += line
        self._paint_markers(painter)
        if self._error:
            painter.setPen(QColor("#ff6b6b"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._error)
        elif self.mask_mismatch is not None and self._shown_index == self.index:
            painter.setPen(QColor("#ff6b6b"))
            banner = self.rect().adjusted(margin, margin + 4 * line, -margin, 0)
            painter.drawText(
                banner, Qt.AlignmentFlag.AlignHCenter | Qt.TextFlag.TextWordWrap, self.mask_mismatch
            )

    def _paint_markers(self, painter: QPainter) -> None:
        """The patient orientation letters in the middle of each edge of the view."""
        if self.markers is None:
            return
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        margin = 8
        w, h = self.width(), self.height()
        places = (
            (self.markers.left, margin, h / 2 + metrics.ascent() / 2),
            (
                self.markers.right,
                w - margin - metrics.horizontalAdvance(self.markers.right),
                h / 2 + metrics.ascent() / 2,
            ),
            (
                self.markers.top,
                w / 2 - metrics.horizontalAdvance(self.markers.top) / 2,
                margin + metrics.ascent(),
            ),
            (
                self.markers.bottom,
                w / 2 - metrics.horizontalAdvance(self.markers.bottom) / 2,
                h - margin - metrics.descent(),
            ),
        )
        for text, x, y in places:
            painter.setPen(QColor(0, 0, 0, 200))
            painter.drawText(int(x) + 1, int(y) + 1, text)
            painter.setPen(QColor("#7fd8ff"))
            painter.drawText(int(x), int(y), text)
        painter.setFont(self.font())

    # --- input ------------------------------------------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta().y()
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            if delta:
                self.zoom_by(math.pow(1.15, delta / 120.0), event.position())
            event.accept()
            return
        self._wheel_rest += delta
        steps = int(self._wheel_rest / 120)
        if steps:
            self._wheel_rest -= steps * 120
            self.step(-steps)  # wheel away from you: towards the head, like most viewers
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        steps: dict[int, int] = {
            Qt.Key.Key_Up: -1,
            Qt.Key.Key_Left: -1,
            Qt.Key.Key_Down: 1,
            Qt.Key.Key_Right: 1,
            Qt.Key.Key_PageUp: -10,
            Qt.Key.Key_PageDown: 10,
        }
        if key in steps:
            self.step(steps[key])
        elif key == Qt.Key.Key_Home:
            self.set_index(0)
        elif key == Qt.Key.Key_End and self.series is not None:
            self.set_index(len(self.series) - 1)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        self._drag_button = event.button()
        self._drag_start = event.position()
        self._drag_window = self.display_window
        self._drag_pan = QPointF(self.pan)
        if event.button() == Qt.MouseButton.RightButton:
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        elif event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag_button is None:
            return
        delta = event.position() - self._drag_start
        if self._drag_button == Qt.MouseButton.RightButton:
            sensitivity = max(1.0, self._drag_window.width / 256.0)
            self.set_window(
                self._drag_window.center + delta.y() * sensitivity,
                self._drag_window.width + delta.x() * sensitivity,
            )
        elif self._drag_button in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self.pan = self._drag_pan + delta
            self.update()
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag_button = None
        self.unsetCursor()
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.fit()
        event.accept()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.update()
