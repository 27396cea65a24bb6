"""Issue 9 on the client: masks are checked against the annotation's series as the server recorded it.

Against a real server subprocess with real DICOM (pydicom's MR, generated CTs): the CLI, the watch
worker and ``upload_inference_result`` refuse another series, another size and slices outside the
series before anything is sent; a folder mixing planes or repeating positions is not one volume; the
geometry a folder sends puts slice 0 at the lowest position along the normal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from pacs_mask_desktop import cli
from pacs_mask_desktop.core.demo import write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import SeriesError, load_series
from pacs_mask_desktop.core.inference import InvalidResult, upload_inference_result, write_result_folder
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.watch import FAILED_MARKER, Watcher
from tests.live_server import LiveServer

CT_SIZE = 32
CT_SLICES = 4


def masks_of(folder: Path, indexes: range | list[int], size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in indexes:
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[2:6, 2:6] = 1
        Image.fromarray(mask, mode="L").save(folder / f"mask_{i:04d}.png")
    return folder


def mr_folder(tmp_path: Path) -> Path:
    """pydicom's MR_small.dcm (another patient, 64x64) as a one-file series folder."""
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "MR_small.dcm")
    return folder


@pytest.fixture
def ct_annotation(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> int:
    """A CT annotation made with ``annotations --create FOLDER``: the server records the folder's geometry."""
    client_env(live_server)
    write_synthetic_ct(tmp_path / "ct", slices=CT_SLICES, size=CT_SIZE, seed=9901)
    assert cli.main(["annotations", "--create", str(tmp_path / "ct")]) == cli.EXIT_OK
    annotation = int(capsys.readouterr().out)
    with live_server.api() as api:
        row = api.get_annotation(annotation)
    assert (row.has_geometry, row.rows, row.columns, row.slice_count) == (True, 32, 32, 4)
    return annotation


def no_group(server: LiveServer, annotation: int) -> None:
    """Nothing was sent: no group, no group audit row, no object."""
    with server.api() as api:
        assert api.list_groups(annotation) == []
        assert not [r for r in api.audit(annotation_id=annotation) if r.action.startswith("group.")]
    assert server.stored_keys(f"mask/{annotation}/") == []


def upload(annotation: int, *args: str | Path) -> int:
    return cli.main(
        [
            "upload",
            "--annotation",
            str(annotation),
            "--model",
            "m",
            "--version",
            "1",
            "--json",
            *map(str, args),
        ]
    )


def problems(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "invalid"
    return out["problems"]


# --- the CLI ----------------------------------------------------------------------------------------------


def test_mr_masks_with_their_mr_series_are_refused_on_a_ct_annotation(
    live_server: LiveServer, ct_annotation: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's trial: 16x16 masks and pydicom's MR with ``--series`` onto a CT annotation."""
    masks = masks_of(tmp_path / "mr-masks", range(1), 16)
    assert upload(ct_annotation, "--series", mr_folder(tmp_path), masks) == cli.EXIT_BAD_INPUT
    found = problems(capsys)
    wrong = [p for p in found if p["code"] == "wrong_series"]
    assert len(wrong) == 1
    assert wrong[0]["filename"] is None
    mr_uid = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True).SeriesInstanceUID
    assert mr_uid in wrong[0]["message"]
    assert f"annotation {ct_annotation}" in wrong[0]["message"]
    size = next(p for p in found if p["code"] == "size_mismatch")
    assert size["filename"] == "mask_0000.png"
    assert "16x16" in size["message"]
    assert "slice 0 is 32x32" in size["message"]
    no_group(live_server, ct_annotation)


def test_without_a_folder_the_recorded_series_still_refuses_size_and_range(
    live_server: LiveServer, ct_annotation: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = masks_of(tmp_path / "masks", [0, 1], 16)
    masks_of(masks, [7], CT_SIZE)
    assert upload(ct_annotation, masks) == cli.EXIT_BAD_INPUT
    by_file = {(p["filename"], p["code"]): p["message"] for p in problems(capsys)}
    assert "16x16" in by_file[("mask_0000.png", "size_mismatch")]
    assert "16x16" in by_file[("mask_0001.png", "size_mismatch")]
    assert "slice index 7 is outside the series (0..3)" in by_file[("mask_0007.png", "no_matching_slice")]
    no_group(live_server, ct_annotation)


def test_fitting_masks_upload_with_the_recorded_sop_uids(
    live_server: LiveServer, ct_annotation: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = masks_of(tmp_path / "masks", range(CT_SLICES), CT_SIZE)
    assert upload(ct_annotation, "--series", tmp_path / "ct", masks) == cli.EXIT_OK
    capsys.readouterr()
    series = load_series(tmp_path / "ct")
    with live_server.api() as api:
        (group,) = api.list_groups(ct_annotation)
        items = api.group_with_slices(group.id).items
    assert [m.sop_instance_uid for m in sorted(items, key=lambda m: m.slice_index)] == [
        ref.sop_instance_uid for ref in series
    ]


# --- the watch worker and upload_inference_result ----------------------------------------------------------


def test_the_watch_worker_refuses_another_series_and_marks_the_folder_failed(
    live_server: LiveServer, ct_annotation: int, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    result = write_result_folder(
        inbox / "result-1",
        [np.ones((16, 16), np.uint8)],
        {
            "annotation_id": ct_annotation,
            "model_name": "m",
            "version": "1",
            "series": str(mr_folder(tmp_path)),
        },
    )
    lines: list[str] = []
    outcome = Watcher(inbox, server=live_server.url, token=live_server.token, log=lines.append).process(
        result
    )
    assert outcome.status == "invalid"
    failed = json.loads((result / FAILED_MARKER).read_text(encoding="utf-8"))["problems"]
    assert {p["code"] for p in failed} >= {"wrong_series", "size_mismatch"}
    no_group(live_server, ct_annotation)


def test_upload_inference_result_refuses_masks_of_another_size_without_a_series_folder(
    live_server: LiveServer, ct_annotation: int
) -> None:
    with pytest.raises(InvalidResult) as caught:
        upload_inference_result(
            [np.ones((16, 16), np.uint8)] * 2 + [np.ones((CT_SIZE, CT_SIZE), np.uint8)] * 3,
            annotation_id=ct_annotation,
            model_name="m",
            version="1",
        )
    by_file = {(p.filename, p.code) for p in caught.value.problems}
    assert ("mask_0000.png", "size_mismatch") in by_file
    assert ("mask_0001.png", "size_mismatch") in by_file
    assert ("mask_0004.png", "no_matching_slice") in by_file  # 5 masks for a 4-slice series
    no_group(live_server, ct_annotation)


# --- an older annotation without stored geometry: the folder must still be its series ---------------------


@pytest.fixture
def bare_annotation(live_server: LiveServer, tmp_path: Path, client_env: Any) -> tuple[int, Path, Path]:
    """An annotation on the CT in ``ct`` recorded without geometry, and ``other``: a CT of another series
    with the same grid size (so only the SeriesInstanceUID tells them apart)."""
    client_env(live_server)
    write_synthetic_ct(tmp_path / "ct", slices=CT_SLICES, size=CT_SIZE, seed=9902)
    write_synthetic_ct(tmp_path / "other", slices=CT_SLICES, size=CT_SIZE, seed=9903)
    own = load_series(tmp_path / "ct")
    with live_server.api() as api:
        row = api.create_annotation(own.study_instance_uid, own.series_instance_uid, "TEST", "no geometry")
    assert row.has_geometry is False
    return int(row.id), tmp_path / "ct", tmp_path / "other"


def nifti_on(folder: Path, path: Path) -> Path:
    """A label volume exactly on ``folder``'s series grid (LPS index storage: column, row, slice)."""
    import nibabel as nib

    geometry = geometry_from_series(load_series(folder))
    iop = np.asarray(geometry.image_orientation_patient, dtype=float)
    positions = np.asarray([i.image_position_patient for i in geometry.instances], dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * geometry.pixel_spacing[1]
    affine[:3, 1] = iop[3:] * geometry.pixel_spacing[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    data = np.zeros((CT_SIZE, CT_SIZE, CT_SLICES), dtype=np.uint8)
    data[2:9, 3:7, :] = 1
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine), path)
    return path


def wrong_series_of(found: list[Any], other: Path, annotation: int) -> Any:
    """The one ``wrong_series`` problem, naming the folder's series and the annotation's."""
    wrong = [p for p in found if (p["code"] if isinstance(p, dict) else p.code) == "wrong_series"]
    assert len(wrong) == 1, found
    message = wrong[0]["message"] if isinstance(wrong[0], dict) else wrong[0].message
    assert load_series(other).series_instance_uid in message
    assert f"annotation {annotation} is on series" in message
    return wrong[0]


def test_cli_refuses_a_series_folder_of_another_series_for_an_annotation_without_geometry(
    live_server: LiveServer,
    bare_annotation: tuple[int, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    annotation, own, other = bare_annotation
    masks = masks_of(tmp_path / "masks", range(CT_SLICES), CT_SIZE)
    assert upload(annotation, "--series", other, masks) == cli.EXIT_BAD_INPUT
    assert wrong_series_of(problems(capsys), other, annotation)["filename"] is None
    seg = nifti_on(other, tmp_path / "seg.nii.gz")  # fits the other series' grid exactly
    assert upload(annotation, "--series", other, seg) == cli.EXIT_BAD_INPUT
    assert wrong_series_of(problems(capsys), other, annotation)["filename"] == "seg.nii.gz"
    no_group(live_server, annotation)
    assert upload(annotation, "--series", own, nifti_on(own, tmp_path / "own.nii.gz")) == cli.EXIT_OK
    capsys.readouterr()
    with live_server.api() as api:
        assert len(api.list_groups(annotation)) == 1


def test_the_worker_refuses_a_series_folder_of_another_series_for_an_annotation_without_geometry(
    live_server: LiveServer, bare_annotation: tuple[int, Path, Path], tmp_path: Path
) -> None:
    annotation, _own, other = bare_annotation
    inbox = tmp_path / "inbox"
    fields = {"annotation_id": annotation, "model_name": "m", "version": "1", "series": str(other)}
    pngs = write_result_folder(inbox / "pngs", [np.ones((CT_SIZE, CT_SIZE), np.uint8)] * CT_SLICES, fields)
    volume = write_result_folder(inbox / "volume", [], {**fields, "masks": "seg.nii.gz"})
    nifti_on(other, volume / "seg.nii.gz")
    watcher = Watcher(inbox, server=live_server.url, token=live_server.token, log=[].append)
    for result in (pngs, volume):
        assert watcher.process(result).status == "invalid"
        failed = json.loads((result / FAILED_MARKER).read_text(encoding="utf-8"))["problems"]
        wrong_series_of(failed, other, annotation)
    with pytest.raises(InvalidResult) as caught:
        upload_inference_result(
            [np.ones((CT_SIZE, CT_SIZE), np.uint8)] * CT_SLICES,
            annotation_id=annotation,
            model_name="m",
            version="1",
            series=other,
        )
    wrong_series_of(caught.value.problems, other, annotation)
    with pytest.raises(InvalidResult) as caught:
        upload_inference_result(
            nifti_on(other, tmp_path / "seg.nii.gz"),
            annotation_id=annotation,
            model_name="m",
            version="1",
            series=other,
        )
    wrong_series_of(caught.value.problems, other, annotation)
    no_group(live_server, annotation)


# --- one volume, in one order -----------------------------------------------------------------------------


def test_geometry_from_a_folder_puts_slice_0_lowest_along_the_normal(tmp_path: Path) -> None:
    write_synthetic_ct(tmp_path / "ct", slices=5, size=16, seed=3)  # InstanceNumber 1 = highest z
    geometry = geometry_from_series(load_series(tmp_path / "ct"))
    z = [i.image_position_patient[2] for i in geometry.instances]
    assert z == sorted(z)
    assert [i.instance_number for i in geometry.instances] == [5, 4, 3, 2, 1]
    assert geometry.patient_name
    assert geometry.source == "folder"


def test_a_folder_mixing_planes_or_repeating_positions_is_not_one_volume(tmp_path: Path) -> None:
    paths = write_synthetic_ct(tmp_path / "ct", slices=4, size=16, seed=4)
    ds = pydicom.dcmread(paths[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # one coronal slice, as in a radial MR
    ds.save_as(paths[1])
    with pytest.raises(SeriesError, match="mixes planes"):
        load_series(tmp_path / "ct")

    paths = write_synthetic_ct(tmp_path / "ct2", slices=4, size=16, seed=5)
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = pydicom.dcmread(paths[0]).ImagePositionPatient  # a second echo at slice 0
    ds.save_as(paths[2])
    with pytest.raises(SeriesError, match="share the position"):
        load_series(tmp_path / "ct2")


def test_upload_help_says_which_end_of_the_series_is_slice_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["upload", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "slice index 0 is the first position along the slice normal" in text
    assert "lowest z: the feet-most slice is mask_0000.png" in text
