"""DICOM series model: real files (pydicom's shipped test data and the synthetic phantom)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs_mask_desktop.core.demo import write_synthetic_ct, write_synthetic_enhanced_ct
from pacs_mask_desktop.core.dicom_series import (
    WINDOW_PRESETS,
    Series,
    SeriesError,
    Window,
    load_series,
    window_level,
)


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not ship {name} here")
    return Path(path)


def _folder_with(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "_".join(n.split(".")[0] for n in names)
    folder.mkdir()
    for name in names:
        shutil.copy(_testdata(name), folder / name)
    return folder


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("ct")
    return folder, write_synthetic_ct(folder, slices=12, size=64, seed=3)


@pytest.fixture
def ct(ct_folder: tuple[Path, list[Path]]) -> Series:
    return load_series(ct_folder[0])


def test_geometry_order_ignores_shuffled_file_names_and_instance_numbers(ct_folder, ct):
    written = ct_folder[1]
    assert len(ct) == 12
    assert ct.ordered_by == "geometry"
    assert [ref.path for ref in ct] == written  # the writer returns geometry order
    assert sorted(p.name for p in written) != [p.name for p in written]  # names really are shuffled
    positions = [ref.position for ref in ct]
    assert positions == sorted(positions)
    assert np.allclose(np.diff(positions), 2.5)
    assert [ref.instance_number for ref in ct] == list(range(12, 0, -1))  # scanner order is head first
    assert all(ref.frame_index is None and ref.frame_number is None for ref in ct)
    assert len({ref.sop_instance_uid for ref in ct}) == 12


def test_series_attributes_come_from_the_headers(ct_folder, ct):
    header = pydicom.dcmread(ct_folder[1][0], stop_before_pixels=True)
    assert ct.series_instance_uid == header.SeriesInstanceUID
    assert ct.study_instance_uid == header.StudyInstanceUID
    assert ct.patient_id == "DEMO-0003"
    assert ct.modality == "CT"
    assert ct.description == header.SeriesDescription
    assert (ct.rows, ct.columns) == (64, 64)
    assert ct.pixel_spacing == pytest.approx((6.25, 6.25))
    assert ct.slice_thickness == pytest.approx(2.5)
    assert ct.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert ct.file_window == Window(40.0, 400.0)
    assert ct.warnings == ()
    assert not ct.is_multiframe
    assert ct.indexes_of_sop(ct[5].sop_instance_uid) == [5]
    assert ct.indexes_of_instance_number(12) == [0]


def test_pixel_array_is_float32_hounsfield_and_read_only(ct):
    frame = ct.pixel_array(6)
    assert frame.dtype == np.float32
    assert frame.shape == (64, 64)
    assert abs(float(frame[:3, :3].mean()) + 1000.0) < 40.0  # air in the corner, in HU
    assert float(frame.max()) > 500.0  # the spine
    with pytest.raises(ValueError, match="read-only"):
        frame[0, 0] = 0
    raw = pydicom.dcmread(ct[6].path).pixel_array
    assert np.array_equal(frame, raw.astype(np.float32) - 1024.0)


def test_cache_is_bounded_and_hits_return_the_same_array(ct_folder):
    series = load_series(ct_folder[0], cache_size=4)
    for _ in range(2):
        for i in range(len(series)):
            series.pixel_array(i)
            assert series.cached_frames <= 4
    assert series.cached_frames == 4
    last = series.pixel_array(len(series) - 1)
    assert series.pixel_array(len(series) - 1) is last
    assert series.pixel_array(0) is not series.pixel_array(1)

    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            for i in np.random.default_rng(seed).integers(0, len(series), size=60):
                series.pixel_array(int(i))
                assert series.cached_frames <= 4
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert series.cached_frames <= 4
    series.clear_cache()
    assert series.cached_frames == 0


def test_falls_back_to_instance_number_without_geometry(tmp_path, ct_folder):
    for path in ct_folder[1]:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(tmp_path / path.name)
    series = load_series(tmp_path)
    assert series.ordered_by == "instance_number"
    assert [ref.instance_number for ref in series] == list(range(1, 13))
    assert [ref.position for ref in series] == [None] * 12
    assert any("InstanceNumber" in w for w in series.warnings)


def test_duplicate_instance_numbers_without_geometry_are_refused(tmp_path, ct_folder):
    """No positions and two instances numbered alike: no file-name tie-break (the server keeps PACS order)."""
    paths = ct_folder[1]
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        if path == paths[5]:
            ds.InstanceNumber = pydicom.dcmread(paths[4]).InstanceNumber
        ds.save_as(tmp_path / path.name)
    with pytest.raises(SeriesError) as caught:
        load_series(tmp_path)
    message = str(caught.value)
    assert f"share InstanceNumber {pydicom.dcmread(paths[4]).InstanceNumber}" in message
    assert paths[4].name in message
    assert paths[5].name in message


def test_enhanced_multiframe_is_ordered_by_per_frame_positions(tmp_path):
    path = write_synthetic_enhanced_ct(tmp_path / "enhanced.dcm", frames=12, size=64, reverse_frames=True)
    series = load_series(tmp_path)
    assert len(series) == 12
    assert series.is_multiframe
    assert [ref.frame_index for ref in series] == list(range(11, -1, -1))  # stored top-down
    assert [ref.frame_number for ref in series] == list(range(12, 0, -1))
    positions = [ref.position for ref in series]
    assert positions == sorted(positions)
    assert len(set(positions)) == 12
    assert len({ref.sop_instance_uid for ref in series}) == 1
    assert series.pixel_spacing == pytest.approx((6.25, 6.25))
    assert series.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    frames = pydicom.dcmread(path).pixel_array
    for i in (0, 5, 11):
        expected = frames[series[i].frame_index].astype(np.float32) - 1024.0  # shared rescale applied
        assert np.array_equal(series.pixel_array(i), expected)


def test_rt_dose_frames_use_grid_offsets_and_dose_scaling(tmp_path):
    folder = _folder_with(tmp_path, "rtdose.dcm")
    series = load_series(folder)
    assert len(series) == 15
    assert [ref.frame_index for ref in series] == list(range(15))
    assert np.allclose(np.diff([ref.position for ref in series]), 5.0)
    raw = pydicom.dcmread(folder / "rtdose.dcm").pixel_array
    assert np.allclose(
        series.pixel_array(7), raw[7] * float(pydicom.dcmread(folder / "rtdose.dcm").DoseGridScaling)
    )


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("rtdose_rle.dcm", "rtdose.dcm"),
    ],
)
def test_lossless_compressed_decode_matches_the_uncompressed_file(tmp_path, compressed, reference):
    packed = load_series(_folder_with(tmp_path, compressed))
    plain = load_series(_folder_with(tmp_path, reference))
    assert len(packed) == len(plain)
    for i in range(len(plain)):
        assert np.array_equal(packed.pixel_array(i), plain.pixel_array(i))


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "693_J2KI.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmd.dcm"])
def test_other_encodings_decode_to_a_2d_frame(tmp_path, name):
    series = load_series(_folder_with(tmp_path, name))
    frame = series.pixel_array(0)
    assert frame.shape == (series.rows, series.columns)
    assert frame.dtype == np.float32
    assert np.isfinite(frame).all()
    assert float(frame.max()) > float(frame.min())


def test_other_files_are_skipped_with_reasons_and_other_series_warned(tmp_path, ct_folder):
    folder = tmp_path / "mixed"
    shutil.copytree(ct_folder[0], folder / "deep" / "ct")
    shutil.copy(_testdata("CT_small.dcm"), folder / "scout.dcm")
    shutil.copy(_testdata("rtplan.dcm"), folder / "plan.dcm")
    (folder / "notes.txt").write_text("not dicom")
    series = load_series(folder)
    assert len(series) == 12  # the largest series wins
    reasons = {s.path.name: s.reason for s in series.skipped}
    assert reasons["notes.txt"] == "not a DICOM file"
    assert "no image" in reasons["plan.dcm"]
    other = pydicom.dcmread(folder / "scout.dcm").SeriesInstanceUID
    assert any(other in w for w in series.warnings)

    chosen = load_series(folder, series_instance_uid=other)
    assert len(chosen) == 1
    assert chosen.modality == "CT"
    assert chosen.default_window() == WINDOW_PRESETS["soft_tissue"]  # CT_small has no window
    with pytest.raises(SeriesError, match="not in"):
        load_series(folder, series_instance_uid="1.2.3.4")


def test_folder_without_dicom_images_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(SeriesError, match="no DICOM image files"):
        load_series(tmp_path)
    with pytest.raises(SeriesError, match="does not exist"):
        load_series(tmp_path / "missing")
    with pytest.raises(SeriesError, match="not a folder"):
        load_series(tmp_path / "readme.txt")


def test_duplicate_copies_of_an_instance_count_once(tmp_path, ct_folder):
    shutil.copytree(ct_folder[0], tmp_path / "a")
    shutil.copy(ct_folder[1][0], tmp_path / "a" / "copy.dcm")
    series = load_series(tmp_path / "a")
    assert len(series) == 12
    assert any("repeats SOP Instance" in w for w in series.warnings)


def test_progress_and_cancel(ct_folder):
    calls: list[tuple[int, int]] = []
    load_series(ct_folder[0], on_progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (12, 12)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SeriesError, match="cancelled"):
        load_series(ct_folder[0], cancel=cancel)


def test_window_presets_put_the_file_window_first(ct, tmp_path):
    presets = ct.window_presets()
    assert next(iter(presets)) == "default"
    assert presets["default"] == (40.0, 400.0)
    assert presets["lung"] == (-600.0, 1500.0)
    assert presets["bone"] == (400.0, 1800.0)
    assert presets["brain"] == (40.0, 80.0)
    assert presets["soft_tissue"] == (40.0, 400.0)
    mr = load_series(_folder_with(tmp_path, "MR_small.dcm"))
    assert mr.default_window() == Window(600.0, 1600.0)


def test_window_level_maps_the_window_to_bytes():
    values = np.array([-1000.0, -160.0, 40.0, 239.0, 240.0, 3000.0], dtype=np.float32)
    out = window_level(values, 40, 400)
    assert out.dtype == np.uint8
    assert out[0] == 0
    assert out[1] == 0
    assert 126 <= out[2] <= 129
    assert out[4] == 255
    assert out[5] == 255
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert np.array_equal(window_level(values, 40, 400, invert=True), 255 - out)
    assert window_level(np.array([0, 1, 2], dtype=np.int16), 1, 1).tolist() == [0, 255, 255]


def test_window_level_is_fast_on_a_512_frame():
    frame = np.random.default_rng(0).normal(0, 500, (512, 512)).astype(np.float32)
    window_level(frame, 40, 400)
    best = min(_timed(lambda: window_level(frame, 40, 400)) for _ in range(20))
    assert best < 0.005


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
