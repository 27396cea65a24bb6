"""Fixtures for the desktop tests: the REAL bundled server (a child process through ``core.embedded``),
a small synthetic series with masks, and checks that fail a test which leaks windows or workers.

- ``ui_server`` (session): the bundled server on a free loopback port with a temp data dir (also the
  client's ``PACS_MASK_DATA_DIR``, so the upload journal is the test's own); QSettings go to a temp dir.
- ``ui_api`` (session): an ``ApiClient`` on it (admin token from the data dir, as the app reads it).
- ``ui_data`` (session): 24 slices of 128x128 with matching masks, a folder of masks with problems
  (unreadable, size mismatch, no matching slice, duplicate) and the annotation of the series.
- ``window`` (function): the real ``MainWindow`` connected to ``ui_server``.
- autouse ``_no_leaks``: after each test (once pytest-qt has closed its widgets) no new top-level
  widget may be left and no thread-pool work may still run (napari's leak checks).
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any Qt application exists

import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QCoreApplication, QEvent, QMimeData, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWidget

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.demo_setup import ensure_annotation
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.embedded import EmbeddedServer
from pacs_mask_desktop.core.plan import Source, prepare
from pacs_mask_desktop.core.upload import UploadEngine
from pacs_mask_desktop.ui.main_window import MainWindow
from pacs_mask_desktop.ui.settings import ServerConfig
from pacs_mask_desktop.ui.workers import active_work
from server.contract.messages import AnnotationOut

SLICES = 24
SIZE = 128


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder drives Qt widgets."""
    for item in items:
        if "tests/ui/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gui)


@dataclass(frozen=True)
class UiData:
    """The synthetic series, its masks and the annotation the tests upload to."""

    series_dir: Path
    masks_dir: Path
    bad_masks_dir: Path
    annotation: AnnotationOut
    series_uid: str


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    root = tmp_path_factory.mktemp("ui")
    data = root / "data"
    patch = pytest.MonkeyPatch()
    patch.setenv("PACS_MASK_DATA_DIR", str(data))
    patch.delenv("PACS_MASK_SERVER", raising=False)
    patch.delenv("PACS_MASK_TOKEN", raising=False)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(root / "settings"))
    server = EmbeddedServer(data, log_path=root / "server.log", startup_timeout=60)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        patch.undo()


@pytest.fixture(scope="session")
def ui_api(ui_server: EmbeddedServer) -> Iterator[ApiClient]:
    assert ui_server.target is not None
    with ApiClient(ui_server.target.url, ui_server.target.token) as api:
        yield api


@pytest.fixture(scope="session")
def ui_data(ui_api: ApiClient, tmp_path_factory: pytest.TempPathFactory) -> UiData:
    root = tmp_path_factory.mktemp("ui-data")
    series_dir, masks_dir, bad_dir = root / "series", root / "masks", root / "bad-masks"
    write_synthetic_ct(series_dir, slices=SLICES, size=SIZE, seed=3)
    series = load_series(series_dir)
    write_masks_for_series(series, masks_dir)
    shutil.copytree(masks_dir, bad_dir)
    (bad_dir / "mask_0005.png").write_text("not an image\n", encoding="utf-8")  # unreadable
    Image.fromarray(np.zeros((SIZE - 8, SIZE), dtype=np.uint8), mode="L").save(bad_dir / "mask_0006.png")
    shutil.copy(masks_dir / "mask_0001.png", bad_dir / "mask_0099.png")  # beyond the series
    shutil.copy(masks_dir / "mask_0007.png", bad_dir / "slice-7.png")  # a second mask for slice 7
    annotation = ensure_annotation(
        ui_api,
        series.study_instance_uid,
        series.series_instance_uid,
        patient_id=series.patient_id,
        description="UI test phantom",
    )
    return UiData(series_dir, masks_dir, bad_dir, annotation, series.series_instance_uid)


def open_window(qtbot: Any, server: EmbeddedServer, *, wait_for_config: bool = False) -> MainWindow:
    """A shown main window connected to ``server`` (and, with ``wait_for_config``, holding its
    ``GET /api/config`` answer, which the PACS and SEG actions need)."""
    assert server.target is not None
    win = MainWindow(ServerConfig(url=server.target.url, token=server.target.token))
    win.confirm_quit_during_upload = False
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    with qtbot.waitSignal(win.connected, timeout=15_000):
        win.start()
    if wait_for_config:
        qtbot.waitUntil(lambda: win.server_config is not None, timeout=10_000)
    return win


@contextmanager
def bundled_server(
    root: Path,
    server_env: Mapping[str, str],
    *,
    server_only: tuple[str, ...] = ("PACS_MASK_DICOMWEB_URL",),
    client_env: Mapping[str, str] | None = None,
) -> Iterator[EmbeddedServer]:
    """A bundled server started with ``server_env`` (its PACS settings, say) in ``root``.

    Once it runs, the ``server_only`` variables are removed again so that the app under test must learn
    them from the server (``GET /api/config``), and ``client_env`` is set for the app's side.
    """
    patch = pytest.MonkeyPatch()
    for name, value in server_env.items():
        patch.setenv(name, value)
    server = EmbeddedServer(root / "data", log_path=root / "server.log", startup_timeout=60)
    try:
        server.start()
        for name in server_only:
            patch.delenv(name, raising=False)
        for name, value in (client_env or {}).items():
            patch.setenv(name, value)
        yield server
    finally:
        server.stop()
        patch.undo()


@pytest.fixture
def window(qtbot: Any, ui_server: EmbeddedServer) -> MainWindow:
    return open_window(qtbot, ui_server)


@pytest.fixture(autouse=True)
def _no_leaks(qapp: QApplication) -> Iterator[None]:
    """Fail a test that leaves top-level widgets alive or pool work running (runs after pytest-qt's
    own teardown closed the widgets it was given)."""
    before = {id(w) for w in QApplication.topLevelWidgets()}
    yield
    deadline = time.monotonic() + 5.0
    while active_work() and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    for _ in range(3):
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        QCoreApplication.processEvents()
    leaked = [w for w in QApplication.topLevelWidgets() if id(w) not in before]
    names = [f"{type(w).__name__}({w.objectName() or w.windowTitle()!r})" for w in leaked]
    running = active_work()
    for w in leaked:
        w.close()
        w.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert not leaked, f"the test leaked top-level widgets: {names}"
    assert not running, f"{running} thread-pool worker(s) still running after the test"


def drop_paths(target: QWidget, paths: list[Path]) -> None:
    """Simulate dragging ``paths`` from a file manager and dropping them on ``target``."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    point = QPointF(target.width() / 2, target.height() / 2)
    enter = QDragEnterEvent(
        point.toPoint(),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted(), "the window refused the drag"
    drop = QDropEvent(
        point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(target, drop)
    assert drop.isAccepted(), "the window refused the drop"


def upload_folder(
    api: ApiClient,
    masks_dir: Path,
    annotation_id: int,
    *,
    model_name: str,
    version: str,
    source: Source = "ai",
    series: Path | Any | None = None,
    confidence: float | None = None,
) -> str:
    """A complete group of the PNG masks in ``masks_dir`` sent through the core engine (what an AI worker
    or the CLI sends); its id. ``series`` (a folder or a loaded series) checks the masks against it."""
    prepared = prepare(
        masks_dir,
        annotation_id=annotation_id,
        model_name=model_name,
        version=version,
        source=source,
        confidence=confidence,
        series=series,
    )
    assert prepared.plan is not None, prepared.problems
    engine = UploadEngine(api)
    try:
        result = engine.run(prepared.plan)
    finally:
        engine.close()
    assert result.ok, result.message
    return str(result.group_id)
