"""Uploading from the real window to the real bundled server: to 100 %, and cancel + resume."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from PySide6.QtCore import Qt

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.ui.main_window import MainWindow
from pacs_mask_desktop.ui.resume_dialog import ResumeDialog
from pacs_mask_desktop.ui.upload_model import STATE_TEXT
from tests.ui.conftest import SLICES, UiData


def ready_to_upload(qtbot: Any, window: MainWindow, data: UiData, version: str) -> None:
    """Series open, good masks dropped, annotation chosen, fields filled."""
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(data.series_dir)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([data.masks_dir])
    window.picker.choose(data.annotation)
    window.upload.set_fields("ui-test", version, "manual")


def test_upload_runs_to_100_percent_with_per_slice_signals(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient
) -> None:
    ready_to_upload(qtbot, window, ui_data, f"v-{uuid.uuid4().hex[:8]}")
    panel = window.upload
    finished: list[tuple[str, str]] = []
    panel.sliceFinished.connect(lambda name, state: finished.append((name, state)))
    progress: list[tuple[int, int]] = []
    panel.progressChanged.connect(lambda done, total: progress.append((done, total)))

    with qtbot.waitSignal(panel.uploadFinished, timeout=30_000) as blocker:
        qtbot.mouseClick(panel.upload_button, Qt.MouseButton.LeftButton)
    result = blocker.args[0]

    assert result.ok, result.message
    assert sorted(finished) == [(f"mask_{i:04d}.png", "done") for i in range(SLICES)]
    assert progress[-1] == (SLICES, SLICES)
    assert panel.bar.value() == panel.bar.maximum() == SLICES
    assert {panel.model.data(panel.model.index(r, 2)) for r in range(SLICES)} == {STATE_TEXT[SliceState.DONE]}
    assert not panel.cancel_button.isEnabled()
    assert panel.stats.text().startswith("Complete")

    group = ui_api.group_with_slices(result.group_id)
    assert group.group.status == "complete"
    assert len(group.items) == SLICES
    assert {m.sop_instance_uid for m in group.items} == {ref.sop_instance_uid for ref in window.series.slices}

    # The group browser lists the new group and selects it.
    qtbot.waitUntil(lambda: window.groups.groups.row_of(result.group_id) is not None, timeout=10_000)
    qtbot.waitUntil(
        lambda: window.groups.selected is not None and window.groups.selected.id == result.group_id
    )
    qtbot.waitUntil(lambda: window.groups.slice_model.rowCount() == SLICES, timeout=10_000)


def upload_then_cancel_after_six(qtbot: Any, window: MainWindow) -> Any:
    """Start the window's upload, let six slices land, cancel; the result of the cancelled run."""
    panel = window.upload
    gate = threading.Event()
    passed = {"done": 0}
    lock = threading.Lock()

    def hold_after_six(event: SliceEvent | GroupEvent) -> None:
        """Engine threads: let six slices finish, then hold the others until the test cancelled."""
        if isinstance(event, SliceEvent) and event.state is SliceState.DONE:
            with lock:
                passed["done"] += 1
                hold = passed["done"] > 6
            if hold:
                gate.wait(20)

    panel.event_tap = hold_after_six
    try:
        with qtbot.waitSignal(panel.uploadFinished, timeout=30_000) as blocker:
            window.start_upload()
            qtbot.waitUntil(lambda: panel.bar.value() >= 6, timeout=10_000)
            assert panel.running
            qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
            gate.set()
    finally:
        gate.set()
        panel.event_tap = None
    return blocker.args[0]


def test_cancel_leaves_a_resumable_upload_and_resume_completes_it(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient
) -> None:
    ready_to_upload(qtbot, window, ui_data, f"v-{uuid.uuid4().hex[:8]}")
    panel = window.upload
    result = upload_then_cancel_after_six(qtbot, window)
    assert result.status == "cancelled", result.message
    assert panel.retry_button.isEnabled()
    assert panel.retry_button.text() == "Resume"
    group_id = panel.group_id
    assert group_id
    assert result.group_id == group_id  # the cancelled run names its group and counts what landed
    assert result.uploaded >= 6
    assert f"{result.uploaded} of {SLICES} slice(s) have landed" in result.message

    # Resumable: the journal knows the pending group and the slices that landed; the server agrees.
    journal = Journal(window.journal_path)
    try:
        entry = next(e for e in journal.unfinished() if e.group_id == group_id)
        landed = len(journal.landed(group_id))
    finally:
        journal.close()
    assert 6 <= entry.landed == landed < SLICES
    assert entry.total == SLICES
    assert ui_api.group_with_slices(group_id).group.status == "pending"

    # "After a crash the app offers to resume": the offer lists it; Resume sends only the rest.
    with qtbot.waitSignal(window.resumeOffered, timeout=10_000) as offered:
        window.check_unfinished_uploads()
    dialog: ResumeDialog = offered.args[0]
    row = next(i for i, e in enumerate(dialog.entries) if e.group_id == group_id)
    dialog.list.setCurrentRow(row)
    with qtbot.waitSignal(panel.uploadFinished, timeout=30_000) as resumed:
        qtbot.mouseClick(dialog.resume_button, Qt.MouseButton.LeftButton)
    again = resumed.args[0]
    assert again.ok, again.message
    assert again.group_id == group_id
    assert again.skipped == landed
    assert again.uploaded == SLICES - landed
    assert ui_api.group_with_slices(group_id).group.status == "complete"
    journal = Journal(window.journal_path)
    try:
        assert all(e.group_id != group_id for e in journal.unfinished())
    finally:
        journal.close()


def test_a_refused_upload_is_explained_in_a_dialog(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient, tmp_path: Any
) -> None:
    """The server refuses a second, different group under the same model and version: a clear message."""
    import shutil

    from PySide6.QtWidgets import QMessageBox

    from pacs_mask_desktop.core.plan import prepare
    from pacs_mask_desktop.core.upload import UploadEngine

    version = f"v-{uuid.uuid4().hex[:8]}"
    first = prepare(
        ui_data.masks_dir,
        annotation_id=ui_data.annotation.id,
        model_name="ui-test",
        version=version,
        series=ui_data.series_dir,
    )
    engine = UploadEngine(ui_api)
    try:
        assert engine.run(first.plan).ok
    finally:
        engine.close()

    fewer = tmp_path / "fewer"
    shutil.copytree(ui_data.masks_dir, fewer)
    (fewer / "mask_0023.png").unlink()
    ready_to_upload(qtbot, window, ui_data, version)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([fewer])
    with qtbot.waitSignal(window.upload.uploadFinished, timeout=30_000) as blocker:
        window.start_upload()
    result = blocker.args[0]
    assert result.status == "incomplete"
    assert "new version" in result.message
    boxes = [w for w in window.findChildren(QMessageBox) if w.isVisible()]
    assert [b.windowTitle() for b in boxes] == ["Upload failed"]
    assert "Traceback" not in boxes[0].text()
    assert window.upload.upload_button.isEnabled()


@pytest.mark.parametrize("again_by", ["upload", "retry", "retry after clearing the masks"])
def test_a_mask_that_fails_to_decode_while_uploading_is_named_and_an_upload_after_fixing_it_resumes(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient, tmp_path: Any, again_by: str
) -> None:
    """The desktop upload checks headers first and decodes pixels alongside the PUTs (as the CLI does):
    a file whose pixels do not decode is never sent, nothing is completed, the dialog names it, and
    Upload, or Check and retry, after fixing it continues the pending group with only that slice."""
    import shutil

    from PySide6.QtWidgets import QMessageBox

    from tests.core.test_pixel_check import corrupt_pixels

    masks = tmp_path / "masks"
    shutil.copytree(ui_data.masks_dir, masks)
    broken = masks / "mask_0005.png"
    good = broken.read_bytes()
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    with qtbot.waitSignal(window.masksPrepared, timeout=10_000):
        window.add_masks([masks])
    window.picker.choose(ui_data.annotation)
    window.upload.set_fields("ui-test", f"v-{uuid.uuid4().hex[:8]}", "manual")
    broken.write_bytes(corrupt_pixels(good))  # changed after the first check: found while uploading

    with qtbot.waitSignal(window.upload.uploadFinished, timeout=30_000) as blocker:
        window.start_upload()
    result = blocker.args[0]
    assert (result.status, result.error_code) == ("incomplete", "invalid_masks")
    assert [(p["filename"], p["code"]) for p in result.problems] == [(broken.name, "unreadable")]
    assert result.uploaded == SLICES - 1
    assert ui_api.group_with_slices(result.group_id).group.status == "pending"
    boxes = [w for w in window.findChildren(QMessageBox) if w.isVisible()]
    assert [b.windowTitle() for b in boxes] == ["Masks need attention"]
    assert broken.name in boxes[0].text()
    for box in boxes:
        box.close()

    assert window.upload.retry_button.text() == "Check and retry"
    assert window.upload.retry_button.isEnabled()

    broken.write_bytes(good)
    with qtbot.waitSignal(window.upload.uploadFinished, timeout=30_000) as again_blocker:
        if again_by == "upload":
            window.start_upload()
        else:  # the fixed file has another checksum than the last plan: the masks are checked again,
            # with the failed upload's group fields, not what the fields show by now
            window.upload.set_fields("ui-test", "edited-since", "ai")
            if again_by == "retry after clearing the masks":  # the plan's own files are checked again
                window.clear_masks()
            window.upload.retry_button.click()
            assert not window.upload.retry_button.isEnabled()  # while checking
            window.retry_upload()  # a second press (the shortcut) while checking starts nothing
    again = again_blocker.args[0]
    assert again.ok, again.message
    assert (again.group_id, again.skipped, again.uploaded) == (result.group_id, SLICES - 1, 1)


def test_resume_after_the_masks_were_cleared_sends_the_rest_of_the_same_plan(
    qtbot: Any, window: MainWindow, ui_data: UiData, ui_api: ApiClient
) -> None:
    ready_to_upload(qtbot, window, ui_data, f"v-{uuid.uuid4().hex[:8]}")
    panel = window.upload
    cancelled = upload_then_cancel_after_six(qtbot, window)
    assert cancelled.status == "cancelled", cancelled.message
    window.clear_masks()
    assert not window.session.mask_paths

    with qtbot.waitSignal(panel.uploadFinished, timeout=30_000) as resumed:
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    again = resumed.args[0]
    assert again.ok, again.message
    assert again.group_id == cancelled.group_id
    assert again.skipped == cancelled.uploaded  # what landed before the cancel is not sent again
    assert again.skipped + again.uploaded == SLICES
    assert ui_api.group_with_slices(again.group_id).group.status == "complete"


def _plan_of(count: int) -> Any:
    """An upload plan of ``count`` slices (the table reads names, indexes and sizes only)."""
    from pathlib import Path

    from pacs_mask_desktop.core.plan import PlannedSlice, UploadPlan

    slices = tuple(
        PlannedSlice(
            f"mask_{i:05d}.png", Path(f"mask_{i:05d}.png"), 700 + i, "0" * 32, "", "image/png", i, None,
            512, 512, (), False,
        )
        for i in range(count)
    )  # fmt: skip
    return UploadPlan(1, "m", "1", "manual", None, None, slices, count)


def test_the_table_is_built_before_the_upload_and_a_larger_rest_later_keeping_early_events(
    qtbot: Any,
) -> None:
    """The rows of a plan are in the table when it is set (the upload's threads not yet running); a
    plan larger than that gets the rest a chunk per event-loop turn, and what happened to a slice
    before its row existed shows when it is built."""
    from pacs_mask_desktop.ui.upload_model import BUILD_CHUNK, BUILD_FIRST, UploadTableModel

    model = UploadTableModel()
    model.set_plan(_plan_of(1000))
    assert (model.rowCount(), model.building) == (1000, False)

    count = BUILD_FIRST + BUILD_CHUNK * 3 + 7
    model.set_plan(_plan_of(count))
    assert (model.rowCount(), model.building) == (BUILD_FIRST, True)
    late = count - 3
    model.apply(
        [
            SliceEvent(
                f"mask_{late:05d}.png", late, SliceState.RETRYING, 700 + late, attempt=2, error="HTTP 503"
            ),
            SliceEvent(
                f"mask_{late:05d}.png", late, SliceState.FAILED, 700 + late, attempt=3, error="HTTP 503"
            ),
            SliceEvent("mask_00001.png", 1, SliceState.DONE, 701, attempt=1),
        ]
    )
    assert model.data(model.index(1, 2)) == STATE_TEXT[SliceState.DONE]
    assert model.count(SliceState.FAILED) == 1
    qtbot.waitUntil(lambda: not model.building, timeout=10_000)
    assert model.rowCount() == count
    row = [model.data(model.index(late, c)) for c in range(model.columnCount())]
    assert row == [str(late), f"mask_{late:05d}.png", STATE_TEXT[SliceState.FAILED], row[3], "2", "HTTP 503"]
    assert model.data(model.index(late, 5), Qt.ItemDataRole.ToolTipRole) == "HTTP 503"

    model.set_plan(_plan_of(BUILD_FIRST + 1))  # replaced while its last row waits for the event loop
    model.set_plan(_plan_of(5))
    qtbot.wait(50)  # the replaced plan's pending chunk adds nothing
    assert [model.data(model.index(r, 1)) for r in range(model.rowCount())] == [
        f"mask_{i:05d}.png" for i in range(5)
    ]


def test_another_server_drops_the_last_plan_so_retry_cannot_send_it_there(
    qtbot: Any, window: MainWindow, ui_data: UiData
) -> None:
    """A plan names an annotation of the server it was made for: once the window connects elsewhere,
    Retry (here Resume) has nothing to send. Connecting elsewhere waits while masks are being checked."""
    from dataclasses import replace

    from pacs_mask_desktop.core.retry import RetryPolicy

    ready_to_upload(qtbot, window, ui_data, f"v-{uuid.uuid4().hex[:8]}")
    panel = window.upload
    assert upload_then_cancel_after_six(qtbot, window).status == "cancelled"
    assert panel.retry_button.isEnabled()
    elsewhere = replace(window.config, policy=RetryPolicy(give_up_after=123.0))  # any change reconnects

    panel.set_checking("Checking…")
    assert not window.change_server(elsewhere)
    panel.set_idle()
    assert panel.plan is not None

    with qtbot.waitSignal(window.connected, timeout=30_000):
        assert window.change_server(elsewhere)
    assert (panel.plan, panel.last_result, panel.retry_button.isEnabled()) == (None, None, False)
    window.retry_upload()  # the shortcut: nothing to send
    assert not panel.running
