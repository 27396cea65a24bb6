"""The AI side against a real server subprocess: ``pacs-mask watch``, ``upload_inference_result`` and
``infer-demo``. Exactly once per result folder, across restarts and interruptions.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop.core.demo import threshold_model, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.inference import (
    DONE_MARKER,
    MANIFEST,
    InvalidResult,
    upload_inference_result,
    write_label_pngs,
    write_result_folder,
)
from pacs_mask_desktop.core.watch import FAILED_MARKER, UPLOADED_MARKER, Watcher
from server.contract.messages import GroupOut
from tests.live_server import LiveServer, Volume, assert_group_matches, copy_masks, journal_state


def label_arrays(count: int, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Label maps like a model's output: a blob (label 1) with a core (label 2) moving through the volume."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = []
    for i in range(count):
        cx, cy = size / 2 + 10 * np.sin(i / 3), size / 2 + rng.integers(-3, 4)
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        mask = np.zeros((size, size), np.uint8)
        mask[r2 < (size / 5) ** 2] = 1
        mask[r2 < (size / 12) ** 2] = 2
        if i % 5 == 0:
            mask[:] = 0  # slices with no finding happen
        masks.append(mask)
    return masks


def manifest(annotation: int, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "annotation_id": annotation,
        "model_name": "unet-liver",
        "version": version,
        "confidence": 0.87,
        "params": {"threshold": 0.5, "tta": True},
        **extra,
    }


class LogLines:
    """The watcher's JSON lines, parsed (each must be valid JSON with a timestamp and an event)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, line: str) -> None:
        record = json.loads(line)
        assert {"ts", "event"} <= set(record)
        self.records.append(record)

    def events(self) -> list[str]:
        return [r["event"] for r in self.records]


def watcher(server: LiveServer, inbox: Path, **kwargs: Any) -> tuple[Watcher, LogLines]:
    lines = LogLines()
    return Watcher(inbox, server=server.url, token=server.token, log=lines, **kwargs), lines


def groups(server: LiveServer, annotation: int) -> list[GroupOut]:
    with server.api() as api:
        return api.list_groups(annotation)


def marker_group(folder: Path) -> str:
    return json.loads((folder / UPLOADED_MARKER).read_text(encoding="utf-8"))["group_id"]


# --- the watch worker -----------------------------------------------------------------------------------


def test_two_result_folders_make_two_groups_and_restarts_make_no_duplicate(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    client_env()
    annotation = live_server.new_annotation()
    inbox = tmp_path / "inbox"
    a = write_result_folder(inbox / "result-a", label_arrays(12, seed=1), manifest(annotation, "1.0"))
    b = write_result_folder(inbox / "result-b", label_arrays(9, seed=2), manifest(annotation, "1.1"))

    first, lines = watcher(live_server, inbox)
    results = first.scan_once()
    assert [r.status for r in results] == ["complete", "complete"]
    assert (a / UPLOADED_MARKER).is_file()
    assert (b / UPLOADED_MARKER).is_file()
    found = {g.version: g for g in groups(live_server, annotation)}
    assert set(found) == {"1.0", "1.1"}
    assert {g.status for g in found.values()} == {"complete"}
    assert (found["1.0"].slice_count, found["1.1"].slice_count) == (12, 9)
    assert (marker_group(a), marker_group(b)) == (found["1.0"].id, found["1.1"].id)
    for g in found.values():  # inference metadata travels with the group
        assert (g.source, g.model_name, g.confidence) == ("ai", "unet-liver", 0.87)
        assert g.params == {"threshold": 0.5, "tta": True}
    assert_group_matches(live_server, found["1.0"].id, sorted(a.glob("*.png")))
    assert lines.events().count("upload.complete") == 2
    assert lines.events().count("group.opened") == 2

    # Restart: a new worker sees both folders marked and does nothing.
    second, lines = watcher(live_server, inbox)
    assert second.pending_folders() == []
    assert second.scan_once() == []
    assert lines.records == []

    # A crash after the group completed but before the marker was written: the next worker finds the
    # group complete (journal) and marks the folder, sending nothing and creating nothing.
    (a / UPLOADED_MARKER).unlink()
    third, lines = watcher(live_server, inbox)
    (result,) = third.scan_once()
    assert (result.status, result.group_id, result.uploaded) == ("complete", found["1.0"].id, 0)
    assert marker_group(a) == found["1.0"].id

    # The same on another machine (no journal at all): the server's 409 leads to the same group.
    client_env()  # a fresh, empty client data dir
    (b / UPLOADED_MARKER).unlink()
    fourth, lines = watcher(live_server, inbox)
    (result,) = fourth.scan_once()
    assert (result.status, result.group_id, result.uploaded) == ("complete", found["1.1"].id, 0)
    assert len(groups(live_server, annotation)) == 2


def test_a_folder_without_done_is_left_alone_until_it_is_finished(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    client_env()
    annotation = live_server.new_annotation()
    inbox = tmp_path / "inbox"
    folder = inbox / "still-writing"
    write_label_pngs(label_arrays(6), folder)
    (folder / MANIFEST).write_text(json.dumps(manifest(annotation, "2.0")), encoding="utf-8")
    w, lines = watcher(live_server, inbox)
    assert w.scan_once() == []
    assert lines.records == []
    assert groups(live_server, annotation) == []
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # untouched
    (folder / DONE_MARKER).touch()  # the inference server finished writing
    (result,) = w.scan_once()
    assert result.ok
    assert marker_group(folder) == result.group_id
    assert [g.slice_count for g in groups(live_server, annotation)] == [6]


def test_an_invalid_manifest_is_marked_failed_with_the_reason(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    client_env()
    annotation = live_server.new_annotation()
    inbox = tmp_path / "inbox"
    broken = write_result_folder(
        inbox / "broken", label_arrays(3), {"model_name": "", "version": 3, "confidence": 7}
    )
    garbled = write_result_folder(inbox / "garbled", label_arrays(3), {})
    (garbled / MANIFEST).write_text("{not json", encoding="utf-8")
    missing = write_result_folder(inbox / "missing", label_arrays(3), {})
    (missing / MANIFEST).unlink()
    bad_masks = write_result_folder(inbox / "rgb", label_arrays(3), manifest(annotation, "3.0"))
    Image.new("RGB", (96, 96), (9, 9, 9)).save(bad_masks / "mask_0003.png")

    w, lines = watcher(live_server, inbox)
    results = w.scan_once()
    assert [r.status for r in results] == ["invalid"] * 4
    reason = json.loads((broken / FAILED_MARKER).read_text(encoding="utf-8"))["problems"][0]
    assert reason["code"] == "bad_manifest"
    for words in ("annotation_id must be an integer", "model_name must be a non-empty string",
                  "version must be a non-empty string", "confidence must be a number from 0 to 1"):  # fmt: skip
        assert words in reason["message"]
    assert "not valid JSON" in (garbled / FAILED_MARKER).read_text(encoding="utf-8")
    assert "manifest.json is missing" in (missing / FAILED_MARKER).read_text(encoding="utf-8")
    problems = json.loads((bad_masks / FAILED_MARKER).read_text(encoding="utf-8"))["problems"]
    assert [(p["filename"], p["code"]) for p in problems] == [("mask_0003.png", "not_a_mask")]
    assert lines.events().count("result.invalid") == 4
    assert groups(live_server, annotation) == []
    # A failed folder is not retried by the next scan (a person has to look at it).
    assert w.scan_once() == []


def test_a_result_reusing_a_version_with_other_masks_is_marked_failed_not_retried(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    client_env()
    annotation = live_server.new_annotation()
    inbox = tmp_path / "inbox"
    first = write_result_folder(inbox / "first", label_arrays(5, seed=1), manifest(annotation, "6.0"))
    w, _lines = watcher(live_server, inbox)
    assert w.scan_once()[0].ok
    second = write_result_folder(inbox / "second", label_arrays(5, seed=2), manifest(annotation, "6.0"))
    (result,) = w.scan_once()
    assert (result.ok, result.error_code) == (False, "duplicate_group")
    (problem,) = json.loads((second / FAILED_MARKER).read_text(encoding="utf-8"))["problems"]
    assert problem["code"] == "duplicate_group"
    assert marker_group(first) in problem["message"]
    assert w.scan_once() == []  # not retried on every scan
    assert [g.slice_count for g in groups(live_server, annotation)] == [5]


def test_archive_moves_uploaded_folders(live_server: LiveServer, tmp_path: Path, client_env: Any) -> None:
    client_env()
    annotation = live_server.new_annotation()
    inbox, archive = tmp_path / "inbox", tmp_path / "archive"
    write_result_folder(inbox / "r1", label_arrays(4), manifest(annotation, "4.0"))
    w, lines = watcher(live_server, inbox, archive=archive)
    (result,) = w.scan_once()
    assert result.ok
    assert not (inbox / "r1").exists()
    assert marker_group(archive / "r1") == result.group_id
    assert "result.archived" in lines.events()


def test_watch_killed_mid_upload_then_restarted_completes_the_same_group(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """``pacs-mask watch`` (a real process) is killed mid-upload; the next one finishes the same group."""
    server = live_server_factory("local", proxy=True)
    env = client_env(server)
    annotation = server.new_annotation()
    inbox = tmp_path / "inbox"
    folder = inbox / "big-result"
    files = copy_masks(ct_1000, folder, 300, 240)
    (folder / MANIFEST).write_text(json.dumps(manifest(annotation, "5.0")), encoding="utf-8")
    (folder / DONE_MARKER).touch()
    args = [sys.executable, "-m", "pacs_mask_desktop.cli", "watch", str(inbox), "--once"]
    assert server.proxy is not None
    server.proxy.configure(delay=0.05)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server.proxy.wait_for_ok_puts(60, timeout=60)
        proc.kill()  # SIGKILL on POSIX: no clean-up of any kind
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    server.proxy.wait_idle()
    first = set(server.proxy.stats.ok_puts)
    assert 60 <= len(first) < 240
    assert not (folder / UPLOADED_MARKER).exists()
    assert not (folder / FAILED_MARKER).exists()
    (pending,) = groups(server, annotation)
    assert pending.status == "pending"
    journaled_group, landed = journal_state(Path(env["PACS_MASK_DATA_DIR"]))
    assert journaled_group == pending.id
    assert landed <= {p.rsplit("/", 1)[-1] for p in first}

    server.proxy.configure()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    events = [r["event"] for r in records]
    assert events[:3] == ["result.found", "upload.started", "group.resumed"]
    assert events[-1] == "upload.complete"
    complete = records[-1]
    assert complete["group_id"] == pending.id
    assert complete["sent"] + complete["skipped"] == 240
    assert complete["skipped"] == len(landed)  # what landed and was journaled is not sent again
    second = server.proxy.stats.ok_puts
    assert set(second.values()) == {1}
    assert {p.rsplit("/", 1)[-1] for p in second} == {f.name for f in files} - landed
    assert marker_group(folder) == pending.id
    assert_group_matches(server, pending.id, files)


# --- the in-process API and the demo model --------------------------------------------------------------


def test_upload_inference_result_with_numpy_arrays(live_server: LiveServer, client_env: Any) -> None:
    client_env(live_server)  # server and token from PACS_MASK_SERVER / PACS_MASK_TOKEN
    annotation = live_server.new_annotation()
    arrays = label_arrays(15, size=128, seed=7)
    arrays[7] = arrays[7].astype(np.uint16) * 300  # labels above 255 need a 16-bit PNG
    result = upload_inference_result(
        arrays, annotation_id=annotation, model_name="nnunet", version="2024.1", confidence=0.93,
        params={"fold": 3, "checkpoint": "best"},
    )  # fmt: skip
    assert result.ok, result.message
    (group,) = groups(live_server, annotation)
    assert (group.id, group.source, group.model_name, group.version) == (
        result.group_id, "ai", "nnunet", "2024.1"
    )  # fmt: skip
    assert (group.confidence, group.params, group.slice_count) == (
        0.93,
        {"fold": 3, "checkpoint": "best"},
        15,
    )
    with live_server.api() as api:
        items = sorted(api.group_with_slices(result.group_id).items, key=lambda m: m.slice_index)
        assert [m.slice_index for m in items] == list(range(15))
        for m, array in zip(items, arrays, strict=True):
            stored = np.asarray(Image.open(io.BytesIO(api.view(result.group_id, filename=m.filename))))
            assert np.array_equal(stored, array), m.filename
            labels = sorted({int(v) for v in np.unique(array) if v})
            assert (m.label or "") == ",".join(map(str, labels))
    # Running it again is a no-op on the same group, never a second one.
    again = upload_inference_result(
        arrays, annotation_id=annotation, model_name="nnunet", version="2024.1", confidence=0.93,
        params={"fold": 3, "checkpoint": "best"},
    )  # fmt: skip
    assert (again.status, again.group_id, again.uploaded) == ("complete", result.group_id, 0)
    assert len(groups(live_server, annotation)) == 1


def test_upload_inference_result_refuses_masks_that_do_not_fit_the_series(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    client_env(live_server)
    write_synthetic_ct(tmp_path / "series", slices=4, size=64, seed=1)
    annotation = live_server.new_annotation(series=tmp_path / "series")
    with pytest.raises(InvalidResult) as caught:
        upload_inference_result(
            label_arrays(4, size=48), annotation_id=annotation, model_name="m", version="1",
            series=tmp_path / "series",
        )  # fmt: skip
    assert {p.code for p in caught.value.problems} == {"size_mismatch"}
    assert len(caught.value.problems) == 4
    assert "4 problem(s)" in str(caught.value)
    assert groups(live_server, annotation) == []


def test_infer_demo_end_to_end_and_groups_shows_the_inference_metadata(
    live_server: LiveServer, tmp_path: Path, client_env: Any
) -> None:
    env = client_env(live_server)
    write_synthetic_ct(tmp_path / "series", slices=40, size=128, seed=9)
    annotation = live_server.new_annotation(series=tmp_path / "series")
    keep = tmp_path / "kept"
    run = subprocess.run(
        [sys.executable, "-m", "pacs_mask_desktop.cli", "infer-demo", "--annotation", str(annotation),
         "--series", str(tmp_path / "series"), "--version", "0.9", "--keep", str(keep), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["status"], summary["uploaded"]) == ("complete", 40)
    group = summary["group"]
    assert (group["model_name"], group["version"], group["source"]) == ("demo-threshold", "0.9", "ai")
    assert 0.5 < group["confidence"] <= 1.0
    assert group["params"]["method"] == "hu-threshold+largest-component"
    # What was uploaded is what the model produces for this series, bound to its slices.
    model = threshold_model(load_series(tmp_path / "series"))
    assert group["confidence"] == pytest.approx(model.confidence, abs=1e-4)
    found = assert_group_matches(live_server, summary["group_id"], sorted(keep.glob("*.png")))
    series = load_series(tmp_path / "series")
    for m in found.items:
        assert m.sop_instance_uid == series[m.slice_index].sop_instance_uid
    assert 0 < sum(1 for m in found.items if m.label) < 40
    assert json.loads((keep / MANIFEST).read_text(encoding="utf-8"))["model_name"] == "demo-threshold"

    table = subprocess.run(
        [sys.executable, "-m", "pacs_mask_desktop.cli", "groups", "--annotation", str(annotation)],
        env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if summary["group_id"] in line)
    for cell in ("demo-threshold", "0.9", "ai", "complete", "40", f"{group['confidence']:.3f}"):
        assert cell in row, row
    shutil.rmtree(keep)
