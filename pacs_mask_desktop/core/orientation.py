"""Patient orientation labels (R/L, A/P, H/F) for the edges of a displayed slice.

DICOM's patient coordinate system is LPS: +x points to the patient's Left, +y Posterior, +z Head
(superior). ImageOrientationPatient gives the direction cosines of a row (left to right on screen) and
of a column (top to bottom). So the right edge of the image lies in the row direction, the bottom edge
in the column direction, and the opposite edges in the opposite directions (PS3.3 C.7.6.2.1.1).

For an oblique plane a direction is named by up to three letters, the largest component first (David
Clunie's convention, used by dcm4che and OHIF): a slightly tilted axial slice's bottom edge is "PF".
Components below :data:`OBLIQUE_THRESHOLD` are left out so rounding noise in the header does not add
letters. The viewer draws the labels; this module has no Qt so it is tested on real headers alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OBLIQUE_THRESHOLD = 0.05
"""A direction component smaller than this (about 3 degrees) does not add a letter."""

_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # (positive, negative) per LPS axis


@dataclass(frozen=True, slots=True)
class EdgeLabels:
    """What each edge of the displayed image points towards in the patient."""

    left: str
    right: str
    top: str
    bottom: str


def direction_label(vector: Sequence[float]) -> str:
    """Letters naming the patient direction of ``vector`` (LPS), largest component first.

    ``(1, 0, 0)`` is "L", ``(0, -1, 0)`` "A", ``(0.7, 0, -0.7)`` "LF". Empty for a zero vector.
    """
    if len(vector) != 3:
        raise ValueError(f"a direction has 3 components, got {len(vector)}")
    order = sorted(range(3), key=lambda axis: -abs(float(vector[axis])))
    letters = []
    for axis in order:
        value = float(vector[axis])
        if abs(value) >= OBLIQUE_THRESHOLD:
            positive, negative = _LETTERS[axis]
            letters.append(positive if value > 0 else negative)
    return "".join(letters)


def edge_labels(image_orientation_patient: Sequence[float] | None) -> EdgeLabels | None:
    """The labels of the four edges of an image with this ImageOrientationPatient.

    ``None`` when the orientation is unknown or malformed (the viewer then draws no markers rather
    than guessing). An axial slice ``[1,0,0, 0,1,0]`` gives left "R", right "L", top "A", bottom "P".
    """
    if image_orientation_patient is None:
        return None
    try:
        values = [float(v) for v in image_orientation_patient]
    except (TypeError, ValueError):
        return None
    if len(values) != 6:
        return None
    row, column = values[:3], values[3:]
    if not any(abs(v) >= OBLIQUE_THRESHOLD for v in row) or not any(
        abs(v) >= OBLIQUE_THRESHOLD for v in column
    ):
        return None
    return EdgeLabels(
        left=direction_label([-v for v in row]),
        right=direction_label(row),
        top=direction_label([-v for v in column]),
        bottom=direction_label(column),
    )
