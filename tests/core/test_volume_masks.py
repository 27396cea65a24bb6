"""Issue 10, masks in: NIfTI label volumes and DICOM SEG files placed exactly on the series grid.

A generated axial CT (20 slices of 64x64, InstanceNumber running opposite to position, written with
pydicom) is the series. The issue's NIfTI cases and the dcmqi SEG import run on a real MR too: pydicom's
multi-frame Enhanced MR ``emri_small.dcm`` with a sagittal scanner geometry added by the test
(``tests.enhanced_mr`` says why and what), fixture ``volume_series``. The truth is a label volume on the
series' grid ([slice][row][column], slice 0 = first position along the slice normal). NIfTI files are written with nibabel in several storage orders with matching affines; they all import
to the truth, voxel for voxel. A wrong spacing and a shifted origin are refused with the measured
difference. dcmqi's ``itkimage2segimage`` (the field's reference converter) is the independent referee
for SEG: its SEG of the truth imports equal to the truth. SEGs built with highdicom check overlap and
another series. The CLI uploads a ``.nii.gz`` end to end against the real bundled server.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import msgspec
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from pacs_mask_desktop import cli
from pacs_mask_desktop.core.demo import write_synthetic_ct, write_synthetic_enhanced_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.inference import InvalidResult, upload_inference_result
from pacs_mask_desktop.core.masks import load_mask_array
from pacs_mask_desktop.core.retry import RetryPolicy
from pacs_mask_desktop.core.series_geometry import geometry_from_series
from pacs_mask_desktop.core.volume_masks import (
    STALE_STAGING_SECONDS,
    VolumeMaskError,
    masks_from_array,
    masks_from_nifti,
    masks_from_seg,
)
from pacs_mask_desktop.core.watch import Watcher
from server.contract.messages import SeriesGeometry
from tests.enhanced_mr import MR_FIRST_POSITION, MR_ORIENTATION, MR_PIXEL_SPACING_MM, MR_SLICE_STEP_MM
from tests.live_server import LiveServer

SLICES, SIZE = 20, 64
ITKIMAGE2SEGIMAGE = str(Path(sys.executable).with_name("itkimage2segimage"))
if not Path(ITKIMAGE2SEGIMAGE).is_file():  # dcmqi (the test extra) installed elsewhere
    ITKIMAGE2SEGIMAGE = shutil.which("itkimage2segimage") or ITKIMAGE2SEGIMAGE
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class Ct:
    """A series read from ``folder``, its geometry document and a label truth on its grid.

    The truth is :func:`truth_volume`'s first slices (all of it for the generated CT, 10 for the MR).
    """

    def __init__(self, folder: Path, seed: int) -> None:
        self.folder = folder
        self.series = load_series(folder)
        self.geometry = geometry_from_series(self.series)
        self.truth = truth_volume(seed)[: len(self.series)]
        assert self.truth.shape == (len(self.series), self.series.rows, self.series.columns)

    def affine_lps(self) -> np.ndarray:
        """Series index (slice, row, column) -> LPS mm."""
        g = self.geometry
        iop = np.asarray(g.image_orientation_patient, dtype=float)
        positions = np.asarray([i.image_position_patient for i in g.instances], dtype=float)
        affine = np.eye(4)
        affine[:3, 0] = (positions[-1] - positions[0]) / (len(positions) - 1)
        affine[:3, 1] = iop[3:] * g.pixel_spacing[0]
        affine[:3, 2] = iop[:3] * g.pixel_spacing[1]
        affine[:3, 3] = positions[0]
        return affine


def truth_volume(seed: int) -> np.ndarray:
    """Two labels in asymmetric boxes (so any flip or transpose shows) on some slices, empty elsewhere."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((SLICES, SIZE, SIZE), dtype=np.uint8)
    volume[3:15, 5:30, 10:50] = 1
    volume[6:9, 12:20, 14:22] = 2
    volume[16, 40:60, 2:9] = 2
    volume[rng.random(volume.shape) < 0.01] = 1
    return volume


def nifti_of(ct: Ct, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> nib.Nifti1Image:
    """The truth stored with data axis ``a`` = series axis ``order[a]`` (reversed where ``flips[a]``)."""
    data = np.transpose(ct.truth, order)
    series = ct.affine_lps()
    affine = np.eye(4)
    corner = np.zeros(3)
    for a, (axis, flip) in enumerate(zip(order, flips, strict=True)):
        if flip:
            data = np.flip(data, axis=a)
            corner[axis] = ct.truth.shape[axis] - 1
        affine[:3, a] = series[:3, axis] * (-1.0 if flip else 1.0)
    affine[:3, 3] = series[:3, :3] @ corner + series[:3, 3]
    image = nib.Nifti1Image(np.ascontiguousarray(data), LPS_TO_RAS @ affine)
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    return image


def save(image: nib.Nifti1Image, path: Path) -> Path:
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Ct:
    folder = tmp_path_factory.mktemp("ct")
    write_synthetic_ct(folder, slices=SLICES, size=SIZE, seed=1010)
    return Ct(folder, 7)


@pytest.fixture(scope="module", params=["generated CT", "emri_small MR with scanner geometry"])
def volume_series(request: pytest.FixtureRequest) -> Ct:
    """The issue's cases run on both: the generated CT and pydicom's real multi-frame MR (tests.enhanced_mr)."""
    if request.param == "generated CT":
        return request.getfixturevalue("ct")
    return Ct(request.getfixturevalue("emri_with_geometry"), 7)


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path / "data"))


# --- NIfTI ------------------------------------------------------------------------------------------------

STORAGE_ORDERS = {
    "LPS storage (ITK: i=column, j=row, k=slice)": ((2, 1, 0), (False, False, False)),
    "RAS storage (nibabel canonical)": ((2, 1, 0), (True, True, False)),
    "permuted axes (slice, column, row)": ((0, 2, 1), (False, False, False)),
    "flipped z with a matching affine": ((2, 1, 0), (False, False, True)),
    "everything at once": ((1, 0, 2), (True, True, True)),
}


@pytest.mark.parametrize("case", STORAGE_ORDERS)
def test_nifti_storage_orders_all_import_to_the_same_slices(
    volume_series: Ct, tmp_path: Path, case: str
) -> None:
    ct = volume_series
    order, flips = STORAGE_ORDERS[case]
    path = save(nifti_of(ct, order, flips), tmp_path / "seg.nii.gz")
    with masks_from_nifti(path, ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, ct.truth)
        assert [p.name for p in result.paths] == [f"mask_{k:04d}.png" for k in range(len(ct.truth))]
        for k in (0, 7, len(ct.truth) - 1):  # the PNG slices prepare() reads hold the same labels
            np.testing.assert_array_equal(load_mask_array(result.paths[k]), ct.truth[k])
        assert stat.S_IMODE(result.folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(result.paths[0].stat().st_mode) == 0o600
        assert result.folder.parent == tmp_path / "data" / "staging"
        assert bool(result.notes) == (order != (0, 1, 2) or any(flips))
    assert not result.folder.exists()


def test_nibabel_canonical_reorientation_imports_identically(volume_series: Ct, tmp_path: Path) -> None:
    """nibabel's own RAS reorientation (not this test's arithmetic) as a second opinion."""
    ct = volume_series
    canonical = nib.as_closest_canonical(nifti_of(ct, (2, 1, 0), (False, False, False)))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    with masks_from_nifti(save(canonical, tmp_path / "ras.nii"), ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, ct.truth)


def test_a_wrong_spacing_is_refused_with_the_difference(volume_series: Ct, tmp_path: Path) -> None:
    ct = volume_series
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    affine = image.affine.copy()
    affine[:3, 0] *= 1.02  # columns 2 % wider
    with pytest.raises(VolumeMaskError) as refused:
        masks_from_nifti(
            save(nib.Nifti1Image(image.get_fdata().astype(np.uint8), affine), tmp_path / "w.nii.gz"),
            ct.geometry,
        )
    spacing = ct.geometry.pixel_spacing[1]
    assert refused.value.code == "geometry_mismatch"
    assert (
        f"spacing between columns differs: {spacing * 1.02:.4f} mm in the file, {spacing:.4f} mm"
        in refused.value.message
    )
    assert "never resampled" in refused.value.message
    assert not list((tmp_path / "data").rglob("*.png"))


def test_a_shifted_origin_is_refused_with_the_shift(volume_series: Ct, tmp_path: Path) -> None:
    ct = volume_series
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    affine = image.affine.copy()
    affine[2, 3] += 1.25  # half a slice towards the head
    with pytest.raises(VolumeMaskError) as refused:
        masks_from_nifti(
            save(nib.Nifti1Image(np.asarray(image.dataobj), affine), tmp_path / "o.nii.gz"), ct.geometry
        )
    assert refused.value.code == "geometry_mismatch"
    assert (
        "origin differs: slice 0's first voxel is 1.250 mm away (LPS shift [+0.000, +0.000, +1.250] mm)"
        in str(refused.value)
    )
    assert "spacing" not in str(refused.value)


def test_within_the_tolerance_is_accepted_and_an_oblique_volume_refused(ct: Ct) -> None:
    affine = LPS_TO_RAS @ ct.affine_lps()
    nudged = affine.copy()
    nudged[0, 3] += 0.005  # 5 micrometres: float rounding of a real export, well inside 0.01 mm
    with masks_from_array(ct.truth, nudged, ct.geometry, affine_space="RAS") as result:
        np.testing.assert_array_equal(result.volume, ct.truth)
    angle = np.radians(0.5)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(VolumeMaskError, match=r"0\.500 degrees from the series' (row|column) axis"):
        masks_from_array(ct.truth, rotation @ affine, ct.geometry, affine_space="RAS")


def test_a_volume_of_another_size_is_refused(ct: Ct) -> None:
    affine = LPS_TO_RAS @ ct.affine_lps()
    with pytest.raises(
        VolumeMaskError, match="21 slices of 64x64 on the series' axes; the series has 20 slices"
    ):
        masks_from_array(np.zeros((21, SIZE, SIZE), np.uint8), affine, ct.geometry, affine_space="RAS")


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (300, np.int16, "label 300 at slice 4, row 5, column 6 is outside 0..255"),
        (-1, np.int16, "label -1 at slice 4, row 5, column 6 is outside 0..255"),
        (1.5, np.float32, "value 1.5 at slice 4, row 5, column 6 is not a whole number"),
    ],
)
def test_voxels_that_are_not_labels_0_to_255_are_refused_naming_the_value(
    ct: Ct, value: float, dtype: type, message: str
) -> None:
    volume = ct.truth.astype(dtype)
    volume[4, 5, 6] = value
    with pytest.raises(VolumeMaskError, match=message.replace(".", r"\.")) as refused:
        masks_from_array(volume, LPS_TO_RAS @ ct.affine_lps(), ct.geometry, affine_space="RAS")
    assert refused.value.code == "bad_labels"


def test_whole_number_floats_import_and_label_names_come_from_the_sidecar(ct: Ct, tmp_path: Path) -> None:
    image = nib.Nifti1Image(ct.truth.astype(np.float32), LPS_TO_RAS @ ct.affine_lps())
    path = save(image, tmp_path / "model.nii.gz")
    (tmp_path / "model.json").write_text(
        json.dumps({"0": "background", "1": "liver", "2": {"name": "lesion", "color": [255, 0, 0]}})
    )
    with masks_from_nifti(path, ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, ct.truth)
        assert result.labels == {
            "1": {"name": "liver", "category": None, "type": None, "color": None},
            "2": {"name": "lesion", "category": None, "type": None, "color": [255, 0, 0]},
        }
    (tmp_path / "model.json").unlink()
    (tmp_path / "model.txt").write_text(
        '# ITK-SnAP Label Description File\n0 0 0 0 0 0 0 "Clear Label"\n1 221 130 101 1 1 1 "liver"\n'
    )
    with masks_from_nifti(path, ct.geometry) as result:
        assert result.labels == {
            "1": {"name": "liver", "category": None, "type": None, "color": [221, 130, 101]}
        }


# --- DICOM SEG --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_a_seg_made_by_dcmqi_imports_equal_to_its_nifti(
    volume_series: Ct, tmp_path: Path, seg_type: str
) -> None:
    """dcmqi's itkimage2segimage (ITK reads the series itself) is the referee of geometry.

    dcmqi 1.5.7 (the newest release) maps SEG frames to source images by a top-level
    ImagePositionPatient, which a multi-frame MR does not have ("Tag not found"; multi-frame sources
    come with QIICR/dcmqi#558, not released yet). For the MR its reference check is turned off: dcmqi
    then writes each frame with the position it computes from the NIfTI's affine and no source
    reference, and this project places the frames by those positions alone (the stricter test).
    """
    ct = volume_series
    nifti = save(nifti_of(ct, (2, 1, 0), (True, True, False)), tmp_path / "truth.nii.gz")
    segment = {
        "SegmentAlgorithmType": "MANUAL",
        "SegmentedPropertyCategoryCodeSequence": {
            "CodeValue": "123037004",
            "CodingSchemeDesignator": "SCT",
            "CodeMeaning": "Anatomical Structure",
        },
    }
    metadata = {
        "ContentCreatorName": "Reader1", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "dcmqi", "SeriesNumber": "300", "InstanceNumber": "1", "BodyPartExamined": "ABDOMEN",
        "segmentAttributes": [[
            {**segment, "labelID": 1, "SegmentLabel": "liver", "recommendedDisplayRGBValue": [221, 130, 101],
             "SegmentedPropertyTypeCodeSequence": {"CodeValue": "10200004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Liver"}},
            {**segment, "labelID": 2, "SegmentLabel": "lesion", "recommendedDisplayRGBValue": [255, 0, 0],
             "SegmentedPropertyTypeCodeSequence": {"CodeValue": "52988006", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Lesion"}},
        ]],
    }  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(metadata))
    out = tmp_path / "dcmqi.dcm"
    done = subprocess.run(
        [ITKIMAGE2SEGIMAGE, "--inputImageList", str(nifti),
         "--inputDICOMDirectory", str(ct.folder), "--inputMetadata", str(tmp_path / "meta.json"),
         "--outputDICOM", str(out), "--segmentationType", seg_type,
         *(["--referencesGeometryCheck", "0"] if ct.series.is_multiframe else [])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    frames = pydicom.dcmread(out).PerFrameFunctionalGroupsSequence
    assert all(("DerivationImageSequence" in f) != ct.series.is_multiframe for f in frames)
    with masks_from_seg(out, ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, ct.truth)
        assert result.labels is not None
        assert [result.labels[k]["name"] for k in ("1", "2")] == ["liver", "lesion"]
        assert result.labels["1"]["type"] == {"code": "10200004", "scheme": "SCT", "meaning": "Liver"}
        assert result.labels["1"]["color"] == pytest.approx([221, 130, 101], abs=2)


def highdicom_seg(folder: Path, masks: np.ndarray) -> hd.seg.Segmentation:
    """A BINARY SEG of ``masks`` (slice, row, column, segment) on the series in ``folder``."""
    series = load_series(folder)
    sources = [pydicom.dcmread(path) for path in dict.fromkeys(ref.path for ref in series)]  # slice order
    if len(sources) == 1 and series.is_multiframe:  # highdicom wants the source's frame order
        masks = masks[
            [next(k for k, ref in enumerate(series) if ref.frame_index == f) for f in range(len(series))]
        ]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, name in enumerate(("liver", "lesion")[: masks.shape[-1]])
    ]  # fmt: skip
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=masks.astype(bool), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1", omit_empty_frames=True,
    )  # fmt: skip


def test_overlapping_segments_are_refused_naming_the_slice(ct: Ct, tmp_path: Path) -> None:
    masks = np.zeros((SLICES, SIZE, SIZE, 2), dtype=bool)
    masks[5:9, 10:20, 10:20, 0] = True
    masks[8, 15:25, 15:25, 1] = True  # overlaps the liver on slice 8 only
    masks[12, 30:40, 30:40, 1] = True
    highdicom_seg(ct.folder, masks).save_as(tmp_path / "overlap.dcm")
    with pytest.raises(
        VolumeMaskError, match="segments 'liver' and 'lesion' overlap on slice 8 \\(25 pixels\\)"
    ) as refused:
        masks_from_seg(tmp_path / "overlap.dcm", ct.geometry)
    assert refused.value.code == "segments_overlap"
    masks[8, :, :, 1] = False
    highdicom_seg(ct.folder, masks).save_as(tmp_path / "fine.dcm")
    with masks_from_seg(tmp_path / "fine.dcm", ct.geometry) as result:
        expected = masks[..., 0].astype(np.uint8) + 2 * masks[..., 1]
        np.testing.assert_array_equal(result.volume, expected)


def test_a_seg_of_another_series_is_refused(ct: Ct, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_synthetic_ct(other, slices=SLICES, size=SIZE, seed=2020)
    masks = np.zeros((SLICES, SIZE, SIZE, 1), dtype=bool)
    masks[4, 1:5, 1:5, 0] = True
    highdicom_seg(other, masks).save_as(tmp_path / "other.dcm")
    with pytest.raises(VolumeMaskError, match="not this annotation's series") as refused:
        masks_from_seg(tmp_path / "other.dcm", ct.geometry)
    assert refused.value.code == "wrong_series"
    assert load_series(other).series_instance_uid in refused.value.message


def test_a_seg_frame_without_references_is_placed_by_its_position(ct: Ct, tmp_path: Path) -> None:
    masks = np.zeros((SLICES, SIZE, SIZE, 1), dtype=bool)
    masks[11, 3:9, 40:50, 0] = True
    seg = highdicom_seg(ct.folder, masks)
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    seg.save_as(tmp_path / "positions.dcm")
    with masks_from_seg(tmp_path / "positions.dcm", ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, masks[..., 0].astype(np.uint8))


# --- the CLI, end to end ------------------------------------------------------------------------------------


def test_cli_uploads_a_nifti_end_to_end(
    live_server: LiveServer, client_env: Any, tmp_path: Path, ct: Ct, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    assert cli.main(["annotations", "--create", str(ct.folder)]) == cli.EXIT_OK
    annotation = int(capsys.readouterr().out)
    path = save(nifti_of(ct, (2, 1, 0), (True, True, True)), tmp_path / "seg.nii.gz")
    args = [
        "upload",
        "--annotation",
        str(annotation),
        "--model",
        "nnunet",
        "--version",
        "1",
        "--source",
        "ai",
    ]
    assert cli.main([*args, "--series", "pacs", str(path)]) == cli.EXIT_OK, capsys.readouterr().err
    group_id = capsys.readouterr().out.strip()
    with live_server.api() as api:
        found = api.group_with_slices(group_id)
    assert found.group.status == "complete"
    items = sorted(found.items, key=lambda m: m.slice_index)
    assert [m.slice_index for m in items] == list(range(SLICES))
    assert [m.sop_instance_uid for m in items] == [ref.sop_instance_uid for ref in ct.series]
    for m in items:
        stored = live_server.object_bytes(m.storage_key)
        (tmp_path / "got.png").write_bytes(stored)
        np.testing.assert_array_equal(load_mask_array(tmp_path / "got.png"), ct.truth[m.slice_index])
    assert not list((tmp_path / "client-data" / "staging").iterdir())  # the staged PNGs are gone

    shifted = nifti_of(ct, (2, 1, 0), (False, False, False))
    moved = shifted.affine.copy()
    moved[0, 3] += 3.0
    bad = save(nib.Nifti1Image(np.asarray(shifted.dataobj), moved), tmp_path / "bad.nii.gz")
    assert cli.main([*args, "--version", "2", "--json", str(bad)]) == cli.EXIT_BAD_INPUT
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "invalid"
    assert answer["problems"][0]["code"] == "geometry_mismatch"
    assert "origin differs" in answer["problems"][0]["message"]

    bare = live_server.new_annotation("no geometry")  # an older annotation, and no --series folder
    assert (
        cli.main(["upload", "--annotation", str(bare), "--model", "m", "--version", "1", "--json", str(path)])
        == 2
    )
    answer = json.loads(capsys.readouterr().out)
    assert [(p["filename"], p["code"]) for p in answer["problems"]] == [("seg.nii.gz", "no_geometry")]
    with live_server.api() as api:
        assert api.list_groups(bare) == []


def created_annotation(ct: Ct, capsys: pytest.CaptureFixture[str]) -> int:
    """An annotation made with ``annotations --create FOLDER``: the server stores the series geometry."""
    assert cli.main(["annotations", "--create", str(ct.folder)]) == cli.EXIT_OK
    return int(capsys.readouterr().out)


def test_the_watch_worker_uploads_the_manifests_nifti_with_its_label_names(
    live_server: LiveServer, client_env: Any, tmp_path: Path, ct: Ct, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = created_annotation(ct, capsys)
    folder = tmp_path / "inbox" / "result-1"
    folder.mkdir(parents=True)
    save(nifti_of(ct, (0, 2, 1), (False, True, False)), folder / "seg.nii.gz")
    (folder / "seg.json").write_text(json.dumps({"1": "liver", "2": "lesion"}))
    manifest = {"annotation_id": annotation, "model_name": "nnunet", "version": "w1", "masks": "seg.nii.gz"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / ".done").touch()
    watcher = Watcher(tmp_path / "inbox", server=live_server.url, token=live_server.token, log=lambda _: None)
    result = watcher.process(folder)
    assert result.ok, result.message
    with live_server.api() as api:
        found = api.group_with_slices(result.group_id)
    assert found.group.slice_count == SLICES
    assert {k: v.name for k, v in found.group.labels.items()} == {"1": "liver", "2": "lesion"}
    labelled = {m.slice_index for m in found.items if m.label}
    assert labelled == {k for k in range(SLICES) if ct.truth[k].any()}

    bad = tmp_path / "inbox" / "result-2"
    bad.mkdir()
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    wider = image.affine.copy()
    wider[:3, 2] *= 1.5  # thicker slices
    save(nib.Nifti1Image(np.asarray(image.dataobj), wider), bad / "seg.nii.gz")
    (bad / "manifest.json").write_text(json.dumps({**manifest, "version": "w2"}))
    (bad / ".done").touch()
    assert watcher.process(bad).status == "invalid"
    failed = json.loads((bad / ".failed").read_text())["problems"]
    assert failed[0]["code"] == "geometry_mismatch"
    assert (
        "spacing between slices differs: 3.7500 mm in the file, 2.5000 mm in the series"
        in failed[0]["message"]
    )


def test_upload_inference_result_takes_a_3d_array_with_its_affine(
    live_server: LiveServer, client_env: Any, ct: Ct, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = created_annotation(ct, capsys)
    ras = nifti_of(ct, (2, 1, 0), (True, True, False))  # nibabel's canonical order, as models write it
    result = upload_inference_result(
        np.asarray(ras.dataobj), affine=ras.affine, affine_space="RAS", labels={"1": "liver"},
        annotation_id=annotation, model_name="monai", version="a1",
    )  # fmt: skip
    assert result.ok, result.message
    with live_server.api() as api:
        found = api.group_with_slices(result.group_id)
    assert found.group.labels["1"].name == "liver"
    assert len(found.items) == SLICES
    for m in found.items:
        stored = np.asarray(Image.open(io.BytesIO(live_server.object_bytes(m.storage_key))))
        np.testing.assert_array_equal(stored, ct.truth[m.slice_index])
    shifted = ras.affine.copy()
    shifted[1, 3] += 0.5
    with pytest.raises(InvalidResult, match=r"origin differs: slice 0's first voxel is 0\.500 mm away"):
        upload_inference_result(
            np.asarray(ras.dataobj),
            affine=shifted,
            affine_space="RAS",
            annotation_id=annotation,
            model_name="monai",
            version="a2",
        )
    with live_server.api() as api:
        assert [g.version for g in api.list_groups(annotation)] == ["a1"]  # nothing sent for a2


def test_a_multiframe_enhanced_ct_takes_a_nifti_and_a_seg_by_frame(tmp_path: Path) -> None:
    """One Enhanced CT file, frames stored head first: slices are (SOP Instance UID, frame number)."""
    write_synthetic_enhanced_ct(tmp_path / "enh" / "ct.dcm", frames=12, size=SIZE, reverse_frames=True)
    series = load_series(tmp_path / "enh")
    geometry = geometry_from_series(series)
    assert [i.frame_number for i in geometry.instances][:3] == [12, 11, 10]
    truth = truth_volume(3)[:12]
    positions = np.asarray([i.image_position_patient for i in geometry.instances], dtype=float)
    lps = np.eye(4)
    lps[:3, 0] = (positions[-1] - positions[0]) / 11
    lps[:3, 1] = [0, geometry.pixel_spacing[0], 0]
    lps[:3, 2] = [geometry.pixel_spacing[1], 0, 0]
    lps[:3, 3] = positions[0]
    with masks_from_array(truth, LPS_TO_RAS @ lps, geometry, affine_space="RAS") as result:
        np.testing.assert_array_equal(result.volume, truth)
    masks = (truth == 1)[..., np.newaxis]
    highdicom_seg(tmp_path / "enh", masks).save_as(tmp_path / "enh-seg.dcm")
    with masks_from_seg(tmp_path / "enh-seg.dcm", geometry) as result:
        np.testing.assert_array_equal(result.volume, masks[..., 0].astype(np.uint8))


def test_the_real_mr_with_scanner_geometry_is_read_from_its_functional_groups(
    emri_with_geometry: Path,
) -> None:
    """Per-frame PlanePositionSequence, shared PlaneOrientation/PixelMeasures (tests.enhanced_mr adds them)."""
    series = load_series(emri_with_geometry)
    assert (series.ordered_by, series.is_multiframe, tuple(series.warnings)) == ("geometry", True, ())
    geometry = geometry_from_series(series)
    assert geometry.image_orientation_patient == MR_ORIENTATION
    assert geometry.pixel_spacing == [MR_PIXEL_SPACING_MM, MR_PIXEL_SPACING_MM]
    assert (geometry.slice_thickness, geometry.spacing_between_slices) == (1.2, MR_SLICE_STEP_MM)
    # the sagittal normal (rows x columns) points to the patient's right (-x) and frame 1 lies furthest
    # right: slice index 0 (first along the normal) is frame 10
    assert [i.frame_number for i in geometry.instances] == list(range(10, 0, -1))
    positions = np.asarray([i.image_position_patient for i in geometry.instances])
    np.testing.assert_allclose(
        positions[:, 0], MR_FIRST_POSITION[0] + MR_SLICE_STEP_MM * np.arange(9, -1, -1)
    )
    np.testing.assert_allclose(positions[:, 1:], [MR_FIRST_POSITION[1:]] * 10)
    shipped = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    np.testing.assert_array_equal(series.pixel_array(0), shipped[9])  # the real MR's pixels, frame 10


def test_pydicoms_multiframe_mr_without_plane_positions_is_refused_clearly(tmp_path: Path) -> None:
    """emri_small.dcm has no plane orientation, spacing or positions: nothing says where its voxels are, so no volume fits."""
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), folder / "emri_small.dcm")
    geometry = geometry_from_series(load_series(folder))
    with pytest.raises(
        VolumeMaskError, match="has no ImageOrientationPatient, PixelSpacing, ImagePositionPatient, so"
    ) as refused:
        masks_from_array(np.zeros((10, 64, 64), np.uint8), np.eye(4), geometry, affine_space="RAS")
    assert refused.value.code == "no_geometry"


def test_staging_folders_left_by_a_killed_process_are_removed(ct: Ct, tmp_path: Path) -> None:
    stale = tmp_path / "data" / "staging" / "nifti-killed"
    stale.mkdir(parents=True)
    (stale / "mask_0000.png").write_bytes(b"patient data")
    os.utime(stale, (time.time() - 2 * STALE_STAGING_SECONDS,) * 2)
    with masks_from_array(ct.truth, LPS_TO_RAS @ ct.affine_lps(), ct.geometry, affine_space="RAS") as result:
        assert result.folder.exists()
    assert not stale.exists()


def test_a_nifti_without_a_stated_position_or_with_two_is_refused(ct: Ct, tmp_path: Path) -> None:
    """nibabel would invent an affine for the first; ITK and nibabel would read different ones for the second."""
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    with pytest.raises(VolumeMaskError, match="states no position in the patient"):
        masks_from_nifti(save(image, tmp_path / "none.nii.gz"), ct.geometry)
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    moved = image.affine.copy()
    moved[2, 3] += 2.5
    image.set_qform(moved, code=1)
    with pytest.raises(VolumeMaskError, match=r"sform and qform disagree by up to 2\.500 mm"):
        masks_from_nifti(save(image, tmp_path / "two.nii.gz"), ct.geometry)


# --- review: the affine's space, sform/qform corners, per-frame SEG geometry ----------------------------------


def centred_grid() -> SeriesGeometry:
    """4x4 pixels of 1 mm, 3 slices, centred in x and y like a CT around the isocentre."""
    return msgspec.convert({
        "rows": 4, "columns": 4, "pixel_spacing": [1.0, 1.0], "image_orientation_patient": [1, 0, 0, 0, 1, 0],
        "series_instance_uid": "1.2.3", "study_instance_uid": "1.2", "instances": [
            {"slice_index": k, "sop_instance_uid": f"1.2.3.{k}", "image_position_patient": [-1.5, -1.5, 2.0 * k]}
            for k in range(3)
        ],
    }, SeriesGeometry)  # fmt: skip


def test_an_array_affine_must_say_whether_it_is_ras_or_lps(tmp_path: Path) -> None:
    """SimpleITK gives LPS: read as RAS on a centred grid it passed every check, the label 180 degrees off."""
    geometry = centred_grid()
    volume = np.zeros((3, 4, 4), np.uint8)
    volume[0, 0, 0] = 1
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = [0, 0, 2], [0, 1, 0], [1, 0, 0], [-1.5, -1.5, 0]
    with pytest.raises(TypeError, match="affine_space"):
        masks_from_array(volume, lps, geometry)  # the reviewer's case: no longer read as RAS by default
    with pytest.raises(ValueError, match=r"affine_space must be 'RAS' .* or 'LPS'"):
        masks_from_array(volume, lps, geometry, affine_space=None)  # type: ignore[arg-type]
    with masks_from_array(volume, lps, geometry, affine_space="LPS") as result:
        assert np.argwhere(result.volume).tolist() == [[0, 0, 0]]
    with masks_from_array(volume, LPS_TO_RAS @ lps, geometry, affine_space="RAS") as result:
        assert np.argwhere(result.volume).tolist() == [[0, 0, 0]]
    # Why it must be said: the same numbers taken as RAS still fit this grid exactly, rotated in-plane.
    with masks_from_array(volume, lps, geometry, affine_space="RAS") as result:
        assert np.argwhere(result.volume).tolist() == [[0, 3, 3]]
    with pytest.raises(InvalidResult, match="affine_space must be 'RAS'") as refused:
        upload_inference_result(
            volume, affine=lps, annotation_id=1, model_name="m", version="1",
            server="http://127.0.0.1:9", token="t", policy=RetryPolicy(give_up_after=0.5),
        )  # fmt: skip
    assert refused.value.problems[0].code == "invalid_field"


def test_a_nifti_with_lps_numbers_in_its_sform_is_refused_on_a_grid_off_centre(
    ct: Ct, tmp_path: Path
) -> None:
    """NIfTI is RAS by the standard; an LPS sform lands (2 x the offset from the centre) off the grid."""
    shift = np.array([40.0, -25.0, 0.0])
    geometry = msgspec.structs.replace(
        ct.geometry,
        instances=[
            msgspec.structs.replace(
                item, image_position_patient=list(np.asarray(item.image_position_patient, float) + shift)
            )
            for item in ct.geometry.instances
        ],
    )
    lps = ct.affine_lps()[:, [2, 1, 0, 3]]  # ITK storage: i = column, j = row, k = slice
    lps[:3, 3] += shift
    data = np.ascontiguousarray(np.transpose(ct.truth, (2, 1, 0)))
    with masks_from_nifti(
        save(nib.Nifti1Image(data, LPS_TO_RAS @ lps), tmp_path / "ras.nii.gz"), geometry
    ) as result:
        np.testing.assert_array_equal(result.volume, ct.truth)
    with pytest.raises(
        VolumeMaskError,
        match=r"origin differs: slice 0's first voxel is 94\.340 mm away \(LPS shift \[-80\.000, \+50\.000, \+0\.000\] mm\)",
    ) as refused:
        masks_from_nifti(save(nib.Nifti1Image(data, lps), tmp_path / "lps.nii.gz"), geometry)
    assert refused.value.code == "geometry_mismatch"


def test_a_qform_with_the_in_plane_axes_swapped_is_refused(ct: Ct, tmp_path: Path) -> None:
    """On a square grid the swap leaves voxel 0 and the far corner where they were; the other corners move."""
    image = nifti_of(ct, (2, 1, 0), (False, False, False))
    swapped = image.affine[:, [1, 0, 2, 3]]
    image.set_qform(swapped, code=1)
    np.testing.assert_allclose(image.header.get_qform(), swapped, atol=1e-4)
    with pytest.raises(VolumeMaskError, match=r"sform and qform disagree by up to 556\.8\d\d mm") as refused:
        masks_from_nifti(save(image, tmp_path / "swapped.nii.gz"), ct.geometry)
    assert refused.value.code == "geometry_mismatch"


def per_frame_seg(ct: Ct, masks: np.ndarray, orientation: list[float]) -> Any:
    """A highdicom SEG of ``masks`` whose orientation and pixel spacing are only in the per-frame groups."""
    seg = highdicom_seg(ct.folder, masks)
    shared = seg.SharedFunctionalGroupsSequence[0]
    planes, measures = shared.PlaneOrientationSequence, shared.PixelMeasuresSequence
    del shared.PlaneOrientationSequence, shared.PixelMeasuresSequence
    assert list(planes[0].ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    for item in seg.PerFrameFunctionalGroupsSequence:  # a fresh item for each frame: no shared elements
        plane, measure = pydicom.Dataset(), pydicom.Dataset()
        plane.ImageOrientationPatient = list(orientation)
        measure.PixelSpacing = list(measures[0].PixelSpacing)
        measure.SliceThickness = measures[0].SliceThickness
        item.PlaneOrientationSequence = pydicom.Sequence([plane])
        item.PixelMeasuresSequence = pydicom.Sequence([measure])
    return seg


def test_a_seg_with_its_orientation_only_per_frame_is_placed_by_it(ct: Ct, tmp_path: Path) -> None:
    """Frames stored transposed (rows along x), said only in each frame's PlaneOrientationSequence."""
    masks = np.zeros((SLICES, SIZE, SIZE, 1), dtype=bool)
    masks[5:9, 3:9, 40:50, 0] = True  # 4 frames
    transposed = masks.transpose(0, 2, 1, 3)
    per_frame_seg(ct, transposed, [0, 1, 0, 1, 0, 0]).save_as(tmp_path / "per-frame.dcm")
    with masks_from_seg(tmp_path / "per-frame.dcm", ct.geometry) as result:
        np.testing.assert_array_equal(result.volume, masks[..., 0].astype(np.uint8))

    seg = per_frame_seg(ct, transposed, [0, 1, 0, 1, 0, 0])
    seg.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0].ImageOrientationPatient = [
        1,
        0,
        0,
        0,
        1,
        0,
    ]
    seg.save_as(tmp_path / "disagree.dcm")
    with pytest.raises(
        VolumeMaskError, match=r"frame 3 has ImageOrientationPatient \[\+1\.00000, .*, frame 1 \["
    ):
        masks_from_seg(tmp_path / "disagree.dcm", ct.geometry)

    seg = per_frame_seg(ct, transposed, [0, 1, 0, 1, 0, 0])
    del seg.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence
    seg.save_as(tmp_path / "one-missing.dcm")
    with pytest.raises(VolumeMaskError, match=r"one-missing\.dcm") as refused:  # highdicom refuses it already
        masks_from_seg(tmp_path / "one-missing.dcm", ct.geometry)
    assert refused.value.code in ("unreadable", "geometry_mismatch")

    seg = per_frame_seg(ct, transposed, [0, 1, 0, 1, 0, 0])
    for item in seg.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence[0].PixelSpacing = [6.5, 6.5]
    seg.save_as(tmp_path / "spacing.dcm")
    with pytest.raises(
        VolumeMaskError, match=r"spacing between rows differs: 6\.5000 mm in the SEG, 6\.2500 mm"
    ):
        masks_from_seg(tmp_path / "spacing.dcm", ct.geometry)

    seg = per_frame_seg(ct, transposed, [0, 1, 0, 1, 0, 0])
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.PlaneOrientationSequence
    seg.save_as(tmp_path / "none.dcm")
    with pytest.raises(
        VolumeMaskError, match=r"frame 1 has a position .* but no ImageOrientationPatient"
    ) as refused:
        masks_from_seg(tmp_path / "none.dcm", ct.geometry)
    assert refused.value.code == "unreadable"
