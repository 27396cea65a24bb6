"""``pacs-mask`` end to end against a real server subprocess: 1000 slices on both backends, a killed and
a cancelled client resuming, bad inputs refused before anything is sent, and the read/delete commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pacs_mask_desktop import cli
from pacs_mask_desktop.core.demo import write_bad_masks, write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.dicom_series import load_series
from pacs_mask_desktop.core.paths import data_dir
from tests.faultproxy import FaultProxy
from tests.live_server import (
    LiveServer,
    Volume,
    assert_group_matches,
    copy_masks,
    journal_state,
    md5_hex,
    start_server,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Any:
    """``cli.main`` in-process installs its Ctrl+C handler; give pytest its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m pacs_mask_desktop.cli ARGS`` as a script would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pacs_mask_desktop.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pacs_mask_desktop.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# --- 1000 slices of 512x512 -------------------------------------------------------------------------------


def _check_1000(server: LiveServer, volume: Volume, group_id: str) -> None:
    found = assert_group_matches(server, group_id, volume.mask_paths(), view_sample=20)
    series = load_series(volume.series)
    items = sorted(found.items, key=lambda m: m.slice_index)
    assert [m.slice_index for m in items] == list(range(1000))
    for m in items[::97]:  # bound to the right DICOM slice, with the right geometry and labels
        assert m.sop_instance_uid == series[m.slice_index].sop_instance_uid
        assert m.filename == f"mask_{m.slice_index:04d}.png"
        assert (m.width, m.height) == (512, 512)
    labelled = [m for m in items if m.label]
    assert 0 < len(labelled) < 1000  # realistic: liver on some slices, empty elsewhere
    assert {m.label for m in labelled} <= {"1", "1,2"}


def test_1000_slices_upload_to_the_embedded_server_with_a_readable_progress_bar(
    live_server: LiveServer, ct_1000: Volume, client_env: Callable[..., dict[str, str]]
) -> None:
    env = client_env(live_server)
    annotation = live_server.new_annotation("1000 slices local", ct_1000.series)
    # A terminal is what people watch the bar on; rich draws it when told the stream is one.
    env.update({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "TERM": "xterm-256color", "COLUMNS": "150"})
    done = run_cli(
        ["upload", "--annotation", str(annotation), "--model", "unet-liver", "--version", "1.3", "--source", "ai",
         "--series", str(ct_1000.series), str(ct_1000.masks)],
        env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    group_id = done.stdout.strip()
    err = ANSI.sub("", done.stderr).replace("\r", "\n")
    bar = [line for line in err.splitlines() if line.strip().startswith("upload")]
    assert bar, err
    final = bar[-1]
    assert "1000/1000" in final
    assert "slices/s" in final
    assert re.search(r"\d+\.\d (KB|MB)/\d+\.\d (KB|MB)", final), final
    assert f"complete: 1000 slices registered in group {group_id}." in err
    assert re.search(
        r"sent 1000, already there 0, failed 0; [\d.]+ (KB|MB) in [\d.]+ s \(\d+ slices/s\)", err
    ), err
    _check_1000(live_server, ct_1000, group_id)


@pytest.mark.s3
def test_1000_slices_upload_to_rclone_s3_with_a_json_and_a_plain_summary(
    live_server_s3: LiveServer, ct_1000: Volume, client_env: Callable[..., dict[str, str]]
) -> None:
    env = client_env(live_server_s3)
    annotation = live_server_s3.new_annotation("1000 slices s3", ct_1000.series)
    done = run_cli(
        ["upload", "--annotation", str(annotation), "--model", "unet-liver", "--version", "1.3", "--source", "ai",
         "--series", str(ct_1000.series), "--json", str(ct_1000.masks)],
        env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "complete"
    assert (summary["uploaded"], summary["skipped"], summary["failed"]) == (1000, 0, [])
    assert summary["bytes_sent"] == sum(p.stat().st_size for p in ct_1000.mask_paths())
    assert summary["group"]["slice_count"] == 1000
    _check_1000(live_server_s3, ct_1000, summary["group_id"])
    # Run again: nothing is sent, the same group is reported, in the plain (non-terminal) format.
    again = run_cli(
        ["upload", "--annotation", str(annotation), "--model", "unet-liver", "--version", "1.3", "--source", "ai",
         str(ct_1000.masks)],
        env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == summary["group_id"]
    assert "complete: This group was already complete on the server; nothing was sent." in again.stderr
    assert "sent 0, already there 1000, failed 0" in again.stderr


# --- interrupted clients --------------------------------------------------------------------------------


def _interrupt_and_resume(
    server: LiveServer, volume: Volume, tmp_path: Path, env: dict[str, str], interrupt: Callable[[Any], None]
) -> tuple[subprocess.Popen[str], set[str], set[str], dict[str, Any]]:
    """Upload 300 slices through a slow proxy, interrupt after 80 landed, run again; return the facts."""
    assert server.proxy is not None
    files = copy_masks(volume, tmp_path / "masks", 300, 300)
    names = {f.name for f in files}
    annotation = server.new_annotation("interrupted")
    args = ["upload", "--annotation", str(annotation), "--model", "unet", "--version", "1", "--workers", "8",
            str(tmp_path / "masks")]  # fmt: skip
    server.proxy.configure(delay=0.05)
    proc = start_cli(args, env)
    try:
        server.proxy.wait_for_ok_puts(80, timeout=60)
        interrupt(proc)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    server.proxy.wait_idle()  # PUTs the proxy was still holding have reached storage by now
    first = dict(server.proxy.stats.ok_puts)
    first_names = {p.rsplit("/", 1)[-1] for p in first}
    assert set(first.values()) == {1}
    assert 80 <= len(first) < 300  # it really stopped mid-way
    group_id, landed = journal_state(Path(env["PACS_MASK_DATA_DIR"]))
    assert landed <= first_names  # the journal never claims a slice storage did not get
    assert len(first_names - landed) <= 8  # at most one in flight per worker was not yet journaled
    with server.api() as api:
        assert [g.status for g in api.list_groups(annotation)] == ["pending"]

    server.proxy.configure()  # fast again, counters at zero
    rerun = run_cli([*args, "--json"], env)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["group_id"] == group_id  # the same group, resumed
    assert (summary["uploaded"], summary["skipped"]) == (300 - len(landed), len(landed))
    second = server.proxy.stats.ok_puts
    assert set(second.values()) == {1}
    assert {p.rsplit("/", 1)[-1] for p in second} == names - landed  # exactly what was not journaled
    assert_group_matches(server, group_id, files)
    return proc, landed, first_names, summary


def test_a_killed_client_resumes_the_same_group_and_sends_only_what_did_not_land(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Callable[..., dict[str, str]]
) -> None:
    server = live_server_factory("local", proxy=True)
    env = client_env(server)
    proc, _landed, _first, _summary = _interrupt_and_resume(
        server,
        ct_1000,
        tmp_path,
        env,
        lambda p: p.kill(),  # SIGKILL: no clean-up of any kind
    )
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_cancels_cleanly_with_exit_130_and_a_rerun_resumes(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Callable[..., dict[str, str]]
) -> None:
    server = live_server_factory("local", proxy=True)
    env = client_env(server)
    proc, landed, first, _summary = _interrupt_and_resume(
        server, ct_1000, tmp_path, env, lambda p: p.send_signal(signal.SIGINT)
    )
    assert proc.returncode == cli.EXIT_CANCELLED
    assert "cancelled" in proc.stderr.read()  # type: ignore[union-attr]
    assert landed == first  # a clean cancel journals every PUT that landed


# --- bad inputs: every problem listed, nothing sent ------------------------------------------------------


def _no_group(server: LiveServer, annotation: int) -> None:
    with server.api() as api:
        assert api.list_groups(annotation) == []
        assert not [r for r in api.audit(annotation_id=annotation) if r.action.startswith("group.")]
    assert server.stored_keys(f"mask/{annotation}/") == []


def _json_problems(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "invalid"
    return out["problems"]


def _upload(server: LiveServer, annotation: int, *paths: Path | str, extra: tuple[str, ...] = ()) -> int:
    return cli.main(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--json", *extra,
         *map(str, paths)]
    )  # fmt: skip


def _small_masks(folder: Path, indexes: range | list[int], size: tuple[int, int] = (64, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in indexes:
        mask = np.zeros((size[1], size[0]), dtype=np.uint8)
        mask[10:30, 10 + i : 30 + i] = 1
        Image.fromarray(mask, mode="L").save(folder / f"mask_{i:04d}.png")


def test_every_bad_input_is_listed_at_once_and_nothing_is_sent(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    bad = write_bad_masks(tmp_path / "bad")
    assert _upload(live_server, annotation, tmp_path / "bad") == cli.EXIT_BAD_INPUT
    problems = _json_problems(capsys)
    by_file: dict[str | None, set[str]] = {}
    for p in problems:
        assert p["message"]
        by_file.setdefault(p["filename"], set()).add(p["code"])
    assert "not_a_mask" in by_file[bad["rgb"].name]  # RGB colour image
    assert "not_a_mask" in by_file[bad["rgba"].name]
    assert "unreadable" in by_file[bad["text"].name]  # a text file named .png: not an image at all
    assert "not_a_mask" in by_file[bad["jpeg"].name]  # JPEG bytes named .png
    assert "bad_filename" in by_file[bad["not_png_extension"].name]  # a non-image file in the folder
    assert "duplicate_slice_index" in by_file[bad["duplicate"].name]  # slice 1 twice
    assert "duplicate_slice_index" in by_file[bad["good_1"].name]
    assert "bad_filename" in by_file[bad["bad_filename"].name]
    assert "no_index" in by_file[bad["no_index"].name]
    assert "missing_index" in by_file[None]  # the gap
    assert len(by_file) >= 10
    _no_group(live_server, annotation)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("rgb", "not_a_mask"),
        ("non_image", "unreadable"),
        ("size_differs_from_series", "size_mismatch"),
        ("duplicate_slice_index", "duplicate_slice_index"),
        ("gap", "missing_index"),
        ("empty_folder", "empty_input"),
    ],
)
def test_each_kind_of_bad_input_is_refused_before_upload(
    case: str,
    code: str,
    live_server: LiveServer,
    tmp_path: Path,
    client_env: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    folder = tmp_path / "masks"
    extra: tuple[str, ...] = ()
    if case == "size_differs_from_series":
        write_synthetic_ct(tmp_path / "series", slices=6, size=64, seed=5)
        write_masks_for_series(tmp_path / "series", folder)
        _small_masks(folder, [2], size=(64, 72))  # replaces mask_0002.png with a taller one
        extra = ("--series", str(tmp_path / "series"))
    else:
        _small_masks(folder, range(4) if case != "empty_folder" else [])
        if case == "empty_folder":
            folder.mkdir(exist_ok=True)
        elif case == "rgb":
            Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "mask_0004.png")
        elif case == "non_image":
            (folder / "mask_0004.png").write_bytes(b"%PDF-1.4 not an image\n")
        elif case == "duplicate_slice_index":
            _small_masks(folder / "more", [2])
            (folder / "more" / "mask_0002.png").rename(folder / "slice-0002.png")
            (folder / "more").rmdir()
        elif case == "gap":
            (folder / "mask_0002.png").unlink()
    assert _upload(live_server, annotation, folder, extra=extra) == cli.EXIT_BAD_INPUT
    problems = _json_problems(capsys)
    assert code in {p["code"] for p in problems}, problems
    _no_group(live_server, annotation)


def test_unknown_annotation_is_refused_with_a_clear_message(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    _small_masks(tmp_path / "masks", range(3))
    code = cli.main(
        ["upload", "--annotation", "987654", "--model", "m", "--version", "1", str(tmp_path / "masks")]
    )
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Annotation 987654 does not exist" in err
    assert live_server.url in err.replace("\n", "")
    with live_server.api() as api:
        assert api.audit(annotation_id=987654) == []


def test_bad_input_in_a_plain_terminal_is_a_table_of_every_problem(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    _small_masks(tmp_path / "masks", [0, 1, 3])
    Image.new("RGB", (64, 64)).save(tmp_path / "masks" / "mask_0004.png")
    code = cli.main(
        ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", str(tmp_path / "masks")]
    )
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "2 problem(s) — nothing was sent" in err
    assert "mask_0004.png" in err
    assert "missing_index" in err
    _no_group(live_server, annotation)


def test_reusing_a_version_for_other_masks_exits_3_with_the_reason(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    _small_masks(tmp_path / "masks", range(4))
    args = [
        "upload",
        "--annotation",
        str(annotation),
        "--model",
        "m",
        "--version",
        "1",
        str(tmp_path / "masks"),
    ]
    assert cli.main(args) == cli.EXIT_OK
    group_id = capsys.readouterr().out.strip()
    _small_masks(tmp_path / "masks", [4])  # one more slice: other content under the same version
    assert cli.main(args) == cli.EXIT_SERVER
    err = capsys.readouterr().err.replace("\n", " ")
    assert group_id in err
    assert "differ" in err
    assert cli.main([*args, "--json"]) == cli.EXIT_SERVER
    assert json.loads(capsys.readouterr().out)["error"] == "duplicate_group"
    with live_server.api() as api:
        (group,) = api.list_groups(annotation)
    assert (group.id, group.slice_count) == (group_id, 4)


def test_no_token_is_a_clear_error(
    tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env()
    code = cli.main(["groups", "--annotation", "1", "--server", "http://127.0.0.1:9"])
    assert code == cli.EXIT_SERVER
    assert "No API token" in capsys.readouterr().err


def test_unreachable_server_exits_3(
    tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env()
    code = cli.main(
        ["groups", "--annotation", "1", "--server", "http://127.0.0.1:9", "--token", "x", "--json"]
    )
    assert code == cli.EXIT_SERVER
    captured = capsys.readouterr()
    assert "Cannot reach the server" in captured.err
    assert json.loads(captured.out)["error"] == "unreachable"


# --- read, download, delete ------------------------------------------------------------------------------


def test_groups_slices_download_and_delete(
    live_server: LiveServer,
    ct_1000: Volume,
    tmp_path: Path,
    client_env: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    files = copy_masks(ct_1000, tmp_path / "masks", 380, 25)
    code = cli.main(
        ["upload", "--annotation", str(annotation), "--model", "seg", "--version", "2", "--source", "ai",
         "--confidence", "0.91", "--params", '{"threshold": 0.5}', "--json", str(tmp_path / "masks")]
    )  # fmt: skip
    assert code == cli.EXIT_OK
    group_id = json.loads(capsys.readouterr().out)["group_id"]

    assert cli.main(["groups", "--annotation", str(annotation), "--json"]) == cli.EXIT_OK
    (group,) = json.loads(capsys.readouterr().out)["items"]
    assert (group["id"], group["model_name"], group["version"], group["source"]) == (
        group_id,
        "seg",
        "2",
        "ai",
    )
    assert (group["confidence"], group["params"], group["slice_count"]) == (0.91, {"threshold": 0.5}, 25)

    assert cli.main(["groups", "--annotation", str(annotation)]) == cli.EXIT_OK
    table = capsys.readouterr().out
    assert "seg" in table
    assert "0.910" in table

    assert cli.main(["slices", group_id, "--json"]) == cli.EXIT_OK
    items = json.loads(capsys.readouterr().out)["items"]
    assert sorted(m["filename"] for m in items) == sorted(f.name for f in files)

    target = tmp_path / "downloaded"
    assert cli.main(["download", group_id, str(target), "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["downloaded"] == 25
    for f in files:
        assert md5_hex((target / f.name).read_bytes()) == md5_hex(f.read_bytes())

    assert cli.main(["delete", group_id, "--yes", "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["deleted_slices"] == 25
    with live_server.api() as api:
        assert api.list_groups(annotation) == []
    assert live_server.stored_keys(f"mask/{annotation}/") == []


def test_the_client_journal_lives_in_the_test_data_dir(client_env: Any, tmp_path: Path) -> None:
    """Guard for the suite itself: no test writes the developer's real journal."""
    client_env()
    assert data_dir() == tmp_path / "client-data"
    assert os.environ["PACS_MASK_DATA_DIR"] == str(tmp_path / "client-data")


def test_common_options_work_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``pacs-mask --json --server URL --token T groups …`` means the same as putting them after ``groups``."""
    from pacs_mask_desktop.cli import main

    code = main(["--json", "--server", "http://127.0.0.1:9", "--token", "t", "groups", "--annotation", "1"])
    assert code == 3
    report = json.loads(capsys.readouterr().out)
    assert report["error"] == "unreachable"
    assert "127.0.0.1:9" in report["message"]


# --- a server that stays down, a failed complete (issue 11, defects 5 and 7) -------------------------------


def test_a_server_that_dies_and_stays_down_is_given_up_on_keeping_the_journal_and_the_resume_command(
    ct_1000: Volume, tmp_path: Path, client_env: Callable[..., dict[str, str]]
) -> None:
    server = start_server(tmp_path / "server", proxy=True)  # its own server: this test kills it
    proc: subprocess.Popen[str] | None = None
    try:
        assert server.proxy is not None
        env = client_env(server)
        copy_masks(ct_1000, tmp_path / "masks", 0, 200)
        annotation = server.new_annotation("server dies")
        args = ["upload", "--annotation", str(annotation), "--model", "unet", "--version", "1",
                "--workers", "4", "--give-up-after", "3", str(tmp_path / "masks")]  # fmt: skip
        server.proxy.configure(delay=0.05)  # slow storage, so the server dies mid-upload
        proc = start_cli(args, env)
        server.proxy.wait_for_ok_puts(20, timeout=60)
        server.proc.kill()  # the server dies ...
    finally:
        server.stop()  # ... and its storage (the proxy) with it, for good
    out, err = proc.communicate(timeout=180)  # the guard only: it must end by itself, within the budget
    err = ANSI.sub("", err)
    assert proc.returncode == cli.EXIT_SERVER, err
    assert "Gave up: the server or storage did not answer for 3 s." in err.replace("\n", " ")
    group_id, landed = journal_state(Path(env["PACS_MASK_DATA_DIR"]))  # the journal is kept ...
    assert 20 <= len(landed) < 200
    assert out.strip() == group_id
    assert f"sent {len(landed)}, already there 0" in err  # ... and says exactly what landed
    assert "To resume, run the same command again:" in err
    assert "pacs-mask " + shlex.join(args) in err.splitlines()  # the exact command, on one line


def test_a_failed_complete_reports_the_slices_that_landed_and_the_same_command_registers_them(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env()
    annotation = live_server.new_annotation()
    _small_masks(tmp_path / "masks", range(6))
    total = sum(p.stat().st_size for p in (tmp_path / "masks").iterdir())
    # The API goes through the proxy, which answers every `complete` 503; the PUTs go to storage directly.
    with FaultProxy(live_server.url) as api_proxy:
        api_proxy.configure(
            fault_methods={"POST"}, fault_path_suffix="/complete", fail=1.0, max_faults_per_path=99
        )
        args = ["upload", "--annotation", str(annotation), "--model", "m", "--version", "1", "--json",
                "--server", api_proxy.url, f"--token={live_server.token}", "--give-up-after", "2",
                str(tmp_path / "masks")]  # fmt: skip
        assert cli.main(args) == cli.EXIT_SERVER
        summary = json.loads(capsys.readouterr().out)
        assert summary["status"] == "incomplete"
        assert (summary["uploaded"], summary["skipped"], summary["bytes_sent"]) == (6, 0, total)
        group_id = summary["group_id"]
        assert len(live_server.stored_keys(f"mask/{annotation}/{group_id}/")) == 6  # they did land
        shown = [("--token=***" if a == f"--token={live_server.token}" else a) for a in args]
        assert summary["resume_command"] == "pacs-mask " + shlex.join(shown)  # no token in a log
        api_proxy.configure()  # the server answers again
        assert cli.main(args) == cli.EXIT_OK
        again = json.loads(capsys.readouterr().out)
    assert (again["status"], again["group_id"]) == ("complete", group_id)
    assert (again["uploaded"], again["skipped"]) == (0, 6)  # registered without sending them again
    assert_group_matches(live_server, group_id, sorted((tmp_path / "masks").iterdir()))


# --- a new user's trial (issue 11, defect 9) ----------------------------------------------------------------


def test_annotations_create_on_a_folder_without_dicom_or_a_missing_one_exits_2_with_a_clear_message(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    (tmp_path / "no-dicom").mkdir()
    (tmp_path / "no-dicom" / "notes.txt").write_text("not DICOM\n", encoding="utf-8")
    assert cli.main(["annotations", "--create", str(tmp_path / "no-dicom")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.replace("\n", "")
    assert "Cannot create an annotation: no DICOM image files in" in err
    assert "Traceback" not in err
    assert cli.main(["annotations", "--create", str(tmp_path / "typo")]) == cli.EXIT_BAD_INPUT
    assert "typo does not exist" in capsys.readouterr().err.replace("\n", "")


def test_annotations_create_prints_the_id_alone_on_stdout(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    write_synthetic_ct(tmp_path / "series", slices=3, size=32, seed=9051)
    code = cli.main(["annotations", "--create", str(tmp_path / "series"), "--description", "trial"])
    assert code == cli.EXIT_OK
    captured = capsys.readouterr()
    assert re.fullmatch(r"\d+\n", captured.out), captured.out  # ID=$(pacs-mask annotations --create …)
    assert f"created annotation {captured.out.strip()}" in captured.err
    with live_server.api() as api:
        row = api.get_annotation(int(captured.out))
    assert row.series_instance_uid == load_series(tmp_path / "series").series_instance_uid


def test_a_mask_path_that_does_not_exist_is_reported_as_missing(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    assert _upload(live_server, annotation, tmp_path / "maks") == cli.EXIT_BAD_INPUT
    (problem,) = _json_problems(capsys)
    assert (problem["filename"], problem["code"]) == ("maks", "not_found")
    assert problem["message"] == f"{tmp_path / 'maks'} does not exist"
    _no_group(live_server, annotation)


def test_download_never_overwrites_a_different_file_silently(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation()
    _small_masks(tmp_path / "masks", range(4))
    assert _upload(live_server, annotation, tmp_path / "masks") == cli.EXIT_OK
    group_id = json.loads(capsys.readouterr().out)["group_id"]
    target = tmp_path / "out"
    target.mkdir()
    (target / "mask_0000.png").write_bytes((tmp_path / "masks" / "mask_0000.png").read_bytes())  # identical
    (target / "mask_0001.png").write_bytes(b"someone else's file")
    assert cli.main(["download", group_id, str(target)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.replace("\n", "")
    assert "mask_0001.png" in err
    assert "--overwrite" in err
    assert (target / "mask_0001.png").read_bytes() == b"someone else's file"
    assert sorted(p.name for p in target.iterdir()) == ["mask_0000.png", "mask_0001.png"]  # nothing fetched
    assert cli.main(["download", group_id, str(target), "--overwrite", "--json"]) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert (report["downloaded"], report["already_there"]) == (3, 1)
    for name in ("mask_0000.png", "mask_0001.png", "mask_0002.png", "mask_0003.png"):
        assert (target / name).read_bytes() == (tmp_path / "masks" / name).read_bytes()
    assert cli.main(["download", group_id, str(target)]) == cli.EXIT_OK  # identical files: fine


def test_an_unknown_annotation_or_group_exits_2_from_every_command(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    assert cli.main(["groups", "--annotation", "987654"]) == cli.EXIT_BAD_INPUT
    assert "Annotation 987654 does not exist" in capsys.readouterr().err
    assert cli.main(["slices", "0b0c9a6e-5f5e-4c0e-9a55-000000000000"]) == cli.EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    _small_masks(tmp_path / "masks", range(2))
    assert _upload(live_server, 987654, tmp_path / "masks") == cli.EXIT_BAD_INPUT


def test_infer_demo_checks_the_annotation_before_running_the_model(
    live_server: LiveServer, tmp_path: Path, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    write_synthetic_ct(tmp_path / "series", slices=3, size=32, seed=9052)
    code = cli.main(["infer-demo", "--annotation", "987654", "--series", str(tmp_path / "series")])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Annotation 987654 does not exist" in err
    assert "demo model" not in err  # it never ran
    with live_server.api() as api:
        assert api.audit(annotation_id=987654) == []


def test_give_up_after_must_be_a_positive_number(client_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    client_env()
    with pytest.raises(SystemExit) as exited:
        cli.main(["groups", "--annotation", "1", "--give-up-after", "0"])
    assert exited.value.code == cli.EXIT_BAD_INPUT
    assert "not a positive number of seconds" in capsys.readouterr().err
