"""NIfTI in and DICOM SEG out from the desktop app, on the real bundled server and a REAL PACS (Orthanc).

A 24-slice series is stored in Orthanc and its annotation created with the series geometry. The app
opens the series, a NIfTI label volume (written in RAS order with a matching affine and a label-name
sidecar) is dropped on the window, placed on the series' slices (checked on the staged slices and on
the screen), uploaded, approved with a reviewer token, exported as a DICOM SEG file and sent to Orthanc,
which then lists the SEG in the same study; the exported SEG dropped back lands on the same slices.
Refusals: a NIfTI with another spacing, a volume for an annotation without stored geometry when no series
is open, a send to a PACS that is down (with ``PACS_MASK_SEND_UNREVIEWED=true``, so Send is offered before
review) and the export of a group whose annotation has no geometry: each shows the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import Series, load_series
from pacs_mask_desktop.core.embedded import EmbeddedServer, free_port
from pacs_mask_desktop.core.pacs import PacsClient
from pacs_mask_desktop.core.plan import PreparedUpload
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.volume_masks import SEG_SOP_CLASS_UID, VolumeMasks
from pacs_mask_desktop.ui.main_window import MainWindow
from pacs_mask_desktop.ui.render import label_colour
from pacs_mask_desktop.ui.volume_stage import VolumeStage, stage_volume
from server.contract.messages import AnnotationOut
from tests.orthanc import Orthanc
from tests.ui.conftest import bundled_server, drop_paths, open_window, upload_folder

SLICES = 24
SIZE = 64


@dataclass(frozen=True)
class SegCase:
    """The server with the PACS, the series (local copy + in Orthanc), its annotation and a label volume."""

    server: EmbeddedServer
    api: ApiClient
    reviewer: ApiClient
    series_dir: Path
    series: Series
    annotation: AnnotationOut
    volume: np.ndarray  # [slice, row, column] on the series grid


@pytest.fixture(scope="module")
def seg_case(
    orthanc: Orthanc, ui_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SegCase]:
    root = tmp_path_factory.mktemp("seg-ui")
    with bundled_server(root, orthanc.env()) as server:  # the app learns the PACS from GET /api/config
        assert server.target is not None
        series_dir = root / "series"
        paths = write_synthetic_ct(series_dir, slices=SLICES, size=SIZE, seed=41)
        orthanc.stow([pydicom.dcmread(p) for p in paths])
        series = load_series(series_dir)
        with ApiClient(server.target.url, server.target.token) as api:
            answer = httpx.post(
                f"{server.target.url}/api/tokens",
                json={"name": f"reviewer-{uuid.uuid4().hex[:6]}", "role": "reviewer"},
                headers={"Authorization": f"Bearer {server.target.token}"},
                timeout=30,
            )
            answer.raise_for_status()
            with ApiClient(server.target.url, answer.json()["token"]) as reviewer:
                annotation = api.create_annotation(
                    series.study_instance_uid,
                    series.series_instance_uid,
                    patient_id=series.patient_id,
                    description="SEG desktop test",
                    series=geometry_from_series(series),
                )
                volume = np.zeros((SLICES, SIZE, SIZE), dtype=np.uint8)
                volume[5:10, 10:30, 20:44] = 1  # "liver": not symmetric in rows, columns or slices
                volume[12:15, 40:50, 8:16] = 2  # "spleen"
                volume[7, 12, 21] = 0
                yield SegCase(server, api, reviewer, series_dir, series, annotation, volume)


def write_nifti(case: SegCase, path: Path, *, spacing_scale: float = 1.0) -> Path:
    """The volume as a RAS NIfTI whose affine puts every voxel on its series voxel (x/y of LPS negated)."""
    geometry = geometry_from_series(case.series)
    iop = np.array(geometry.image_orientation_patient, dtype=float)
    row_mm, col_mm = geometry.pixel_spacing
    positions = [np.array(i.image_position_patient, dtype=float) for i in geometry.instances]
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_mm * spacing_scale  # NIfTI i = column
    lps[:3, 1] = iop[3:] * row_mm * spacing_scale  # NIfTI j = row
    lps[:3, 2] = positions[1] - positions[0]  # NIfTI k = slice index
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(np.transpose(case.volume, (2, 1, 0)), affine), path)
    path.with_name(path.name.removesuffix(".nii.gz") + ".json").write_text(
        json.dumps({"1": "liver", "2": "spleen"}), encoding="utf-8"
    )
    return path


@pytest.fixture
def seg_window(qtbot: Any, seg_case: SegCase) -> MainWindow:
    return open_window(qtbot, seg_case.server, wait_for_config=True)


def test_drop_nifti_upload_approve_export_and_send_to_pacs(
    qtbot: Any, seg_window: MainWindow, seg_case: SegCase, orthanc: Orthanc, tmp_path: Path
) -> None:
    window, case = seg_window, seg_case
    nifti = write_nifti(case, tmp_path / "labels.nii.gz")
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(case.series_dir)
    window.picker.choose(case.annotation)

    # Dropped like PNGs: placed on the series' slices, shown as the overlay.
    with qtbot.waitSignal(window.masksPrepared, timeout=20_000) as prepared_signal:
        drop_paths(window, [nifti])
    prepared = prepared_signal.args[0]
    assert prepared.ok, prepared.problems
    assert len(prepared.rows) == SLICES
    overlay = window.file_overlay
    assert overlay is not None
    assert window.viewer.view.overlay is overlay
    for k in range(SLICES):
        staged = overlay.path(k)
        assert staged is not None
        assert staged.name == f"mask_{k:04d}.png"
        assert np.array_equal(np.asarray(Image.open(staged)), case.volume[k]), f"slice {k}"
    assert window.masks.status_of("mask_0013.png") == "ok"
    assert window.masks.status_of("mask_0000.png") == "empty"

    view = window.viewer.view
    window.viewer.opacity.setValue(100)
    with qtbot.waitSignal(view.frameShown, timeout=10_000, check_params_cb=lambda i: i == 13):
        view.set_index(13)
    point = view.image_to_widget(12.0 + 0.5, 45.0 + 0.5).toPoint() * view.devicePixelRatioF()  # (col, row)
    assert view.grab().toImage().pixelColor(point).name() == label_colour(2).name()

    # Upload through the usual flow: the slices land on their SOP instances, the label names with them.
    window.upload.set_fields("nifti-import", uuid.uuid4().hex[:8], "ai")
    with qtbot.waitSignal(window.upload.uploadFinished, timeout=30_000) as finished:
        qtbot.mouseClick(window.upload.upload_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    assert result.ok, result.message
    stored = case.api.group_with_slices(result.group_id)
    group = stored.group
    assert {k: v.name for k, v in group.labels.items()} == {"1": "liver", "2": "spleen"}
    sop_by_index = {i: ref.sop_instance_uid for i, ref in enumerate(case.series.slices)}
    assert all(item.sop_instance_uid == sop_by_index[item.slice_index] for item in stored.items)
    labelled = {item.slice_index for item in stored.items if item.label}
    assert labelled == {*range(5, 10), *range(12, 15)}

    # Not approved yet: Send is disabled and says why; export works on a complete group.
    browser = window.groups
    qtbot.waitUntil(
        lambda: browser.selected is not None and browser.selected.id == result.group_id, timeout=10_000
    )
    assert browser.export_button.isEnabled()
    assert not browser.send_button.isEnabled()
    assert "approved" in browser.send_button.toolTip()

    out = tmp_path / "export" / "group-seg.dcm"
    out.parent.mkdir()
    with qtbot.waitSignal(browser.segExported, timeout=60_000) as exported:
        browser.export_selected(out)
    meta = exported.args[1]
    seg = pydicom.dcmread(out)
    assert seg.SOPClassUID == SEG_SOP_CLASS_UID
    assert seg.SOPInstanceUID == meta.sop_instance_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case.series.series_instance_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
    assert int(seg.NumberOfFrames) == meta.frames == 5 + 3
    assert (out.stat().st_mode & 0o777) == 0o600
    assert str(out) in window.statusBar().currentMessage()

    # A reviewer approves; the browser then offers Send, which stores the SEG in the PACS.
    case.reviewer.review(result.group_id, "approved", "checked")
    browser.refresh(select=result.group_id)
    qtbot.waitUntil(browser.send_button.isEnabled, timeout=10_000)
    with qtbot.waitSignal(browser.segSent, timeout=60_000) as sent:
        qtbot.mouseClick(browser.send_button, Qt.MouseButton.LeftButton)
    answer = sent.args[0]
    assert answer.sop_instance_uid == meta.sop_instance_uid
    assert answer.pacs_url.startswith(orthanc.url)
    message = window.statusBar().currentMessage()
    assert answer.sop_instance_uid in message
    assert answer.pacs_url in message
    qtbot.waitUntil(lambda: "sent to" in browser.seg_label.text(), timeout=10_000)

    with PacsClient(orthanc.dicomweb_url, auth=(orthanc.user, orthanc.password)) as pacs:
        listed = pacs.search_series(case.series.study_instance_uid)
    assert {s.series_instance_uid for s in listed if s.modality == "SEG"} >= {seg.SeriesInstanceUID}

    # The exported SEG dropped back on the window lands on the same slices, label for label.
    window.clear_masks()
    with qtbot.waitSignal(window.masksPrepared, timeout=20_000) as again:
        drop_paths(window, [out])
    assert again.args[0].ok, again.args[0].problems
    assert again.args[0].plan.labels["2"]["name"] == "spleen"
    overlay = window.file_overlay
    assert overlay is not None
    for k in range(SLICES):
        assert np.array_equal(np.asarray(Image.open(overlay.path(k))), case.volume[k]), f"slice {k}"


def test_volume_refusals_are_shown_with_the_measured_difference(
    qtbot: Any, seg_window: MainWindow, seg_case: SegCase, tmp_path: Path
) -> None:
    window, case = seg_window, seg_case

    # An annotation without stored geometry and no series open: nothing to place the voxels on.
    bare = case.api.create_annotation(
        "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20],
        "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20],
        description="no geometry",
    )
    window.picker.choose(bare)
    with qtbot.waitSignal(window.masksPrepared, timeout=20_000) as missing:
        window.add_masks([write_nifti(case, tmp_path / "good.nii.gz")])
    assert [p.code for p in missing.args[0].problems] == ["no_geometry"]
    assert f"Annotation {bare.id} has no stored series geometry" in window.masks.summary.text()

    # Another voxel spacing than the series: refused with the measured difference, nothing shown.
    with qtbot.waitSignal(window.seriesLoaded, timeout=10_000):
        window.open_series(case.series_dir)
    window.picker.choose(case.annotation)
    wrong = write_nifti(case, tmp_path / "wrong-spacing.nii.gz", spacing_scale=1.1)
    with qtbot.waitSignal(window.masksPrepared, timeout=20_000) as refused:
        window.add_masks([wrong])
    prepared = refused.args[0]
    assert not prepared.ok
    assert [p.code for p in prepared.problems] == ["geometry_mismatch"]
    assert "mm" in prepared.problems[0].message
    assert (
        "wrong-spacing.nii.gz: " + prepared.problems[0].message.split(": ", 1)[1]
        in window.masks.summary.text()
    )
    assert window.file_overlay is None


@pytest.fixture(scope="module")
def dead_pacs_server(
    ui_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """The bundled server with a PACS where nothing listens, and sending before review allowed."""
    root = tmp_path_factory.mktemp("seg-dead-pacs")
    settings = {
        "PACS_MASK_DICOMWEB_URL": f"http://127.0.0.1:{free_port()}/dicom-web",
        "PACS_MASK_SEND_UNREVIEWED": "true",
    }
    with bundled_server(root, settings, server_only=tuple(settings)) as server:
        yield server


def upload_png_group(
    api: ApiClient, annotation: AnnotationOut, series: Series, masks_dir: Path, *, check: bool
) -> str:
    """A complete group of PNG masks through the core engine (checked against ``series`` when ``check``)."""
    write_masks_for_series(series, masks_dir)
    return upload_folder(
        api,
        masks_dir,
        annotation.id,
        model_name="png",
        version=uuid.uuid4().hex[:8],
        source="manual",
        series=series if check else None,
    )


def visible_errors(window: MainWindow) -> list[str]:
    return [box.text() for box in window.findChildren(QMessageBox) if box.isVisible()]


def test_send_errors_and_a_group_without_geometry_are_explained(
    qtbot: Any, dead_pacs_server: EmbeddedServer, tmp_path: Path
) -> None:
    target = dead_pacs_server.target
    assert target is not None
    series_dir = tmp_path / "series"
    write_synthetic_ct(series_dir, slices=6, size=32, seed=43)
    series = load_series(series_dir)
    with ApiClient(target.url, target.token) as api:
        located = api.create_annotation(
            series.study_instance_uid, series.series_instance_uid, series=geometry_from_series(series)
        )
        bare = api.create_annotation(generate_uid(), generate_uid())
        sendable = upload_png_group(api, located, series, tmp_path / "masks", check=True)
        unplaced = upload_png_group(api, bare, series, tmp_path / "masks", check=False)
    window = open_window(qtbot, dead_pacs_server, wait_for_config=True)
    browser = window.groups

    # PACS_MASK_SEND_UNREVIEWED=true: an unreviewed group may be sent; the PACS is down, the dialog says so.
    with qtbot.waitSignal(browser.groupsLoaded, timeout=10_000):
        window.picker.choose(located)
    qtbot.waitUntil(lambda: browser.select_group(sendable), timeout=10_000)
    qtbot.waitUntil(browser.send_button.isEnabled, timeout=10_000)
    qtbot.mouseClick(browser.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: any("Cannot reach the PACS at http://127.0.0.1:" in t for t in visible_errors(window)),
        timeout=30_000,
    )
    assert window.statusBar().currentMessage().startswith("Send to PACS failed: ")
    qtbot.waitUntil(lambda: "Last send to the PACS failed" in browser.seg_label.text(), timeout=10_000)

    # An annotation without stored geometry: the export is refused with the server's reason.
    with qtbot.waitSignal(browser.groupsLoaded, timeout=10_000):
        window.picker.choose(bare)
    qtbot.waitUntil(lambda: browser.select_group(unplaced), timeout=10_000)
    qtbot.waitUntil(browser.export_button.isEnabled, timeout=10_000)
    out = tmp_path / "never.dcm"
    browser.export_selected(out)
    qtbot.waitUntil(
        lambda: any("created without its series geometry" in t for t in visible_errors(window)),
        timeout=30_000,
    )
    assert "Export as DICOM SEG failed" in window.statusBar().currentMessage()
    assert not out.exists()


def test_volume_stage_converts_once_and_deletes_its_slices(seg_case: SegCase, tmp_path: Path) -> None:
    stage = VolumeStage()
    nifti = write_nifti(seg_case, tmp_path / "stage.nii.gz")
    first = stage_volume(stage, [nifti], None, None, seg_case.series)  # offline: the open series' geometry
    assert isinstance(first, VolumeMasks)
    assert (first.folder.stat().st_mode & 0o777) == 0o700
    assert stage_volume(stage, [nifti], None, None, seg_case.series) is first  # checking, then uploading
    mixed = stage_volume(stage, [nifti, first.paths[0]], None, None, seg_case.series)
    assert isinstance(mixed, PreparedUpload)
    assert [p.code for p in mixed.problems] == ["volume_mixed"]
    assert (
        stage_volume(stage, [first.paths[0]], None, None, seg_case.series) is None
    )  # a PNG: nothing to stage
    stage.cleanup()
    assert not first.folder.exists()
