"""The desktop app on a REAL PACS (Orthanc + DICOMweb): browse, stream a series, annotate it, upload masks.

The bundled server is started with the PACS settings (so ``GET /api/config`` names the PACS and
``/api/annotations/from-pacs`` reads it); the app gets only the PACS credentials from its environment and
finds the PACS through the server. The one injected fault is a slow PACS: the series stream waits for a
gate, so "the first image shows before the rest has arrived" is checked without timing anything.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series
from pacs_mask_desktop.core.dicom_cache import DicomCache
from pacs_mask_desktop.core.embedded import EmbeddedServer
from pacs_mask_desktop.core.orientation import EdgeLabels
from pacs_mask_desktop.core.pacs import PacsClient
from pacs_mask_desktop.core.pacs_open import PacsSeriesRef
from pacs_mask_desktop.ui import dialogs
from pacs_mask_desktop.ui.main_window import MainWindow
from pacs_mask_desktop.ui.pacs_browser import PacsBrowser
from tests.orthanc import Orthanc, StoredSeries
from tests.ui.conftest import UiData, bundled_server, drop_paths, open_window


class SlowPacs(PacsClient):
    """The fault: a PACS that stalls after sending the first instance, until the test opens the gate."""

    gate = threading.Event()

    def retrieve_series(self, *args: Any, on_instance: Any = None, **kwargs: Any) -> list[Path]:
        def stall_after_first(path: Path, done: int, total: int) -> None:
            if on_instance is not None:
                on_instance(path, done, total)
            if done == 1 and not self.gate.wait(60):
                raise TimeoutError("the test never opened the gate")

        return super().retrieve_series(*args, on_instance=stall_after_first, **kwargs)


@pytest.fixture(scope="module")
def pacs_server(
    orthanc: Orthanc, ui_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """The bundled server configured with the PACS; the app's side knows only the PACS credentials."""
    root = tmp_path_factory.mktemp("pacs-ui")
    cache = {"PACS_MASK_DICOM_CACHE_DIR": str(root / "dicom-cache")}
    with bundled_server(root, orthanc.env(), client_env=cache) as server:  # the URL comes from the server
        yield server


@pytest.fixture
def pacs_window(qtbot: Any, pacs_server: EmbeddedServer) -> MainWindow:
    return open_window(qtbot, pacs_server, wait_for_config=True)


def open_browser(qtbot: Any, window: MainWindow) -> PacsBrowser:
    with qtbot.waitSignal(window.pacsBrowserOpened, timeout=5_000) as opened:
        window.menu_actions["open_pacs"].trigger()
    return opened.args[0]


def search(qtbot: Any, browser: PacsBrowser, **fields: str) -> list[str]:
    """Fill the form, click Search; the study UIDs found."""
    browser.patient_id.setText(fields.get("patient_id", ""))
    browser.patient_name.setText(fields.get("patient_name", ""))
    browser.accession.setText(fields.get("accession", ""))
    browser.modality.setCurrentText(fields.get("modality", ""))
    with qtbot.waitSignal(browser.studiesListed, timeout=10_000):
        qtbot.mouseClick(browser.search_button, Qt.MouseButton.LeftButton)
    return [s.study_instance_uid for s in browser.studies.items]


def test_browse_stream_annotate_and_upload(
    qtbot: Any,
    pacs_window: MainWindow,
    pacs_ct: StoredSeries,
    pacs_mr: StoredSeries,
    orthanc: Orthanc,
    ui_data: UiData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = pacs_window
    assert window.server_config is not None
    assert window.server_config.dicomweb_url == orthanc.dicomweb_url
    assert window.pacs_client().url == orthanc.dicomweb_url  # found through the server
    SlowPacs.gate.clear()
    window.use_pacs_client(
        SlowPacs(orthanc.dicomweb_url, (orthanc.user, orthanc.password), cache=DicomCache(tmp_path / "cache"))
    )

    # Search by each field.
    browser = open_browser(qtbot, window)
    assert pacs_ct.study_instance_uid in search(qtbot, browser, accession=pacs_ct.accession_number)
    found = search(qtbot, browser, patient_id=pacs_ct.patient_id, modality="CT")
    assert found == [pacs_ct.study_instance_uid]
    assert pacs_mr.study_instance_uid not in search(qtbot, browser, modality="CT")
    assert pacs_ct.study_instance_uid not in search(qtbot, browser, modality="MR")
    browser.use_dates.setChecked(True)
    browser.date_from.setDate(browser.date_to.date())
    browser.date_to.setDate(browser.date_to.date().addDays(-1))
    qtbot.mouseClick(browser.search_button, Qt.MouseButton.LeftButton)
    assert "ends before it starts" in browser.message.text()
    browser.use_dates.setChecked(False)

    # A single match lists its series at once: description, modality, number of instances.
    with qtbot.waitSignal(browser.seriesListed, timeout=10_000):
        search(qtbot, browser, patient_id=pacs_ct.patient_id)
    [listed] = browser.series.items
    assert listed.series_instance_uid == pacs_ct.series_instance_uid
    assert (listed.modality, listed.instance_count) == ("CT", pacs_ct.count)
    shown = [browser.series.data(browser.series.index(0, c)) for c in range(4)]
    assert shown[2:] == ["CT", pacs_ct.count]

    # Open it: the first instance to arrive is shown while the PACS has sent nothing else yet.
    view = window.viewer.view
    with qtbot.waitSignal(view.frameShown, timeout=20_000):
        qtbot.mouseClick(browser.open_button, Qt.MouseButton.LeftButton)
    assert len(window.series) == 1
    assert window.pacs_loader.busy
    assert not window.viewer.progress.isHidden()
    assert window.viewer.progress.maximum() == pacs_ct.count
    assert window.workspace.opened_from_pacs
    first_sop = window.series[0].sop_instance_uid
    with qtbot.waitSignal(window.seriesComplete, timeout=60_000):
        SlowPacs.gate.set()
    assert window.viewer.progress.isHidden()
    series = window.series
    assert [ref.sop_instance_uid for ref in series.slices] == list(pacs_ct.sop_uids_in_order)
    assert all(ref.path.is_file() for ref in series.slices)
    assert series[view.index].sop_instance_uid == first_sop  # the viewer stayed on the image it showed
    assert view.markers == EdgeLabels(left="R", right="L", top="A", bottom="P")

    # "Create from open series" records the PACS series on the server (it reads the PACS itself).
    with qtbot.waitSignal(window.picker.annotationChosen, timeout=20_000) as chosen:
        qtbot.mouseClick(window.picker.create_button, Qt.MouseButton.LeftButton)
    annotation = chosen.args[0]
    assert annotation.series_instance_uid == pacs_ct.series_instance_uid
    assert annotation.has_geometry is True
    assert annotation.slice_count == pacs_ct.count
    api = window.api
    assert isinstance(api, ApiClient)
    geometry = api.annotation_series(annotation.id)
    assert [i.sop_instance_uid for i in geometry.instances] == list(pacs_ct.sop_uids_in_order)

    # Masks for the series, dropped on the window and uploaded.
    masks = tmp_path / "masks"
    write_masks_for_series(series, masks)
    with qtbot.waitSignal(window.masksPrepared, timeout=20_000):
        drop_paths(window, [masks])
    qtbot.waitUntil(lambda: window.annotation is not None and window.annotation.id == annotation.id)
    window.upload.set_fields("pacs-ui", f"v-{uuid.uuid4().hex[:8]}", "manual")
    with qtbot.waitSignal(window.upload.uploadFinished, timeout=60_000) as finished:
        window.start_upload()
    result = finished.args[0]
    assert result.ok, result.message
    stored = api.group_with_slices(result.group_id).items
    assert {(m.slice_index, m.sop_instance_uid) for m in stored} == set(enumerate(pacs_ct.sop_uids_in_order))

    # The multi-frame MR streams in too (one instance, ten slices), then the CT opens again from the cache.
    with qtbot.waitSignal(window.seriesComplete, timeout=60_000):
        window.open_from_pacs(PacsSeriesRef(pacs_mr.study_instance_uid, pacs_mr.series_instance_uid))
    assert len(window.series) == pacs_mr.count
    assert window.annotation is None  # the CT's annotation no longer applies
    ready: list[int] = []
    window.pacs_loader.seriesReady.connect(lambda series, _first: ready.append(len(series)))
    with qtbot.waitSignal(window.seriesComplete, timeout=20_000):
        window.open_from_pacs(PacsSeriesRef(pacs_ct.study_instance_uid, pacs_ct.series_instance_uid))
    assert ready == [pacs_ct.count]  # the whole series at once from the cache: nothing streamed

    # Picking the CT's annotation while a local series is open offers to open its series from the PACS.
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    asked: list[str] = []
    monkeypatch.setattr(dialogs, "confirm", lambda _parent, title, _text, **_kw: asked.append(title) or True)
    window.picker.search.setText(pacs_ct.series_instance_uid)
    qtbot.waitUntil(lambda: window.picker.model.row_of(annotation.id) is not None, timeout=10_000)
    row = window.picker.model.row_of(annotation.id)
    assert row is not None
    index = window.picker.model.index(row, 0)
    with qtbot.waitSignal(window.seriesComplete, timeout=20_000):
        window.picker.table.clicked.emit(index)
    assert asked == ["Open the annotation's series?"]
    assert window.series.series_instance_uid == pacs_ct.series_instance_uid
    assert window.annotation is not None
    assert window.annotation.id == annotation.id


def test_pacs_down_is_a_clear_message_and_local_folders_still_open(
    qtbot: Any, pacs_window: MainWindow, ui_data: UiData, tmp_path: Path
) -> None:
    window = pacs_window
    from tests.live_server import free_port

    window.use_pacs_client(
        PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", cache=DicomCache(tmp_path))
    )
    browser = open_browser(qtbot, window)
    with qtbot.waitSignal(browser.failed, timeout=20_000) as failed:
        browser.patient_id.setText("anyone")
        qtbot.mouseClick(browser.search_button, Qt.MouseButton.LeftButton)
    assert "Cannot reach the PACS" in failed.args[0]
    assert "Local DICOM folders still open" in failed.args[0]
    browser.close()
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(ui_data.series_dir)
    assert len(window.series) > 0
