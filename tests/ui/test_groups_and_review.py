"""The group browser, the overlay of a stored group (bytes from the view route), QA review and delete."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.ui import dialogs
from pacs_mask_desktop.ui.group_browser import volume_text
from pacs_mask_desktop.ui.main_window import TAB_REVIEW, MainWindow
from pacs_mask_desktop.ui.overlay_sources import GroupViewSource
from pacs_mask_desktop.ui.render import label_colour
from server.contract.messages import GroupOut
from tests.ui.conftest import SLICES, UiData, upload_folder


def stored_group(api: ApiClient, data: UiData) -> GroupOut:
    """A complete group uploaded through the core engine (what an AI worker would have sent)."""
    group_id = upload_folder(
        api,
        data.masks_dir,
        data.annotation.id,
        model_name="ai-liver",
        version=uuid.uuid4().hex[:8],
        confidence=0.87,
        series=data.series_dir,
    )
    # From the list, not GET /api/mask/{id}: opening a group would make the server compute its volumes.
    return next(g for g in api.list_groups(data.annotation.id) if g.id == group_id)


def test_browse_show_review_and_delete_a_group(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = stored_group(ui_api, ui_data)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    browser = window.groups
    with qtbot.waitSignal(browser.groupsLoaded, timeout=10_000):
        window.picker.choose(ui_data.annotation)
    qtbot.waitUntil(lambda: browser.groups.row_of(group.id) is not None, timeout=10_000)

    row = browser.groups.row_of(group.id)
    cells = [browser.groups.data(browser.groups.index(row, c)) for c in range(browser.groups.columnCount())]
    assert cells[:7] == ["ai-liver", group.version, "ai", "complete", "not reviewed", SLICES, "0.87"]

    # Never opened, yet the list shows its volumes: the browser asks the server to compute them.
    assert group.volumes is None
    qtbot.waitUntil(lambda: browser.groups.items[browser.groups.row_of(group.id)].volumes, timeout=20_000)
    stored = ui_api.group_with_slices(group.id).group
    assert " vx" in volume_text(stored)  # this annotation has no stored geometry: voxel counts, no mL

    def volume_cell() -> str:
        model = browser.groups
        return model.data(model.index(model.row_of(group.id), model.VOLUME_COLUMN))

    qtbot.waitUntil(lambda: volume_cell() == volume_text(stored), timeout=10_000)

    assert browser.select_group(group.id)
    qtbot.waitUntil(lambda: browser.slice_model.rowCount() == SLICES, timeout=10_000)
    assert browser.review_button.isEnabled()

    # Review: the group is overlaid on the series from the view route, stepping moves the viewer.
    view = window.viewer.view
    with qtbot.waitSignal(browser.reviewRequested, timeout=10_000):
        qtbot.mouseClick(browser.review_button, Qt.MouseButton.LeftButton)
    assert window.tabs.currentIndex() == TAB_REVIEW
    assert isinstance(view.overlay, GroupViewSource)
    review = window.review
    first = review.slices[review.position].slice_index
    assert first == 3  # the first slice of the phantom with a label
    window.menu_actions["review_next"].trigger()
    assert view.index == first + 1
    window.menu_actions["review_previous"].trigger()
    assert view.index == first

    slice_index = 8
    labels = np.asarray(Image.open(ui_data.masks_dir / f"mask_{slice_index:04d}.png"))
    r, c = np.argwhere(labels == 2)[0] + 1
    window.viewer.opacity.setValue(100)
    with qtbot.waitSignal(view.frameShown, timeout=10_000, check_params_cb=lambda i: i == slice_index):
        review.go_to(next(i for i, s in enumerate(review.slices) if s.slice_index == slice_index))
    point = view.image_to_widget(float(c), float(r)).toPoint() * view.devicePixelRatioF()
    assert view.grab().toImage().pixelColor(point).name() == label_colour(2).name()

    # A rejection needs a comment; an approval with a comment is recorded and audited.
    review.reject()
    assert "comment" in window.statusBar().currentMessage()
    review.comment.setPlainText("Liver edge checked on all slices.")
    # Four eyes: the admin token uploaded this group, so approving needs the explicit admin override.
    with qtbot.waitSignal(review.fourEyesRefused, timeout=10_000):
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)
    assert review.override_box.isVisible()
    review.override_box.setChecked(True)
    with qtbot.waitSignal(review.reviewRecorded, timeout=10_000):
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)
    stored = ui_api.group_with_slices(group.id).group
    assert stored.review_status == "approved"
    assert stored.reviews[-1].override_four_eyes is True
    assert stored.review_comment == "Liver edge checked on all slices."
    audit = ui_api.audit(group_id=group.id)
    assert any(a.action == "group.review" and a.detail["decision"] == "approved" for a in audit)
    qtbot.waitUntil(
        lambda: (
            (row := browser.groups.row_of(group.id)) is not None
            and browser.groups.data(browser.groups.index(row, browser.groups.REVIEW_COLUMN)) == "approved"
        ),
        timeout=10_000,
    )
    assert "approved" in review.state.text()

    # Delete asks first; "no" keeps the group, "yes" removes it everywhere.
    monkeypatch.setattr(dialogs, "confirm", lambda *_args, **_kwargs: False)
    qtbot.mouseClick(browser.delete_button, Qt.MouseButton.LeftButton)
    assert ui_api.group_with_slices(group.id).group.status == "complete"
    monkeypatch.setattr(dialogs, "confirm", lambda *_args, **_kwargs: True)
    with qtbot.waitSignal(browser.groupDeleted, timeout=10_000):
        qtbot.mouseClick(browser.delete_button, Qt.MouseButton.LeftButton)
    with pytest.raises(ApiError) as missing:
        ui_api.group_with_slices(group.id)
    assert missing.value.status == 404
    qtbot.waitUntil(lambda: browser.groups.row_of(group.id) is None, timeout=10_000)
    assert review.group is None
    assert not isinstance(view.overlay, GroupViewSource)


def test_annotation_search_and_create_from_the_open_series(
    qtbot: Any, window: MainWindow, ui_data: UiData, tmp_path: Any
) -> None:
    from pacs_mask_desktop.core.demo import write_synthetic_ct

    picker = window.picker
    picker.search.setText(ui_data.series_uid)  # a debounced search while typing
    qtbot.waitUntil(
        lambda: [item.id for item in picker.model.items] == [ui_data.annotation.id], timeout=10_000
    )

    # A series the server does not know yet: "Create from open series" registers and selects it.
    write_synthetic_ct(tmp_path / "new-series", slices=4, size=32, seed=9)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(tmp_path / "new-series")
    assert picker.create_button.isEnabled()
    with qtbot.waitSignal(picker.annotationChosen, timeout=10_000) as chosen:
        qtbot.mouseClick(picker.create_button, Qt.MouseButton.LeftButton)
    created = chosen.args[0]
    assert created.series_instance_uid == window.series.series_instance_uid
    assert window.annotation.id == created.id
    qtbot.waitUntil(lambda: picker.model.row_of(created.id) is not None, timeout=10_000)
