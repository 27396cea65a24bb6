"""Upload planning against real files: a synthetic series, its masks and every kind of bad input."""

from __future__ import annotations

import base64
import hashlib
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop.core.demo import (
    write_bad_masks,
    write_masks_for_series,
    write_synthetic_ct,
    write_synthetic_enhanced_ct,
)
from pacs_mask_desktop.core.dicom_series import Series, load_series
from pacs_mask_desktop.core.plan import STATUS_ORDER, PrepareCancelled, prepare

GROUP = {"annotation_id": 7, "model_name": "liver-seg", "version": "1.2.0"}


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    write_synthetic_ct(folder, slices=12, size=64, seed=1)
    return folder


@pytest.fixture(scope="module")
def series(ct_dir: Path) -> Series:
    return load_series(ct_dir)


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory: pytest.TempPathFactory, series: Series) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    write_masks_for_series(series, folder)
    return folder


def _codes(result) -> set[tuple[str | None, str]]:
    return {(p.filename, p.code) for p in result.problems}


def _mask(path: Path, size: tuple[int, int] = (64, 64), label: int = 1) -> Path:
    array = np.zeros(size, dtype=np.uint8)
    array[2:6, 2:6] = label
    Image.fromarray(array, mode="L").save(path)
    return path


def test_full_series_plan(series, mask_dir):
    result = prepare(mask_dir, series=series, source="ai", confidence=0.93, params={"thr": 0.5}, **GROUP)
    assert result.ok, result.problems
    assert result.problems == []
    plan = result.plan
    assert plan is not None
    assert (plan.annotation_id, plan.model_name, plan.version, plan.source) == (7, "liver-seg", "1.2.0", "ai")
    assert plan.confidence == 0.93
    assert plan.params == {"thr": 0.5}
    assert plan.expected_slices == 12
    assert plan.series_instance_uid == series.series_instance_uid
    assert plan.series_slice_count == 12
    assert [s.slice_index for s in plan.slices] == list(range(12))
    assert [s.sop_instance_uid for s in plan.slices] == [ref.sop_instance_uid for ref in series]
    for planned in plan.slices:
        data = planned.path.read_bytes()
        assert planned.size == len(data)
        assert planned.md5_hex == hashlib.md5(data).hexdigest()  # noqa: S324
        assert base64.b64decode(planned.content_md5_b64) == hashlib.md5(data).digest()  # noqa: S324
        assert planned.content_type == "image/png"
        assert (planned.width, planned.height) == (64, 64)
        assert planned.empty == (planned.labels == ())
        assert planned.frame_number is None
    assert 0 < plan.empty_count < 12  # the phantom's liver is absent from some slices
    assert plan.total_bytes == sum(s.size for s in plan.slices)
    assert result.missing_slices == []
    statuses = {row.filename: row.status for row in result.rows}
    assert set(statuses.values()) == {"ok", "empty"}
    assert sum(1 for s in statuses.values() if s == "empty") == plan.empty_count
    assert [row.slice_index for row in result.rows] == list(range(12))
    assert result.first_problem_row() is None


def test_series_can_be_given_as_a_folder(ct_dir, mask_dir):
    result = prepare(mask_dir, series=ct_dir, **GROUP)
    assert result.ok
    assert result.series is not None
    assert len(result.series) == 12


def test_progress_reports_every_file_on_the_calling_thread(series, mask_dir):
    calls: list[tuple[int, int, str]] = []
    prepare(
        mask_dir,
        series=series,
        on_progress=lambda d, t: calls.append((d, t, threading.current_thread().name)),
        **GROUP,
    )
    assert calls[0][:2] == (0, 12)
    assert calls[-1][:2] == (12, 12)
    assert [c[0] for c in calls] == list(range(13))
    assert {c[2] for c in calls} == {threading.current_thread().name}


def test_cancel_before_and_during(series, mask_dir):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(PrepareCancelled):
        prepare(mask_dir, series=series, cancel=cancel, **GROUP)

    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 3:
            cancel.set()

    with pytest.raises(PrepareCancelled):
        prepare(mask_dir, series=series, cancel=cancel, on_progress=progress, max_workers=1, **GROUP)


@pytest.mark.parametrize("defer_decode", [False, True])
def test_a_cancel_while_the_last_files_are_taken_in_still_cancels(series, mask_dir, defer_decode):
    """Nothing is left in flight then (files go to the pool in chunks): the cancel must not be lost."""
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == total:
            cancel.set()

    with pytest.raises(PrepareCancelled):
        prepare(
            mask_dir, series=series, cancel=cancel, on_progress=progress, defer_decode=defer_decode, **GROUP
        )


def test_partial_volume_is_a_warning_unless_all_slices_are_required(tmp_path, series, mask_dir):
    for i in range(3, 8):
        shutil.copy(mask_dir / f"mask_{i:04d}.png", tmp_path)
    result = prepare(tmp_path, series=series, **GROUP)
    assert result.ok
    assert result.missing_slices == [0, 1, 2, 8, 9, 10, 11]
    assert any("7 of 12" in w for w in result.warnings)

    strict = prepare(tmp_path, series=series, require_all_slices=True, **GROUP)
    assert not strict.ok
    assert _codes(strict) == {(None, "missing_index")}
    assert "0-2, 8-11" in strict.problems[0].message


def test_without_series_a_gap_in_file_indexes_is_a_problem(tmp_path):
    for i in (4, 5, 7):
        _mask(tmp_path / f"mask_{i:04d}.png")
    result = prepare(tmp_path, **GROUP)
    assert not result.ok
    assert _codes(result) == {(None, "missing_index")}
    assert "6" in result.problems[0].message

    (tmp_path / "mask_0007.png").unlink()
    ok = prepare(tmp_path, **GROUP)  # 4, 5: need not start at 0
    assert ok.ok
    assert [s.slice_index for s in ok.plan.slices] == [4, 5]
    assert all(s.sop_instance_uid is None for s in ok.plan.slices)


def test_every_bad_input_is_reported_together(tmp_path):
    paths = write_bad_masks(tmp_path, size=64)
    result = prepare(tmp_path, **GROUP)
    assert result.plan is None
    codes = _codes(result)
    expected = {
        (paths["rgb"].name, "not_a_mask"),
        (paths["rgba"].name, "not_a_mask"),
        (paths["jpeg"].name, "not_a_mask"),
        (paths["text"].name, "unreadable"),
        (paths["good_1"].name, "duplicate_slice_index"),
        (paths["duplicate"].name, "duplicate_slice_index"),
        (paths["bad_filename"].name, "bad_filename"),
        (paths["no_index"].name, "no_index"),
        (paths["not_png_extension"].name, "bad_filename"),
        (None, "missing_index"),
    }
    assert expected <= codes
    assert all(p.message for p in result.problems)
    gap = next(p for p in result.problems if p.code == "missing_index")
    assert "jump over 2 (" in gap.message  # unreadable mask_0004..7 exist: they are not a gap
    rows = {row.filename: row for row in result.rows}
    assert len(rows) == len(paths)
    assert rows[paths["rgb"].name].status == "not_a_mask"
    assert rows[paths["rgb"].name].slice_index == 4  # still placed, so the viewer can jump to it
    assert rows[paths["text"].name].status == "unreadable"
    assert rows[paths["duplicate"].name].status == "duplicate"
    assert rows[paths["good_0"].name].status == "ok"
    assert rows[paths["no_index"].name].status == "no_index"
    assert rows[paths["not_png_extension"].name].status == "bad_filename"
    assert all(row.status in STATUS_ORDER for row in result.rows)
    first = result.first_problem_row()
    assert first is not None
    assert result.rows[first].status not in ("ok", "empty")


def test_bad_inputs_against_a_series_add_size_mismatch(tmp_path, series):
    paths = write_bad_masks(tmp_path, size=64)
    result = prepare(tmp_path, series=series, **GROUP)
    assert (paths["wrong_size"].name, "size_mismatch") in _codes(result)
    row = next(r for r in result.rows if r.filename == paths["wrong_size"].name)
    assert row.status == "size_mismatch"
    assert "64x72" in row.message
    assert not any(p.code == "missing_index" for p in result.problems)  # partial volume: a warning


def test_size_mismatch_and_out_of_range_index(tmp_path, series):
    _mask(tmp_path / "mask_0000.png", size=(32, 32))
    _mask(tmp_path / "mask_0001.png")
    _mask(tmp_path / "mask_0012.png")
    result = prepare(tmp_path, series=series, **GROUP)
    assert _codes(result) == {("mask_0000.png", "size_mismatch"), ("mask_0012.png", "no_matching_slice")}
    assert "outside the series (0..11)" in next(
        p.message for p in result.problems if p.code == "no_matching_slice"
    )


def test_empty_inputs(tmp_path):
    assert _codes(prepare(tmp_path, **GROUP)) == {(None, "empty_input")}
    assert _codes(prepare([], **GROUP)) == {(None, "empty_input")}


def test_hidden_files_are_ignored_and_subfolders_warned(tmp_path):
    _mask(tmp_path / "mask_0000.png")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "Thumbs.db").write_bytes(b"\x00")
    (tmp_path / "manifest.json").write_text("{}")  # the AI result folder's sidecar
    (tmp_path / "run.log").write_text("log")
    (tmp_path / "previews").mkdir()
    assert _codes(prepare(tmp_path, **GROUP)) == {("run.log", "bad_filename")}
    result = prepare(tmp_path, ignore_names=["RUN.log"], **GROUP)
    assert result.ok
    assert any("previews" in w for w in result.warnings)


def test_files_and_folders_mix_and_duplicate_names_are_caught(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _mask(a / "mask_0000.png")
    _mask(a / "mask_0001.png")
    _mask(b / "mask_0001.png")
    result = prepare([a, b / "mask_0001.png", tmp_path / "missing_0002.png"], **GROUP)
    codes = _codes(result)
    assert ("mask_0001.png", "duplicate_filename") in codes
    assert ("mask_0001.png", "duplicate_slice_index") in codes
    assert ("missing_0002.png", "not_found") in codes  # said as such, not as an unreadable file


def test_match_by_instance_number(tmp_path, series):
    _mask(tmp_path / "inst_12.png")
    _mask(tmp_path / "inst_1.png")
    _mask(tmp_path / "inst_40.png")
    result = prepare(tmp_path, series=series, match="instance_number", **GROUP)
    rows = {r.filename: r for r in result.rows}
    assert rows["inst_12.png"].slice_index == 0  # InstanceNumber 12 is the lowest slice
    assert rows["inst_1.png"].slice_index == 11
    assert rows["inst_40.png"].status == "no_matching_slice"
    assert _codes(result) == {("inst_40.png", "no_matching_slice")}

    without = prepare(tmp_path, match="instance_number", **GROUP)
    assert (None, "series_required") in _codes(without)


def test_match_by_sop_instance_uid(tmp_path, series):
    _mask(tmp_path / f"{series[4].sop_instance_uid}.png")
    _mask(tmp_path / f"seg_{series[9].sop_instance_uid}.png")
    for match in ("auto", "sop_uid"):
        result = prepare(tmp_path, series=series, match=match, **GROUP)
        assert result.ok, result.problems
        assert [(s.slice_index, s.sop_instance_uid) for s in result.plan.slices] == [
            (4, series[4].sop_instance_uid),
            (9, series[9].sop_instance_uid),
        ]

    _mask(tmp_path / "1.2.3.4.5.png")
    _mask(tmp_path / "mask_0003.png")
    strict = prepare(tmp_path, series=series, match="sop_uid", **GROUP)
    assert _codes(strict) == {("1.2.3.4.5.png", "no_matching_slice"), ("mask_0003.png", "no_matching_slice")}
    blind = prepare(tmp_path, **GROUP)  # no series: a UID cannot be turned into an index
    assert ("1.2.3.4.5.png", "no_index") in _codes(blind)


def test_multiframe_series_plans_frame_numbers(tmp_path):
    write_synthetic_enhanced_ct(tmp_path / "ct" / "enhanced.dcm", frames=6, size=32)
    series = load_series(tmp_path / "ct")
    masks = write_masks_for_series(series, tmp_path / "masks")
    assert len(masks) == 6
    result = prepare(tmp_path / "masks", series=series, **GROUP)
    assert result.ok, result.problems
    assert [s.frame_number for s in result.plan.slices] == [6, 5, 4, 3, 2, 1]
    assert len({s.sop_instance_uid for s in result.plan.slices}) == 1


def test_group_fields_are_all_checked_at_once(tmp_path):
    _mask(tmp_path / "mask_0000.png")
    result = prepare(
        tmp_path,
        annotation_id=0,
        model_name="",
        version="v\x01",
        source="robot",  # type: ignore[arg-type]
        confidence=1.5,
        params={"bad": {1, 2}},
    )
    invalid = [p.message for p in result.problems if p.code == "invalid_field"]
    assert len(invalid) == 6
    assert result.plan is None


def test_status_priority_shows_the_worst_problem(tmp_path, series):
    _mask(tmp_path / "bad name_0001.png", size=(10, 10))
    result = prepare(tmp_path, series=series, **GROUP)
    row = result.rows[0]
    assert row.status == "bad_filename"
    assert "10x10" in row.message  # the size problem is in the message too
    assert _codes(result) == {("bad name_0001.png", "bad_filename"), ("bad name_0001.png", "size_mismatch")}


def test_unopenable_series_is_a_problem_not_a_crash(tmp_path):
    _mask(tmp_path / "mask_0000.png")
    result = prepare(tmp_path, series=tmp_path / "no-such-series", **GROUP)
    assert (None, "series_error") in _codes(result)
    assert result.plan is None
