"""Staging a NIfTI's slices fast (slabs read while earlier slices encode) and handing prepare() their facts.

The fast path must give exactly what the whole-volume path gives (voxels, files, errors), and
``prepare(known_slices=...)`` exactly what reading the files gives.
"""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import nibabel as nib
import numpy as np
import pytest

from pacs_mask_desktop.core import volume_masks
from pacs_mask_desktop.core.masks import encode_label_png, load_mask_array, read_mask
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.series_geometry import series_from_geometry
from pacs_mask_desktop.core.volume_masks import VolumeMaskError, masks_from_nifti
from server.contract.messages import SeriesGeometry

SLICES, ROWS, COLUMNS = 37, 24, 20  # more slices than one slab, a partial last slab
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometry() -> SeriesGeometry:
    """An axial series: column spacing 0.7, row spacing 0.8, slices 1.5 mm apart."""
    return msgspec.convert({
        "series_instance_uid": "1.2.3.4", "study_instance_uid": "1.2.3", "rows": ROWS, "columns": COLUMNS,
        "pixel_spacing": [0.8, 0.7], "image_orientation_patient": [1, 0, 0, 0, 1, 0],
        "instances": [
            {"slice_index": k, "sop_instance_uid": f"1.2.3.4.{k + 1}", "instance_number": k + 1,
             "image_position_patient": [-7.0, -9.0, 20.0 + 1.5 * k], "frame_number": None}
            for k in range(SLICES)
        ],
    }, SeriesGeometry)  # fmt: skip


def truth() -> np.ndarray:
    """Three labels on most slices, the first two and last three slices empty."""
    rng = np.random.default_rng(3)
    volume = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    volume[5:30, 3:15, 2:12] = 1
    volume[10:12, 4:6, 3:9] = 2
    volume[rng.random(volume.shape) < 0.01] = 7
    volume[:2] = 0
    volume[-3:] = 0
    return volume


def nifti(
    order: tuple[int, int, int], flips: tuple[bool, bool, bool], dtype: type = np.uint8
) -> nib.Nifti1Image:
    """The truth stored with data axis ``a`` = series axis ``order[a]`` (reversed where ``flips[a]``)."""
    series = np.eye(4)  # series index (slice, row, column) -> LPS
    series[:3, :3] = np.array([[0, 0, 0.7], [0, 0.8, 0], [1.5, 0, 0]])
    series[:3, 3] = [-7.0, -9.0, 20.0]
    data = np.transpose(truth(), order).astype(dtype)
    affine, corner = np.eye(4), np.zeros(3)
    for a, (axis, flip) in enumerate(zip(order, flips, strict=True)):
        if flip:
            data = np.flip(data, axis=a)
            corner[axis] = truth().shape[axis] - 1
        affine[:3, a] = series[:3, axis] * (-1.0 if flip else 1.0)
    affine[:3, 3] = series[:3, :3] @ corner + series[:3, 3]
    return nib.Nifti1Image(np.ascontiguousarray(data), LPS_TO_RAS @ affine)


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path / "data"))


def whole_volume_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_masks, "_stage_nifti_slabs", lambda *_args: None)


ORDERS = [
    ((2, 1, 0), (False, False, False)),  # ITK: streamed
    ((2, 1, 0), (True, True, False)),  # RAS: streamed
    ((2, 1, 0), (False, False, True)),  # flipped slices: streamed from the end
    ((1, 0, 2), (True, True, True)),  # slices on the first axis: whole volume
    ((0, 2, 1), (False, False, False)),
]


@pytest.mark.parametrize(("order", "flips"), ORDERS)
def test_the_fast_path_stages_what_the_whole_volume_path_stages(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    order: tuple[int, int, int],
    flips: tuple[bool, bool, bool],
) -> None:
    path = tmp_path / "seg.nii.gz"
    nib.save(nifti(order, flips), path)
    streamed = []
    original = volume_masks._stage_nifti_slabs
    monkeypatch.setattr(
        volume_masks, "_stage_nifti_slabs", lambda *args: streamed.append(original(*args)) or streamed[-1]
    )
    with masks_from_nifti(path, geometry()) as fast:
        assert (streamed[0] is not None) == (order[2] == 0)  # the file's last axis runs along the slices
        np.testing.assert_array_equal(fast.volume, truth())
        assert [p.name for p in fast.paths] == [f"mask_{k:04d}.png" for k in range(SLICES)]
        assert list(fast.known_slices) == fast.paths
        for p in fast.paths:  # the facts handed to prepare() are what reading the file gives
            assert fast.known_slices[p] == read_mask(p)
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert stat.S_IMODE(fast.folder.stat().st_mode) == 0o700
        whole_volume_path(monkeypatch)
        with masks_from_nifti(path, geometry()) as whole:
            np.testing.assert_array_equal(whole.volume, fast.volume)
            assert [(i.md5_hex, i.labels) for i in whole.known_slices.values()] == [
                (i.md5_hex, i.labels) for i in fast.known_slices.values()
            ]
            assert whole.notes == fast.notes


def test_a_bad_label_is_refused_with_the_same_message_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = nifti((2, 1, 0), (False, False, False), np.int16)
    data = np.asanyarray(image.dataobj).copy()
    data[4, 5, 30] = 300  # column 4, row 5, slice 30: in the second slab
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), path)
    given = tmp_path / "given"
    with pytest.raises(VolumeMaskError) as fast:
        masks_from_nifti(path, geometry(), staging=given)
    assert not list(given.iterdir())
    with pytest.raises(VolumeMaskError) as fast_default:
        masks_from_nifti(path, geometry())
    assert not list((tmp_path / "data" / "staging").iterdir())
    whole_volume_path(monkeypatch)
    with pytest.raises(VolumeMaskError) as whole:
        masks_from_nifti(path, geometry())
    assert fast.value.code == fast_default.value.code == whole.value.code == "bad_labels"
    assert fast.value.message == fast_default.value.message == whole.value.message
    assert "slice 30, row 5, column 4" in whole.value.message


def test_prepare_with_known_slices_plans_what_reading_plans(tmp_path: Path) -> None:
    path = tmp_path / "seg.nii.gz"
    nib.save(nifti((2, 1, 0), (False, False, False)), path)
    stored = series_from_geometry(geometry())
    fields = {"annotation_id": 1, "model_name": "m", "version": "1", "annotation_series": stored}
    with masks_from_nifti(path, geometry()) as staged:
        read = prepare(staged.folder, **fields)
        known = prepare(staged.folder, **fields, known_slices=staged.known_slices)
        assert read.ok
        assert known.ok
        assert read.plan is not None
        assert known.plan is not None
        assert known.plan.slices == read.plan.slices
        assert known.rows == read.rows
        assert known.warnings == read.warnings
        # A staged file changed on disk since it was written is read again, not trusted.
        changed = staged.paths[3]
        changed.write_bytes(encode_label_png(np.full((ROWS, COLUMNS), 9, dtype=np.uint8)))
        again = prepare(staged.folder, **fields, known_slices=staged.known_slices)
        assert again.plan is not None
        assert again.plan.slices[3].labels == (9,)
        # The cheap checks still run: a slice of another size is refused.
        changed.write_bytes(encode_label_png(np.zeros((ROWS, COLUMNS + 1), dtype=np.uint8)))
        refused = prepare(staged.folder, **fields, known_slices=staged.known_slices)
        assert not refused.ok
        assert refused.problems[0].code == "size_mismatch"


def test_encode_label_png_decodes_to_the_same_labels(tmp_path: Path) -> None:
    labels = truth()[12]
    path = tmp_path / "mask_0000.png"
    path.write_bytes(encode_label_png(labels))
    np.testing.assert_array_equal(load_mask_array(path), labels)
    with pytest.raises(ValueError, match="uint8"):
        encode_label_png(labels.astype(np.uint16))


def test_a_given_staging_folder_written_again_keeps_its_files_private(tmp_path: Path) -> None:
    path = tmp_path / "seg.nii.gz"
    nib.save(nifti((2, 1, 0), (False, False, False)), path)
    given = tmp_path / "given"
    given.mkdir()
    old = given / "mask_0003.png"
    old.write_bytes(b"not this")
    old.chmod(0o644)
    staged = masks_from_nifti(path, geometry(), staging=given)
    assert staged.known_slices[old] == read_mask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in staged.paths} == {0o600}
    assert stat.S_IMODE(given.stat().st_mode) == 0o700


def test_a_damaged_gzip_is_refused_as_unreadable_and_nothing_is_left(tmp_path: Path) -> None:
    """The voxels are inflated by zlib-ng straight into the volume; the gzip CRC-32 is still checked."""
    path = tmp_path / "seg.nii.gz"
    nib.save(nifti((2, 1, 0), (False, False, False)), path)
    damaged = bytearray(path.read_bytes())
    damaged[-6] ^= 0xFF  # inside the trailer's CRC-32: every voxel inflates, only the check can tell
    path.write_bytes(bytes(damaged))
    with pytest.raises(VolumeMaskError, match="CRC check failed") as refused:
        masks_from_nifti(path, geometry())
    assert refused.value.code == "unreadable"
    assert not list((tmp_path / "data" / "staging").iterdir())
