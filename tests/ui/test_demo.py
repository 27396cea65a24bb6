"""``--demo``: the sample is written once, registered once, and opened in the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo_setup import ensure_demo
from pacs_mask_desktop.ui.main_window import MainWindow


def test_demo_is_created_once_and_reused(ui_api: ApiClient, tmp_path: Path) -> None:
    first = ensure_demo(ui_api, tmp_path / "demo", slices=6, size=32)
    stamps = {p: p.stat().st_mtime_ns for p in first.series_dir.iterdir()}
    again = ensure_demo(ui_api, tmp_path / "demo", slices=6, size=32)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again.series_dir.iterdir()} == stamps
    assert len(list(first.masks_dir.glob("*.png"))) == 6
    matching = [
        a
        for a in ui_api.list_annotations(first.series_instance_uid)
        if a.series_instance_uid == first.series_instance_uid
    ]
    assert [a.id for a in matching] == [first.annotation_id]


def test_window_opens_the_demo(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    with qtbot.waitSignal(window.demoReady, timeout=30_000) as ready:
        window.load_demo(tmp_path / "demo", slices=8, size=64)
    demo = ready.args[0]
    assert window.series is not None
    assert len(window.series) == 8
    assert window.series.series_instance_uid == demo.series_instance_uid
    assert window.annotation is not None
    assert window.annotation.id == demo.annotation_id
    assert window.prepared is not None
    assert window.prepared.ok
    assert window.viewer.view.overlay is window.file_overlay
    assert window.upload.fields()["model_name"] == "demo-liver-seg"
