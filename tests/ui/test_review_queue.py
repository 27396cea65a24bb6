"""Review ▸ Queue against the real bundled server: queue → open → review with a finding → next item;
findings as ticks on the slice slider; the four-eyes refusal and the admin override."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QMessageBox

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_cache import DicomCache
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.embedded import EmbeddedServer
from pacs_mask_desktop.core.pacs import PacsClient
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.upload import UploadEngine
from pacs_mask_desktop.ui.main_window import TAB_REVIEW, MainWindow
from pacs_mask_desktop.ui.render import label_colour
from server.contract.messages import FindingIn
from tests.orthanc import Orthanc, StoredSeries
from tests.ui.conftest import SLICES, UiData, bundled_server, open_window, upload_folder

FIRST_LABELLED = 3  # the first slice of the phantom with a mask


@pytest.fixture(scope="module")
def uploader(ui_server: EmbeddedServer) -> Iterator[tuple[str, ApiClient]]:
    """Another person's token (role uploader): the groups they send may be approved by the admin."""
    assert ui_server.target is not None
    name = f"radiologist-{uuid.uuid4().hex[:6]}"
    answer = httpx.post(
        f"{ui_server.target.url}/api/tokens",
        json={"name": name, "role": "uploader"},
        headers={"Authorization": f"Bearer {ui_server.target.token}"},
        timeout=30,
    )
    answer.raise_for_status()
    with ApiClient(ui_server.target.url, answer.json()["token"]) as api:
        yield name, api


def upload_group(api: ApiClient, data: UiData, model_name: str, version: str) -> str:
    """A complete group of the phantom's masks sent through the core engine; its id."""
    return upload_folder(
        api,
        data.masks_dir,
        data.annotation.id,
        model_name=model_name,
        version=version,
        series=data.series_dir,
    )


def open_other_series(qtbot: Any, window: MainWindow, folder: Path) -> None:
    """Open the phantom (so the app remembers its folder), then another series on top of it."""
    write_synthetic_ct(folder, slices=4, size=32, seed=11)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(folder)


def test_queue_open_review_with_a_finding_then_next(
    qtbot: Any,
    window: MainWindow,
    ui_data: UiData,
    ui_api: ApiClient,
    uploader: tuple[str, ApiClient],
    tmp_path: Path,
) -> None:
    name, uploader_api = uploader
    model = f"queue-{uuid.uuid4().hex[:8]}"
    first = upload_group(uploader_api, ui_data, model, "1")
    second = upload_group(uploader_api, ui_data, model, "2")

    # The phantom was open once on this computer; another series is open now.
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    open_other_series(qtbot, window, tmp_path / "other")
    assert window.series is not None
    assert window.series.series_instance_uid != ui_data.series_uid

    # Review ▸ Queue (Ctrl+R), filtered to this test's model, one item per page, then "Load more".
    queue = window.queue
    panel = queue.panel
    panel.page_size = 1
    panel.model_filter.setText(model)
    with qtbot.waitSignal(panel.loaded, timeout=10_000):
        window.menu_actions["review_queue"].trigger()
    assert queue.dock.isVisible()
    assert [item.id for item in panel.model.items] == [first]
    assert panel.more_button.isEnabled()
    with qtbot.waitSignal(panel.loaded, timeout=10_000):
        qtbot.mouseClick(panel.more_button, Qt.MouseButton.LeftButton)
    assert [item.id for item in panel.model.items] == [first, second]  # oldest first
    row = [panel.model.data(panel.model.index(0, c)) for c in range(panel.model.columnCount())]
    assert row[1:6] == ["UI test phantom", model, "1", "ai", name]
    assert ui_data.annotation.patient_id in row[0]
    assert row[7] == SLICES

    # The source and uploader filters go to the server too.
    panel.page_size = 50
    panel.source_filter.setCurrentIndex(panel.source_filter.findData("manual"))
    with qtbot.waitSignal(panel.loaded, timeout=10_000):
        qtbot.mouseClick(panel.refresh_button, Qt.MouseButton.LeftButton)
    assert panel.model.items == []
    assert panel.summary.text() == "Nothing waiting for review."
    panel.source_filter.setCurrentIndex(panel.source_filter.findData("ai"))
    panel.uploader_filter.setText(name)
    with qtbot.waitSignal(panel.loaded, timeout=10_000):
        qtbot.mouseClick(panel.refresh_button, Qt.MouseButton.LeftButton)
    assert [item.id for item in panel.model.items] == [first, second]
    assert not panel.more_button.isEnabled()

    # Opening the first item reopens the phantom from its folder, selects the group, starts the review.
    assert panel.select(first)
    with qtbot.waitSignal(queue.opened, timeout=20_000):
        qtbot.mouseClick(panel.open_button, Qt.MouseButton.LeftButton)
    assert window.series.series_instance_uid == ui_data.series_uid
    assert window.annotation is not None
    assert window.annotation.id == ui_data.annotation.id
    assert window.tabs.currentIndex() == TAB_REVIEW
    review = window.review
    assert review.group is not None
    assert review.group.id == first
    view = window.viewer.view
    assert view.index == FIRST_LABELLED
    qtbot.waitUntil(
        lambda: window.groups.selected is not None and window.groups.selected.id == first, timeout=10_000
    )

    # A finding on slice 8, label 2: listed, and a tick on the slider that jumps there when clicked.
    view.set_index(8)
    assert review.current_slice == 8
    review.finding_label.setCurrentIndex(review.finding_label.findData(2))
    review.finding_comment.setText("Lesion edge missed on the left")
    qtbot.mouseClick(review.add_finding_button, Qt.MouseButton.LeftButton)
    assert review.findings == [FindingIn(slice_index=8, label=2, comment="Lesion edge missed on the left")]
    assert review.findings_list.count() == 1
    marks = window.viewer.finding_marks
    assert marks.isVisible()
    assert [(m.slice_index, m.colour) for m in marks.marks] == [(8, label_colour(2).name())]
    view.set_index(0)
    x = round(marks.x_of(8))
    qtbot.mouseClick(marks, Qt.MouseButton.LeftButton, pos=QPoint(x, marks.height() // 2))
    assert view.index == 8
    view.set_index(0)
    item = review.findings_list.item(0)
    review.findings_list.itemClicked.emit(item)  # what a click on the row does
    assert view.index == 8

    # Reject with the finding: stored on the server, shown in the history, the next item offered.
    review.comment.setPlainText("Lesion incomplete.")
    with qtbot.waitSignal(review.reviewRecorded, timeout=10_000):
        qtbot.mouseClick(review.reject_button, Qt.MouseButton.LeftButton)
    stored = ui_api.group_with_slices(first).group
    assert stored.review_status == "rejected"
    assert msgspec.to_builtins(stored.findings) == [
        {"slice_index": 8, "label": 2, "comment": "Lesion edge missed on the left"}
    ]
    assert [r.decision for r in stored.reviews] == ["rejected"]
    assert review.history.count() == 1
    assert "rejected" in review.history.item(0).text()
    assert review.findings == []  # sent: now the current review's finding, still a tick
    assert [m.slice_index for m in marks.marks] == [8]
    assert review.next_queue_button.isVisible()
    assert [item.id for item in panel.model.items] == [second]

    with qtbot.waitSignal(queue.opened, timeout=20_000):
        qtbot.mouseClick(review.next_queue_button, Qt.MouseButton.LeftButton)
    assert review.group.id == second
    assert view.index == FIRST_LABELLED
    assert not review.next_queue_button.isVisible()
    assert marks.marks == []
    assert not marks.isVisible()
    with qtbot.waitSignal(review.reviewRecorded, timeout=10_000):
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)  # another person's: allowed
    assert ui_api.group_with_slices(second).group.review_status == "approved"
    assert panel.model.items == []
    assert not review.next_queue_button.isVisible()
    assert "empty" in window.statusBar().currentMessage()


def test_four_eyes_refusal_and_admin_override(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient
) -> None:
    model = f"own-{uuid.uuid4().hex[:8]}"
    group_id = upload_group(ui_api, ui_data, model, "1")  # uploaded with the window's own (admin) token
    item = next(i for i in ui_api.review_queue(model_name=model).items if i.id == group_id)
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    with qtbot.waitSignal(window.queue.opened, timeout=20_000):
        window.queue.open_item(item)  # the open series is the item's: used as it is
    review = window.review
    qtbot.waitUntil(lambda: review.role == "admin", timeout=10_000)  # from GET /api/config

    # Seen by a reviewer (not an admin), the refusal offers no override.
    review.set_role("reviewer")
    with qtbot.waitSignal(review.fourEyesRefused, timeout=10_000):
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)
    assert not review.override_box.isVisible()
    for box in [b for b in window.findChildren(QMessageBox) if b.isVisible()]:
        box.close()
    review.set_role("admin")

    with qtbot.waitSignal(review.fourEyesRefused, timeout=10_000) as refused:
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)
    assert "themselves" in refused.args[0]
    assert review.notice.isVisible()
    assert "Four eyes" in review.notice.text()
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert any("themselves" in b.text() for b in boxes)
    for box in boxes:
        box.close()
    assert ui_api.group_with_slices(group_id).group.review_status is None

    # The explicit admin override is offered and recorded.
    assert review.override_box.isVisible()
    assert not review.override_box.isChecked()
    review.override_box.setChecked(True)
    with qtbot.waitSignal(review.reviewRecorded, timeout=10_000):
        qtbot.mouseClick(review.approve_button, Qt.MouseButton.LeftButton)
    stored = ui_api.group_with_slices(group_id).group
    assert stored.review_status == "approved"
    assert stored.reviews[-1].override_four_eyes is True
    assert not review.override_box.isVisible()
    assert not review.notice.isVisible()
    assert "override" in review.history.item(0).text()


def test_queue_item_whose_series_is_only_in_the_pacs(
    qtbot: Any,
    orthanc: Orthanc,
    pacs_ct: StoredSeries,
    ui_server: EmbeddedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No local copy is known: the series streams from the server's PACS, then the review starts."""
    root = tmp_path_factory.mktemp("queue-pacs")
    with bundled_server(root, orthanc.env()) as server:
        assert server.target is not None
        with ApiClient(server.target.url, server.target.token) as api:
            annotation = api.create_annotation_from_pacs(
                pacs_ct.series_instance_uid, study_instance_uid=pacs_ct.study_instance_uid
            )
            masks = root / "masks"
            write_masks_for_series(load_series(pacs_ct.folder), masks)
            prepared = prepare(
                masks,
                annotation_id=annotation.id,
                model_name="queue-pacs",
                version="1",
                source="ai",
                series=pacs_ct.folder,
            )
            assert prepared.plan is not None, prepared.problems
            engine = UploadEngine(api)
            try:
                group_id = engine.run(prepared.plan).group_id
            finally:
                engine.close()
            [item] = api.review_queue(model_name="queue-pacs").items
        first_labelled = min(r.slice_index for r in prepared.rows if r.labels)

        window = open_window(qtbot, server, wait_for_config=True)
        window.use_pacs_client(
            PacsClient(
                orthanc.dicomweb_url, (orthanc.user, orthanc.password), cache=DicomCache(root / "cache")
            )
        )
        assert window.series is None
        with qtbot.waitSignal(window.queue.opened, timeout=60_000):
            window.queue.open_item(item)
        assert window.workspace.opened_from_pacs
        assert window.series.series_instance_uid == pacs_ct.series_instance_uid
        assert len(window.series) == pacs_ct.count
        assert window.review.group.id == group_id
        assert window.viewer.view.index == first_labelled
        window.close()
