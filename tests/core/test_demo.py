"""Demo data: the synthetic CT is proper DICOM, its masks match its anatomy, the toy model finds it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pacs_mask_desktop.core.demo import (
    _largest_component,
    threshold_model,
    write_bad_masks,
    write_masks_for_series,
    write_synthetic_ct,
)
from pacs_mask_desktop.core.dicom_series import Series, load_series
from pacs_mask_desktop.core.masks import load_mask_array, read_mask


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Series]:
    folder = tmp_path_factory.mktemp("ct")
    paths = write_synthetic_ct(folder, slices=24, size=128, seed=5)
    return paths, load_series(folder)


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory, ct) -> np.ndarray:
    masks = write_masks_for_series(ct[1], tmp_path_factory.mktemp("masks"))
    return np.stack([load_mask_array(p) for p in masks])


def test_synthetic_ct_is_proper_ct_image_storage(ct):
    paths, _ = ct
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.Modality == "CT"
    assert (first.Rows, first.Columns, first.BitsAllocated, first.PixelRepresentation) == (128, 128, 16, 1)
    assert (float(first.RescaleIntercept), float(first.RescaleSlope)) == (-1024.0, 1.0)
    assert first.pixel_array.dtype == np.int16
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    for keyword in (
        "PatientID",
        "PatientName",
        "StudyDescription",
        "SeriesDescription",
        "SliceThickness",
        "PixelSpacing",
        "WindowCenter",
        "WindowWidth",
        "InstanceNumber",
        "FrameOfReferenceUID",
    ):
        assert keyword in first, keyword
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), 2.5)
    assert len({p.name for p in paths}) == len(paths)


def test_phantom_hounsfield_values_match_the_anatomy(ct, truth):
    _, series = ct
    volume = np.stack([series.pixel_array(i) for i in range(len(series))])
    liver = volume[truth == 1]
    lesion = volume[truth == 2]
    assert abs(float(liver.mean()) - 60.0) < 3.0
    assert abs(float(lesion.mean()) - 100.0) < 5.0
    assert 8.0 < float(liver.std()) < 16.0  # realistic noise, not a flat cartoon
    assert abs(float(volume[:, :4, :4].mean()) + 1000.0) < 5.0  # air
    assert float(volume[-1].min()) < -700.0  # lungs in the upper slices
    assert float(volume[0].max()) > 500.0  # spine
    assert float(volume[0][volume[0] > -900].min()) < -50  # a fat layer at the body edge


def test_masks_follow_geometry_order_with_empty_slices(ct, truth, tmp_path):
    _, series = ct
    masks = write_masks_for_series(series, tmp_path)
    assert [p.name for p in masks] == [f"mask_{i:04d}.png" for i in range(len(series))]
    infos = [read_mask(p) for p in masks]
    assert all((i.mode, i.bit_depth, i.width, i.height) == ("L", 8, 128, 128) for i in infos)
    empty = [i.empty for i in infos]
    assert any(empty)
    assert not all(empty)
    with_lesion = [2 in i.labels for i in infos]
    assert 0 < sum(with_lesion) < sum(not e for e in empty)
    liver_slices = np.flatnonzero(~np.array(empty))
    assert np.all(np.diff(liver_slices) == 1)  # one organ: a contiguous run of slices
    assert liver_slices[0] < len(series) / 2  # in the lower half (index 0 = lowest z)


def test_label_map_renames_and_merges_labels(ct, truth, tmp_path):
    masks = write_masks_for_series(ct[1], tmp_path, label_map={"liver": 5})
    merged = np.stack([load_mask_array(p) for p in masks])
    assert set(np.unique(merged)) == {0, 5}
    assert np.array_equal(merged == 5, truth > 0)


def test_masks_need_a_phantom_series(tmp_path):
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(ValueError, match="not a synthetic series"):
        write_masks_for_series(tmp_path, tmp_path / "masks")


def test_bad_masks_writer_produces_each_kind(tmp_path):
    paths = write_bad_masks(tmp_path)
    assert {"rgb", "rgba", "text", "jpeg", "wrong_size", "duplicate", "bad_filename", "no_index"} <= set(
        paths
    )
    assert not (tmp_path / "mask_0002.png").exists()  # the gap
    assert all(p.exists() for p in paths.values())
    assert Image.open(paths["rgb"]).mode == "RGB"
    assert Image.open(paths["jpeg"]).format == "JPEG"
    assert Image.open(paths["wrong_size"]).size != Image.open(paths["good_0"]).size


def test_threshold_model_finds_liver_and_lesion(ct, truth):
    _, series = ct
    result = threshold_model(series)
    predicted = np.stack(result.masks)
    assert predicted.shape == truth.shape
    for label in (1, 2):
        a, b = truth == label, predicted == label
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.85, (label, dice)
    assert 0.8 < result.confidence <= 1.0
    assert result.voxels == np.count_nonzero(predicted)
    assert result.labels == {"liver": 1, "lesion": 2}
    from_array = threshold_model(np.stack([series.pixel_array(i) for i in range(len(series))]))
    assert all(np.array_equal(x, y) for x, y in zip(from_array.masks, result.masks, strict=True))


def test_threshold_model_on_air_finds_nothing():
    result = threshold_model(np.full((4, 32, 32), -1000.0, dtype=np.float32))
    assert result.confidence == 0.0
    assert all(not m.any() for m in result.masks)
    with pytest.raises(ValueError, match="empty"):
        threshold_model([])


def test_largest_component_follows_a_long_serpentine():
    # One 6-connected corridor ~860 voxels long, and a separate blob that only touches it diagonally.
    serpentine = np.zeros((2, 41, 41), dtype=bool)
    serpentine[0, ::2, :] = True
    serpentine[0, 1::4, -1] = True
    serpentine[0, 3::4, 0] = True
    volume = serpentine.copy()
    volume[1, 1, 20] = volume[1, 1, 21] = True  # below it (z=0, row 1) is empty: not connected
    volume[1, 0, 0] = False
    largest = _largest_component(volume)
    assert np.array_equal(largest, serpentine)
    assert not _largest_component(np.zeros((3, 3), dtype=bool)).any()


def test_big_series_write_and_model_are_fast(tmp_path):
    start = time.perf_counter()
    write_synthetic_ct(tmp_path, slices=120, size=512)
    written = time.perf_counter() - start
    series = load_series(tmp_path)
    start = time.perf_counter()
    result = threshold_model(series)
    modelled = time.perf_counter() - start
    assert len(result.masks) == 120
    assert written < 5.0
    assert modelled < 5.0
