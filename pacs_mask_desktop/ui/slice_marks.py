"""Marks along the slice slider: review findings as ticks, a compare's per-slice Dice as a coloured band.

A :class:`SliceMarks` strip sits right above or below the viewer's ``QSlider`` and places each mark at
the x position of the slider's handle for that slice (taken from the slider's own style, so the marks
line up with the handle on every platform style). Clicking a mark asks for its slice. The strip paints
only; what the marks mean is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPolygon
from PySide6.QtWidgets import QSizePolicy, QSlider, QStyle, QStyleOptionSlider, QWidget

TICK_HEIGHT = 11
BAND_HEIGHT = 10
CLICK_SLOP = 4
"""Pixels either side of a mark that still count as a click on it."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One mark: the slice it belongs to, its colour and a tooltip line."""

    slice_index: int
    colour: str
    text: str = ""


def dice_colour(dice: float | None) -> str:
    """Red (0) through amber (0.5) to green (1) for a Dice coefficient; grey when there is none."""
    if dice is None:
        return "#6b7079"
    value = max(0.0, min(1.0, float(dice)))
    if value < 0.5:  # red -> amber
        t = value / 0.5
        red, green, blue = 255, int(77 + (176 - 77) * t), int(77 - 45 * t)
    else:  # amber -> green, squared so that 0.7-0.9 (where the threshold usually is) stays amber-ish
        t = ((value - 0.5) / 0.5) ** 2
        red, green, blue = int(255 - (255 - 61) * t), int(176 + (220 - 176) * t), int(32 + (132 - 32) * t)
    return QColor(red, green, blue).name()


class SliceMarks(QWidget):
    """A thin strip of marks aligned with ``slider``'s handle positions.

    ``style`` is ``"ticks"`` (small triangles pointing at the slider, for findings) or ``"band"`` (a
    filled cell per slice, for per-slice Dice). ``below`` says on which side of the slider it sits.
    """

    sliceClicked = Signal(int)

    def __init__(
        self, slider: QSlider, *, style: str = "ticks", below: bool = False, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.slider = slider
        self.mark_style = style
        self.below = below
        self.marks: list[Mark] = []
        self.setObjectName("sliceBand" if style == "band" else "sliceTicks")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(BAND_HEIGHT if style == "band" else TICK_HEIGHT)
        self.setMouseTracking(True)
        self.hide()
        slider.rangeChanged.connect(lambda _low, _high: self.update())

    def set_marks(self, marks: list[Mark]) -> None:
        """Replace the marks (an empty list hides the strip)."""
        self.marks = sorted(marks, key=lambda m: m.slice_index)
        self.setVisible(bool(self.marks))
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(200, self.height())

    # --- geometry -----------------------------------------------------------------------------------

    def _span(self) -> tuple[int, int]:
        """x of slice ``minimum`` and of slice ``maximum`` in this widget's coordinates."""
        slider = self.slider
        option = QStyleOptionSlider()
        slider.initStyleOption(option)
        style = slider.style()
        groove = style.subControlRect(
            QStyle.ComplexControl.CC_Slider, option, QStyle.SubControl.SC_SliderGroove, slider
        )
        handle = style.subControlRect(
            QStyle.ComplexControl.CC_Slider, option, QStyle.SubControl.SC_SliderHandle, slider
        )
        half = handle.width() // 2
        left = slider.mapTo(self.window(), QPoint(groove.left() + half, 0)).x()
        right = slider.mapTo(self.window(), QPoint(groove.right() - half, 0)).x()
        origin = self.mapTo(self.window(), QPoint(0, 0)).x()
        return left - origin, right - origin

    def x_of(self, slice_index: int) -> float:
        """Horizontal position of ``slice_index`` (the handle's centre there)."""
        left, right = self._span()
        low, high = self.slider.minimum(), self.slider.maximum()
        if high <= low:
            return float(left)
        return left + (slice_index - low) * (right - left) / (high - low)

    def mark_at(self, x: float) -> Mark | None:
        """The mark nearest to ``x`` within a few pixels (``None`` when there is none)."""
        best: tuple[float, Mark] | None = None
        for mark in self.marks:
            distance = abs(self.x_of(mark.slice_index) - x)
            if distance <= CLICK_SLOP + self._cell_width() / 2 and (best is None or distance < best[0]):
                best = (distance, mark)
        return best[1] if best else None

    def _cell_width(self) -> float:
        left, right = self._span()
        count = max(1, self.slider.maximum() - self.slider.minimum())
        return max(1.0, (right - left) / count)

    # --- painting and input ---------------------------------------------------------------------------

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        height = self.height()
        if self.mark_style == "band":
            cell = self._cell_width()
            left, right = self._span()
            painter.fillRect(
                QRect(int(left - cell / 2), 1, int(right - left + cell), height - 2), QColor("#2a2e35")
            )
            for mark in self.marks:
                x = self.x_of(mark.slice_index)
                left = round(x - cell / 2)
                width = max(2, round(x + cell / 2) - left)
                painter.fillRect(QRect(left, 1, width, height - 2), QColor(mark.colour))
        else:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            painter.setPen(QColor(0, 0, 0, 180))
            for mark in self.marks:
                x = round(self.x_of(mark.slice_index))
                tip, base = (1, height - 1) if self.below else (height - 1, 1)
                painter.setBrush(QColor(mark.colour))
                painter.drawPolygon(QPolygon([QPoint(x, tip), QPoint(x - 6, base), QPoint(x + 6, base)]))
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        mark = self.mark_at(event.position().x())
        if mark is not None and event.button() == Qt.MouseButton.LeftButton:
            self.sliceClicked.emit(mark.slice_index)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        mark = self.mark_at(event.position().x())
        self.setToolTip(mark.text if mark is not None else "")
        self.setCursor(Qt.CursorShape.PointingHandCursor if mark is not None else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)
