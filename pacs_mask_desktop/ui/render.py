"""numpy -> QImage without copies, and the label colours of mask overlays.

A slice is shown as an 8-bit grayscale ``QImage`` that points straight into the windowed numpy buffer
(``Format_Grayscale8``), and a mask as an ``Indexed8`` image pointing into the label buffer whose
colour table *is* the label palette (index 0 transparent). Neither needs a per-pixel Python loop or a
copy; the caller keeps the numpy array alive as long as the image (:class:`ArrayImage` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtGui import QColor, QImage, qRgba

LABEL_COLOURS: tuple[str, ...] = (
    "#ff4d4d",  # 1 red (liver in the demo)
    "#3ddc84",  # 2 green (lesion)
    "#4da3ff",  # 3 blue
    "#ffd23f",  # 4 yellow
    "#c77dff",  # 5 purple
    "#2ee6d6",  # 6 cyan
    "#ff9f43",  # 7 orange
    "#ff6bcb",  # 8 pink
    "#a3e635",  # 9 lime
    "#f8f8f2",  # 10 white
)
"""One colour per label id, cycled for labels above 10 (what the legend shows)."""


def label_colour(label: int) -> QColor:
    """The overlay colour of ``label`` (1-based)."""
    return QColor(LABEL_COLOURS[(label - 1) % len(LABEL_COLOURS)])


def _palette() -> list[int]:
    table = [qRgba(0, 0, 0, 0)]
    for label in range(1, 256):
        colour = label_colour(label)
        table.append(qRgba(colour.red(), colour.green(), colour.blue(), 255))
    return table


LABEL_TABLE = _palette()


@dataclass(frozen=True, slots=True)
class ArrayImage:
    """A ``QImage`` and the numpy buffer it points into (kept together so the buffer outlives it)."""

    image: QImage
    array: np.ndarray


def gray_image(pixels: np.ndarray) -> ArrayImage:
    """A grayscale image over a 2-D uint8 array (no copy when the array is C-contiguous)."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = array.shape
    image = QImage(array.data, width, height, array.strides[0], QImage.Format.Format_Grayscale8)
    return ArrayImage(image, array)


def label_image(labels: np.ndarray, table: list[int] | None = None) -> ArrayImage:
    """An indexed image of a 2-D label array; labels above 255 wrap into the 1..255 palette range.

    ``table`` replaces the label palette (256 ``qRgba`` values, e.g. a compare overlay's outline colour).
    """
    if labels.dtype != np.uint8:
        wide = labels.astype(np.int64)
        labels = np.where(wide > 0, (wide - 1) % 255 + 1, 0).astype(np.uint8)
    array = np.ascontiguousarray(labels)
    height, width = array.shape
    image = QImage(array.data, width, height, array.strides[0], QImage.Format.Format_Indexed8)
    image.setColorTable(table or LABEL_TABLE)
    return ArrayImage(image, array)


def mask_outline(labels: np.ndarray) -> np.ndarray:
    """Labels kept only on region borders (4-neighbour edges): an outline for a "contour" look."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return np.where(edge, labels, 0).astype(labels.dtype)
