"""Dropping masks on the real window: the matching table's statuses, jump-to-problem, the overlay pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from pacs_mask_desktop.ui.main_window import MainWindow
from pacs_mask_desktop.ui.render import label_colour
from tests.ui.conftest import SLICES, UiData, drop_paths


def open_series(qtbot: Any, window: MainWindow, data: UiData) -> None:
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(data.series_dir)
    assert len(window.series) == SLICES


def test_dropped_folder_shows_each_masks_status(qtbot: Any, window: MainWindow, ui_data: UiData) -> None:
    open_series(qtbot, window, ui_data)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        drop_paths(window, [ui_data.bad_masks_dir])

    panel = window.masks
    assert window.tabs.currentWidget() is panel
    assert panel.status_of("mask_0003.png") == "ok"
    assert panel.status_of("mask_0020.png") == "empty"
    assert panel.status_of("mask_0005.png") == "unreadable"
    assert panel.status_of("mask_0006.png") == "size_mismatch"
    assert panel.status_of("mask_0099.png") == "no_matching_slice"
    assert panel.status_of("mask_0007.png") == "duplicate"
    assert panel.status_of("slice-7.png") == "duplicate"
    assert panel.model.rowCount() == SLICES + 2
    shown = {panel.model.data(panel.model.index(r, 2)) for r in range(panel.model.rowCount())}
    assert {"ok", "empty", "unreadable", "size mismatch", "no matching slice", "duplicate"} <= shown

    # Jump-to-problem walks the blocking rows and moves the viewer to their slice.
    assert panel.next_problem.isEnabled()
    row = panel.jump_to_next_problem()
    assert row is not None
    first = panel.model.items[row]
    assert first.status not in ("ok", "empty")
    assert window.viewer.view.index == first.slice_index
    second = panel.model.items[panel.jump_to_next_problem()]
    assert second.filename != first.filename

    # Uploading is refused before anything is sent, and the problems are named.
    window.picker.choose(ui_data.annotation)
    window.upload.set_fields("should-not-upload", "1", "manual")
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.start_upload()
    assert window.upload.worker is None
    assert window.upload.model.rowCount() == 0


def test_overlay_is_drawn_in_label_colours(qtbot: Any, window: MainWindow, ui_data: UiData) -> None:
    open_series(qtbot, window, ui_data)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.handle_dropped_paths([ui_data.masks_dir])
    view = window.viewer.view
    slice_index = 8  # liver (1) and lesion (2) on this slice of the phantom
    labels = np.asarray(Image.open(ui_data.masks_dir / f"mask_{slice_index:04d}.png"))
    liver = np.argwhere(labels == 1)
    lesion = np.argwhere(labels == 2)
    # Pixels deep inside each region, so scaling never samples an edge.
    row, col = liver[len(liver) // 3]
    lrow, lcol = lesion[len(lesion) // 2]

    window.viewer.opacity.setValue(100)
    with qtbot.waitSignal(view.frameShown, timeout=5_000, check_params_cb=lambda i: i == slice_index):
        view.set_index(slice_index)

    def pixel(r: int, c: int) -> QColor:
        image = view.grab().toImage()
        point = view.image_to_widget(float(c), float(r)).toPoint()
        return image.pixelColor(point * view.devicePixelRatioF())

    assert pixel(row, col).name() == label_colour(1).name()
    assert pixel(lrow, lcol).name() == label_colour(2).name()

    # Half opacity blends the CT grey with the label colour: red clearly dominates.
    window.viewer.opacity.setValue(50)
    blended = pixel(row, col)
    assert blended.red() > blended.green() + 40
    assert blended.red() > blended.blue() + 40

    # O hides the overlay: the pixel is plain grey again.
    window.activateWindow()
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_O)
    assert not window.viewer.overlay_box.isChecked()
    grey = pixel(row, col)
    assert abs(grey.red() - grey.green()) <= 2
    assert abs(grey.red() - grey.blue()) <= 2

    # Scrolling with the wheel and arrow keys moves through the slices.
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.index == slice_index + 1
    qtbot.keyClick(view, Qt.Key.Key_Home)
    assert view.index == 0


def test_window_presets_and_zoom(qtbot: Any, window: MainWindow, ui_data: UiData) -> None:
    open_series(qtbot, window, ui_data)
    view = window.viewer.view
    assert (view.display_window.center, view.display_window.width) == (40.0, 400.0)  # the files' own window
    window.menu_actions["preset_lung"].trigger()
    assert (view.display_window.center, view.display_window.width) == (-600.0, 1500.0)
    assert window.viewer.preset.currentData() == "lung"
    window.menu_actions["preset_bone"].trigger()
    assert view.display_window.width == 1800.0
    window.menu_actions["zoom_in"].trigger()
    assert view.zoom > 1.0
    window.menu_actions["fit"].trigger()
    assert view.zoom == 1.0


def test_compressed_multiframe_series_is_shown_in_geometry_order(
    qtbot: Any, window: MainWindow, tmp_path: Any
) -> None:
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from pacs_mask_desktop.core.demo import write_synthetic_enhanced_ct

    path = write_synthetic_enhanced_ct(
        tmp_path / "enhanced" / "ct.dcm", frames=12, size=64, reverse_frames=True
    )
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)  # decoded again through the pylibjpeg plugin
    ds.save_as(path)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.handle_dropped_paths([path.parent])
    series = window.series
    assert len(series) == 12
    assert series.is_multiframe
    positions = [ref.position for ref in series.slices]
    assert positions == sorted(positions)
    assert series[0].frame_number == 12  # stored top-down: the lowest slice is the last frame
    view = window.viewer.view
    with qtbot.waitSignal(view.frameShown, timeout=5_000, check_params_cb=lambda i: i == 0):
        view.set_index(0)
    assert np.array_equal(view._pixels, series.pixel_array(0))
