"""Two groups of one annotation compared in the app, against the real bundled server's compare answer:
the per-label table, the per-slice Dice band, F9 to the next disagreement, the outline overlay's pixels,
and per-label volumes in the group list."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.session import disagreements
from pacs_mask_desktop.ui.compare_view import OUTLINE_COLOUR
from pacs_mask_desktop.ui.group_browser import GroupModel, volume_text
from pacs_mask_desktop.ui.main_window import TAB_COMPARE, MainWindow
from pacs_mask_desktop.ui.render import label_colour, mask_outline
from pacs_mask_desktop.ui.slice_marks import dice_colour
from server.contract.messages import AnnotationOut
from tests.ui.conftest import upload_folder

SLICES = 20
CHANGED = range(6, 11)
"""Slices where the second group's liver (label 1) lost its right half (the phantom's liver spans 3-11)."""


@dataclass(frozen=True)
class Case:
    series_dir: Path
    masks_dir: Path
    annotation: AnnotationOut


def make_case(api: ApiClient, root: Path) -> Case:
    """A phantom series of its own whose annotation records the geometry (so volumes are in mL)."""
    series_dir, masks_dir = root / "series", root / "masks"
    write_synthetic_ct(series_dir, slices=SLICES, size=96, seed=int(uuid.uuid4().int % 1000) + 50)
    series = load_series(series_dir)
    write_masks_for_series(series, masks_dir)
    annotation = api.create_annotation(
        series.study_instance_uid,
        series.series_instance_uid,
        patient_id=series.patient_id,
        description="compare test phantom",
        series=geometry_from_series(series),
    )
    return Case(series_dir, masks_dir, annotation)


def upload(api: ApiClient, case: Case, masks: Path, model_name: str, version: str) -> str:
    return upload_folder(
        api,
        masks,
        case.annotation.id,
        model_name=model_name,
        version=version,
        source="manual",
        series=case.series_dir,
    )


def corrected_masks(case: Case, folder: Path) -> Path:
    """The phantom's masks with the right half of label 1 removed on :data:`CHANGED` slices."""
    shutil.copytree(case.masks_dir, folder)
    for index in CHANGED:
        path = folder / f"mask_{index:04d}.png"
        labels = np.asarray(Image.open(path)).copy()
        cut = int(np.median(np.nonzero(labels == 1)[1]))
        half = labels[:, cut:]
        half[half == 1] = 0
        Image.fromarray(labels, mode="L").save(path)
    return folder


def test_compare_two_groups(qtbot: Any, window: MainWindow, ui_api: ApiClient, tmp_path: Path) -> None:
    case = make_case(ui_api, tmp_path)
    model = f"compare-{uuid.uuid4().hex[:8]}"
    first = upload(ui_api, case, case.masks_dir, model, "ai")
    second_masks = corrected_masks(case, tmp_path / "corrected")
    second = upload(ui_api, case, second_masks, model, "corrected")

    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(case.series_dir)
    browser = window.groups
    with qtbot.waitSignal(browser.groupsLoaded, timeout=10_000):
        window.picker.choose(case.annotation)
    qtbot.waitUntil(lambda: browser.groups.row_of(second) is not None, timeout=10_000)
    assert browser.select_group(first)
    assert browser.compare_button.isEnabled()
    assert second in [g.id for g in browser.compare_candidates()]
    browser._fill_compare_menu()  # what opening the button's menu does
    assert any("corrected" in action.text() for action in browser.compare_menu.actions())

    panel = window.compare
    with qtbot.waitSignal(panel.compared, timeout=30_000):
        assert browser.compare_with(second)
    assert window.tabs.currentIndex() == TAB_COMPARE
    answer = ui_api.compare(first, second)
    assert panel.answer == answer

    # The table: one row per label, then the totals, with the server's numbers.
    rows = [
        [panel.model.data(panel.model.index(r, c)) for c in range(panel.model.columnCount())]
        for r in range(panel.model.rowCount())
    ]
    expected = [answer.labels[k] for k in sorted(answer.labels, key=int)] + [answer.totals]
    assert len(rows) == len(expected) == 3
    for row, values in zip(rows, expected, strict=True):
        assert row[1] == f"{values.dice:.3f}"
        assert row[2:4] == [values.voxels_a, values.voxels_b]
        assert row[4] == f"{values.volume_a_ml:.2f}"
        assert row[6] == f"{values.volume_diff_ml:.2f}"
    assert rows[-1][0] == "All labels"
    assert answer.labels["1"].dice < 1.0
    assert answer.labels["2"].dice == 1.0

    # The Dice band: one cell per slice of the answer, coloured by its Dice.
    band = window.viewer.dice_strip
    assert band.isVisible()
    assert [(m.slice_index, m.colour) for m in band.marks] == [
        (s.slice_index, dice_colour(s.dice)) for s in answer.slices
    ]

    # F9: the next slice whose Dice is below the threshold (0.8), wrapping.
    below = disagreements(answer, 0.8)
    assert below
    assert set(below) <= set(CHANGED)
    view = window.viewer.view
    view.set_index(0)
    window.menu_actions["next_disagreement"].trigger()
    assert view.index == below[0]
    window.menu_actions["next_disagreement"].trigger()
    assert view.index == (below[1] if len(below) > 1 else below[0])
    row = next(i for i, s in enumerate(panel.slice_model.items) if s.slice_index == below[-1])
    assert panel.slice_model.rowCount() == len(answer.slices)
    assert panel.slice_model.data(panel.slice_model.index(row, 1)) == f"{answer.slices[row].dice:.3f}"
    panel.slice_table.scrollTo(panel.slice_model.index(row, 0))
    rect = panel.slice_table.visualRect(panel.slice_model.index(row, 0))
    qtbot.mouseClick(panel.slice_table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.index == below[-1]
    panel.threshold.setValue(0.0)
    assert not panel.next_button.isEnabled()
    before = view.index
    window.menu_actions["next_disagreement"].trigger()
    assert view.index == before
    panel.threshold.setValue(0.8)

    # The overlay: the first group filled in its label colours, the second's borders as a white outline.
    index = CHANGED[2]
    a = np.asarray(Image.open(case.masks_dir / f"mask_{index:04d}.png"))
    b = np.asarray(Image.open(second_masks / f"mask_{index:04d}.png"))
    outline = mask_outline(b) > 0
    filled_only = (a == 1) & (b == 0) & ~outline
    window.viewer.opacity.setValue(100)
    view.set_index(0)
    with qtbot.waitSignal(view.frameShown, timeout=10_000, check_params_cb=lambda i: i == index):
        view.set_index(index)
    image = view.grab().toImage()
    scale = view.devicePixelRatioF()

    def colour_at(r: int, c: int) -> str:
        return image.pixelColor(view.image_to_widget(float(c), float(r)).toPoint() * scale).name()

    r, c = np.argwhere(outline & (b == 1))[0]
    assert colour_at(r, c) == OUTLINE_COLOUR
    r, c = np.argwhere(filled_only)[len(np.argwhere(filled_only)) // 2]
    assert colour_at(r, c) == label_colour(1).name()
    window.viewer.opacity.setValue(30)  # the fill fades with the opacity, the outline stays opaque
    image = view.grab().toImage()
    assert colour_at(r, c) != label_colour(1).name()
    r, c = np.argwhere(outline & (b == 1))[0]
    assert colour_at(r, c) == OUTLINE_COLOUR

    # The group list shows each label's volume once the server computed it (comparing does).
    with qtbot.waitSignal(browser.groupsLoaded, timeout=10_000):
        browser.refresh()
    listed = next(g for g in ui_api.list_groups(case.annotation.id) if g.id == first)
    assert listed.volumes
    row = browser.groups.row_of(first)
    shown = browser.groups.data(browser.groups.index(row, GroupModel.VOLUME_COLUMN))
    assert shown == volume_text(listed)
    ml = listed.volumes["1"].volume_ml
    assert ml == answer.labels["1"].volume_a_ml
    assert f"{ml:.1f} mL" in shown
