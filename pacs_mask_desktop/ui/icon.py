"""The application icon, painted with QPainter: an axial CT slice with a liver mask and an upload arrow.

``resources/icons/app.png`` is this drawing saved at 256 px (``resources.write_icon_png``); the app
paints it again at run time when a build does not ship the PNG.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QLinearGradient, QPainter, QPainterPath, QPen, QPolygonF


def paint_app_icon(size: int = 256) -> QImage:
    """The icon as a ``size`` x ``size`` ARGB image."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    s = size / 256.0
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)

    # Rounded dark tile.
    tile = QRectF(8 * s, 8 * s, 240 * s, 240 * s)
    gradient = QLinearGradient(tile.topLeft(), tile.bottomRight())
    gradient.setColorAt(0.0, QColor("#2b3440"))
    gradient.setColorAt(1.0, QColor("#11151a"))
    painter.setPen(QPen(QColor("#4a5563"), 4 * s))
    painter.setBrush(QBrush(gradient))
    painter.drawRoundedRect(tile, 44 * s, 44 * s)

    # An abdominal cross-section at liver level: body, spine and aorta, a dark bowel loop.
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#5f666f"))
    painter.drawEllipse(QRectF(26 * s, 74 * s, 204 * s, 140 * s))
    painter.setBrush(QColor("#8d959e"))
    painter.drawEllipse(QRectF(36 * s, 82 * s, 184 * s, 124 * s))
    painter.setBrush(QColor("#e8ecf0"))
    painter.drawEllipse(QRectF(114 * s, 168 * s, 28 * s, 26 * s))
    painter.drawEllipse(QRectF(134 * s, 148 * s, 14 * s, 14 * s))
    painter.setBrush(QColor("#3a4048"))
    painter.drawEllipse(QRectF(160 * s, 110 * s, 34 * s, 26 * s))

    # The mask: a large liver on the image left in translucent red with a bright outline.
    liver = QPainterPath()
    liver.moveTo(48 * s, 140 * s)
    liver.cubicTo(46 * s, 100 * s, 110 * s, 88 * s, 140 * s, 104 * s)
    liver.cubicTo(150 * s, 112 * s, 132 * s, 128 * s, 116 * s, 140 * s)
    liver.cubicTo(100 * s, 156 * s, 96 * s, 184 * s, 74 * s, 182 * s)
    liver.cubicTo(58 * s, 180 * s, 48 * s, 162 * s, 48 * s, 140 * s)
    painter.setBrush(QColor(235, 64, 52, 190))
    painter.setPen(QPen(QColor("#ff8a80"), 3 * s))
    painter.drawPath(liver)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(61, 220, 132, 220))
    painter.drawEllipse(QRectF(74 * s, 116 * s, 22 * s, 20 * s))

    # Upload arrow in the corner.
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#3d8bfd"))
    painter.drawEllipse(QRectF(158 * s, 22 * s, 76 * s, 76 * s))
    arrow = QPolygonF(
        [
            QPointF(196 * s, 34 * s),
            QPointF(220 * s, 60 * s),
            QPointF(205 * s, 60 * s),
            QPointF(205 * s, 84 * s),
            QPointF(187 * s, 84 * s),
            QPointF(187 * s, 60 * s),
            QPointF(172 * s, 60 * s),
        ]
    )
    painter.setBrush(QColor("#ffffff"))
    painter.drawPolygon(arrow)
    painter.end()
    return image
