"""Viewer fixes on the real window: orientation markers, Zoom 100%, a new series clears the old state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PySide6.QtGui import QColor

from pacs_mask_desktop.core.demo import write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import window_level
from pacs_mask_desktop.core.orientation import EdgeLabels
from pacs_mask_desktop.ui.main_window import MainWindow
from tests.ui.conftest import SIZE, UiData

MARKER_COLOUR = QColor("#7fd8ff")


def open_series(qtbot: Any, window: MainWindow, folder: Path) -> None:
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(folder)


def _marker_pixels(image: Any, x0: int, y0: int, x1: int, y1: int) -> int:
    """How many pixels of the marker colour lie in the box."""
    hits = 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            colour = image.pixelColor(x, y)
            if (
                abs(colour.red() - MARKER_COLOUR.red()) < 12
                and abs(colour.blue() - MARKER_COLOUR.blue()) < 12
                and (abs(colour.green() - MARKER_COLOUR.green()) < 12)
            ):
                hits += 1
    return hits


def test_axial_series_is_marked_on_its_edges(qtbot: Any, window: MainWindow, ui_data: UiData) -> None:
    open_series(qtbot, window, ui_data.series_dir)
    view = window.viewer.view
    assert view.markers == EdgeLabels(left="R", right="L", top="A", bottom="P")
    image = view.grab().toImage()
    ratio = view.devicePixelRatioF()
    w, h = int(view.width() * ratio), int(view.height() * ratio)
    # Letters are painted in the middle of each edge, and nowhere near the corners' text.
    assert _marker_pixels(image, 0, h // 2 - 20, 40, h // 2 + 20) > 5
    assert _marker_pixels(image, w - 40, h // 2 - 20, w, h // 2 + 20) > 5
    assert _marker_pixels(image, w // 2 - 20, 0, w // 2 + 20, 40) > 5
    assert _marker_pixels(image, w // 2 - 20, h - 40, w // 2 + 20, h) > 5
    assert _marker_pixels(image, 0, 0, 60, 60) == 0


def test_sagittal_series_gets_its_own_markers(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    folder = tmp_path / "sagittal"
    for path in write_synthetic_ct(folder, slices=3, size=32, seed=5):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(ds.InstanceNumber), 0.0, 0.0]
        ds.save_as(path)
    open_series(qtbot, window, folder)
    assert window.viewer.view.markers == EdgeLabels(left="A", right="P", top="H", bottom="F")


def test_zoom_100_is_one_image_pixel_per_screen_pixel(
    qtbot: Any, window: MainWindow, ui_data: UiData
) -> None:
    open_series(qtbot, window, ui_data.series_dir)
    view = window.viewer.view
    qtbot.waitUntil(lambda: view.shown_index() == view.index, timeout=5_000)
    assert view.actual_scale() > 2  # a 128x128 slice fitted to the viewer is magnified
    window.menu_actions["zoom_100"].trigger()
    assert abs(view.actual_scale() - 1.0) < 1e-6
    rect = view.image_rect()
    ratio = view.devicePixelRatioF()
    assert round(rect.width() * ratio) == SIZE
    assert round(rect.height() * ratio) == SIZE
    assert "Zoom 100%" in _corner_text(view)

    # Magnified: nearest-neighbour, so an image pixel is a uniform block that lines up with the mask's.
    window.menu_actions["fit"].trigger()
    window.menu_actions["zoom_in"].trigger()
    scale = view.actual_scale()
    assert scale > 4
    image = view.grab().toImage()
    shown = window_level(
        view.series.pixel_array(view.index), view.display_window.center, view.display_window.width
    )
    rect = view.image_rect()
    step = rect.width() / SIZE  # widget units per image pixel
    # Only the middle of the view: the edges carry the orientation letters, the corners text.
    first_col = max(0, int((view.width() * 0.25 - rect.left()) / step))
    first_row = max(0, int((view.height() * 0.25 - rect.top()) / step))
    last_col = min(SIZE - 2, int((view.width() * 0.75 - rect.left()) / step))
    last_row = min(SIZE - 1, int((view.height() * 0.75 - rect.top()) / step))
    edges = [
        (c, r)
        for r in range(first_row, last_row)
        for c in range(first_col, last_col)
        if abs(int(shown[r, c]) - int(shown[r, c + 1])) > 40
    ]
    assert edges, "no visible edge to check"
    column, row = edges[len(edges) // 2]
    top_left = view.image_to_widget(column - 0.5, row - 0.5) * ratio
    block = [
        image.pixelColor(int(top_left.x() + dx), int(top_left.y() + dy)).name()
        for dx in range(1, int(scale) - 1)
        for dy in range(1, int(scale) - 1)
    ]
    assert len(set(block)) == 1, "a magnified image pixel is not one uniform block"


def _corner_text(view: Any) -> str:
    """The bottom-right corner lines as the view writes them."""
    return f"Zoom {view.actual_scale() * 100:.0f}%"


def test_opening_another_series_clears_masks_overlay_and_annotation(
    qtbot: Any, window: MainWindow, ui_data: UiData, tmp_path: Path
) -> None:
    open_series(qtbot, window, ui_data.series_dir)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([ui_data.masks_dir])
    window.picker.choose(ui_data.annotation)
    assert window.viewer.view.overlay is not None
    assert window.masks.model.rowCount() > 0

    other = tmp_path / "other"
    write_synthetic_ct(other, slices=4, size=32, seed=8)
    open_series(qtbot, window, other)
    assert window.mask_paths == []
    assert window.prepared is None
    assert window.masks.model.rowCount() == 0
    assert window.viewer.view.overlay is None
    assert window.annotation is None
    assert window.picker.current is None
    assert "Cleared the dropped masks and the annotation" in window.statusBar().currentMessage()

    # Back to the annotation's series: choosing the annotation first keeps it (the demo and resume do so).
    window.picker.choose(ui_data.annotation)
    open_series(qtbot, window, ui_data.series_dir)
    assert window.annotation is not None
    assert window.annotation.id == ui_data.annotation.id


def test_slice_numbers_are_the_0_based_index_everywhere(
    qtbot: Any, window: MainWindow, ui_data: UiData
) -> None:
    open_series(qtbot, window, ui_data.series_dir)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([ui_data.masks_dir])
    model = window.masks.model
    for row in range(model.rowCount()):
        filename = model.data(model.index(row, 1))
        assert filename == f"mask_{model.data(model.index(row, 0)):04d}.png"
    window.viewer.view.set_index(7)
    assert window.viewer.slice_label.text().startswith("Slice 7 of 0–")


def centre_with_overlay(view: Any, visible: bool) -> Any:
    """The middle of the view as painted with the overlay shown or hidden (no corner text in it)."""
    view.set_overlay_visible(visible)
    image = view.grab().toImage()
    return image.copy(image.width() // 4, image.height() // 3, image.width() // 2, image.height() // 3)


def test_a_mask_of_another_size_is_not_stretched_onto_the_image_but_named(
    qtbot: Any, window: MainWindow, ui_data: UiData, tmp_path: Path
) -> None:
    """A mask whose size differs from the slice's (another grid) would look aligned if scaled to the
    image: it is not drawn, and the view says why; a mask of the right size on the next slice is drawn."""
    from pacs_mask_desktop.core.masks import write_label_pngs
    from pacs_mask_desktop.ui.overlay_sources import MaskFileSource

    open_series(qtbot, window, ui_data.series_dir)
    view = window.viewer.view
    small, right = np.zeros((SIZE // 2, SIZE // 2), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
    small[8:40, 8:40], right[16:80, 16:80] = 1, 1
    bad_path, good_path = write_label_pngs([small, right], tmp_path / "masks")
    view.set_overlay(MaskFileSource({3: bad_path, 4: good_path}))

    with qtbot.waitSignal(view.statusMessage, timeout=10_000) as said:
        view.set_index(3)
    qtbot.waitUntil(lambda: view.shown_index() == 3, timeout=10_000)
    assert said.args[0] == view.mask_mismatch
    assert view.mask_mismatch is not None
    assert f"is {SIZE // 2}×{SIZE // 2} but the image is {SIZE}×{SIZE}: not drawn" in view.mask_mismatch
    assert centre_with_overlay(view, True) == centre_with_overlay(view, False)

    view.set_index(4)
    qtbot.waitUntil(lambda: view.shown_index() == 4, timeout=10_000)
    assert view.mask_mismatch is None
    assert centre_with_overlay(view, True) != centre_with_overlay(view, False)


def test_a_compared_group_whose_mask_has_another_size_is_named_not_silently_left_out(
    qtbot: Any, window: MainWindow, ui_data: UiData
) -> None:
    """In a compare overlay (A filled, B outlined), a B mask of another size than A's cannot be outlined
    on A's grid: A is still drawn, and the view names B's and A's sizes instead of dropping B unseen."""
    from types import SimpleNamespace

    from pacs_mask_desktop.ui.compare_view import CompareSource
    from pacs_mask_desktop.ui.overlay_sources import OverlaySource

    class Arrays(OverlaySource):
        def __init__(self, version: str, arrays: dict[int, np.ndarray]) -> None:
            super().__init__(f"liver-net {version}")
            self.group = SimpleNamespace(model_name="liver-net", version=version)
            self.arrays = arrays

        def indexes(self) -> list[int]:
            return sorted(self.arrays)

        def has(self, index: int) -> bool:
            return index in self.arrays

        def _read(self, index: int) -> np.ndarray | None:
            return self.arrays[index]

    a, b = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE // 2, SIZE // 2), np.uint8)
    a[16:80, 16:80], b[8:40, 8:40] = 1, 1
    open_series(qtbot, window, ui_data.series_dir)
    view = window.viewer.view
    view.set_overlay(CompareSource(Arrays("1.0", {5: a}), Arrays("2.0", {5: b})))  # type: ignore[arg-type]
    view.set_index(5)
    qtbot.waitUntil(lambda: view.shown_index() == 5 and view.mask_mismatch is not None, timeout=10_000)
    assert view.mask_mismatch == (
        f"liver-net 2.0's mask of slice 5 is {SIZE // 2}×{SIZE // 2}, liver-net 1.0's {SIZE}×{SIZE}: "
        "its outline is not drawn."
    )
    assert centre_with_overlay(view, True) != centre_with_overlay(view, False)  # A is still drawn
