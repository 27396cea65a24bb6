"""Issue 9 in the window: masks are checked against the annotation's series as the server recorded it.

Real window, real bundled server, real DICOM (generated CTs, pydicom's MR): "Create from open series"
records the folder's geometry; masks of another size or beyond the series, and another open series,
are refused before anything is sent.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.ui.main_window import MainWindow
from server.contract.messages import AnnotationOut


def write_masks(folder: Path, sizes: dict[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, size in sizes.items():
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[1:4, 1:4] = 1
        Image.fromarray(mask, mode="L").save(folder / f"mask_{index:04d}.png")
    return folder


def ct_annotation(api: ApiClient, folder: Path, seed: int) -> AnnotationOut:
    write_synthetic_ct(folder, slices=4, size=32, seed=seed)
    series = load_series(folder)
    return api.create_annotation(
        series.study_instance_uid, series.series_instance_uid, series.patient_id, "ui geometry",
        series=geometry_from_series(series),
    )  # fmt: skip


def visible_boxes(window: MainWindow) -> list[QMessageBox]:
    return [w for w in window.findChildren(QMessageBox) if w.isVisible()]


def close_boxes(window: MainWindow) -> None:
    for box in visible_boxes(window):
        box.close()


def test_create_from_open_series_records_the_folder_geometry(
    qtbot: Any, window: MainWindow, ui_api: ApiClient, tmp_path: Path
) -> None:
    write_synthetic_ct(tmp_path / "ct", slices=5, size=32, seed=8181)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(tmp_path / "ct")
    with qtbot.waitSignal(window.picker.annotationChosen, timeout=15_000) as chosen:
        qtbot.mouseClick(window.picker.create_button, Qt.MouseButton.LeftButton)
    created = chosen.args[0]
    assert (created.has_geometry, created.rows, created.columns, created.slice_count) == (
        True,
        32,
        32,
        5,
    )
    stored = ui_api.annotation_series(created.id)
    assert [i.sop_instance_uid for i in stored.instances] == [r.sop_instance_uid for r in window.series]


def test_masks_of_another_size_or_beyond_the_series_are_refused_before_sending(
    qtbot: Any, window: MainWindow, ui_api: ApiClient, tmp_path: Path
) -> None:
    annotation = ct_annotation(ui_api, tmp_path / "ct", seed=8282)
    masks = write_masks(tmp_path / "masks", {0: 16, 1: 16, 2: 32, 9: 32})
    window.picker.choose(annotation)  # no series open: the recorded geometry is what checks the masks
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([masks])
    window.upload.set_fields("ui-geometry", "1", "manual")

    with qtbot.waitSignal(window.masksPrepared, timeout=10_000) as checked:
        window.start_upload()

    prepared = checked.args[0]
    assert prepared.plan is None
    found = {(p.filename, p.code): p.message for p in prepared.problems}
    assert "mask is 16x16 but slice 0 is 32x32" in found[("mask_0000.png", "size_mismatch")]
    assert ("mask_0001.png", "size_mismatch") in found
    assert "slice index 9 is outside the series (0..3)" in found[("mask_0009.png", "no_matching_slice")]
    assert [b.windowTitle() for b in visible_boxes(window)] == ["Masks need attention"]
    close_boxes(window)
    assert not window.upload.running
    assert ui_api.list_groups(annotation.id) == []


def test_another_open_series_is_refused_before_sending(
    qtbot: Any, window: MainWindow, ui_api: ApiClient, tmp_path: Path
) -> None:
    annotation = ct_annotation(ui_api, tmp_path / "ct", seed=8383)
    mr = tmp_path / "mr"
    mr.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), mr / "MR_small.dcm")
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(mr)
    window.picker.choose(annotation)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000) as checked:
        window.add_masks([write_masks(tmp_path / "masks", {0: 16})])
    codes = {p.code for p in checked.args[0].problems}
    assert {"wrong_series", "size_mismatch"} <= codes
    window.upload.set_fields("ui-geometry", "1", "manual")

    window.start_upload()

    assert [b.windowTitle() for b in visible_boxes(window)] == ["Cannot upload yet"]
    close_boxes(window)
    assert ui_api.list_groups(annotation.id) == []


def test_a_folder_mixing_planes_is_refused_with_a_clear_message_not_shown_as_a_stack(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    paths = write_synthetic_ct(tmp_path / "radial", slices=4, size=16, seed=8484)
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal slice among axial ones
    ds.save_as(paths[2])

    window.open_series(tmp_path / "radial")

    qtbot.waitUntil(lambda: bool(visible_boxes(window)), timeout=10_000)
    (box,) = visible_boxes(window)
    assert box.windowTitle() == "Cannot open the series"
    assert "mixes planes" in box.text() + box.informativeText() + (box.detailedText() or "")
    assert window.series is None
    close_boxes(window)
