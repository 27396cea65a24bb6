"""10,000 slices of 512x512 through the ``pacs-mask upload`` process, against rclone and s5cmd, in one run.

What a whole-body CT at 0.6 mm (2000-3000 slices) or an inference server sending volume after volume
asks of the client. Measured on this machine, interleaved round by round so background noise hits
every contender alike:

- ``pacs-mask upload`` as a process (start-up, imports, header checks, journal, sign, PUT with the
  pixel check beside it, complete) on the embedded server (SQLite, local storage) and on S3 (the
  server configured for ``rclone serve s3``): wall time, the client's CPU seconds and peak RSS
  (target <= 300 MB), and the server's peak RSS (``VmHWM`` of the server process, and of ``rclone
  serve s3`` for S3) after all rounds;
- ``rclone copy --transfers 16`` and ``s5cmd cp`` of the same 10,000 files to the same ``rclone serve s3``;
- the same ``pacs-mask upload`` process with 1000 of those slices, for the time per slice at 10x the size
  (target: within 1.2x of the 1000-slice run).

The 10,000 files are the 1000 demo-phantom masks of ``upload_1000.py`` repeated ten times under new
slice numbers (liver and lesion on about half, many empty). After every upload the group is checked
(slice count); the copies are checked by object count. The size of the ``complete`` request body is
printed against the ``complete`` route's request limit (``server.contract.groups.LARGE_BODY_MAX_BYTES``).

Usage: ``python benchmarks/upload_10000.py [--rounds 3] [--count 10000]``. Needs ``rclone`` and
``s5cmd`` like ``upload_1000.py``. The machine is shared: read medians, and the load average printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
from _processes import find_binary, tear_down
from upload_1000 import (
    BUCKET,
    ProcessRun,
    Server,
    base_env,
    cli_process,
    count_objects,
    make_masks,
    run_process,
    start_rclone,
    start_server,
    vm_hwm_mb,
)

from pacs_mask_desktop.core.api_client import ApiClient
from server.contract import messages
from server.contract.groups import LARGE_BODY_MAX_BYTES


def repeat_masks(source: Path, target: Path, count: int) -> Path:
    """``count`` masks named ``mask_00000.png``… cycling through the files of ``source``."""
    files = sorted(source.glob("*.png"))
    target.mkdir(parents=True)
    for n in range(count):
        shutil.copyfile(files[n % len(files)], target / f"mask_{n:05d}.png")
    return target


def complete_body_bytes(server: Server, group_id: str) -> int:
    """The size of the ``complete`` request the client sent for this group (rebuilt from its rows with
    the contract's structs, encoded as the client encodes them)."""
    with ApiClient(server.url, server.token) as api:
        items = api.group_with_slices(group_id).items
    body = messages.CompleteRequest(
        slices=[
            messages.SliceToComplete(
                filename=m.filename,
                slice_index=m.slice_index,
                width=m.width,
                height=m.height,
                checksum=m.checksum,
                label=m.label,
                sop_instance_uid=m.sop_instance_uid,
                size=m.size_bytes,
            )
            for m in items
        ]
    )
    return len(msgspec.json.encode(body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pacs-mask-bench10k-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"generating {args.count} masks of 512x512 …", file=sys.stderr)
        small = make_masks(work, 1000)
        big = repeat_masks(small, work / "masks-big", args.count)
        big_total = sum(p.stat().st_size for p in big.iterdir())
        rclone = start_rclone(work)
        procs.append(rclone.proc)
        embedded = start_server(work, "embedded", {})
        procs.append(embedded.proc)
        s3 = start_server(
            work, "s3",
            {**rclone.aws_env(), "PACS_MASK_STORAGE": "s3", "PACS_MASK_S3_BUCKET": BUCKET,
             "PACS_MASK_S3_ENDPOINT_URL": rclone.url, "PACS_MASK_S3_ADDRESSING_STYLE": "path",
             "PACS_MASK_S3_REGION": "us-east-1"},
        )  # fmt: skip
        procs.append(s3.proc)
        rclone_env = {
            **base_env(),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": rclone.key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": rclone.secret,
            "RCLONE_CONFIG_BENCH_ENDPOINT": rclone.url,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
        s5cmd_env = {**base_env(), **rclone.aws_env()}
        rclone_bin, s5cmd_bin = find_binary("rclone"), find_binary("s5cmd")

        runs: dict[str, list[ProcessRun]] = {}
        engine: dict[str, list[float]] = {}
        body_bytes: dict[str, int] = {}

        def cli(server: Server, label: str, masks: Path, count: int, n: int) -> None:
            run, seconds = cli_process(
                server, masks, f"{label}-{count}-{n}", work / f"client-{label}-{count}-{n}"
            )
            summary = json.loads(run.stdout)
            if summary["group"]["slice_count"] != count:
                raise SystemExit(f"{label}: {summary['group']['slice_count']} slices registered, not {count}")
            runs.setdefault(f"{label} {count}", []).append(run)
            engine.setdefault(f"{label} {count}", []).append(seconds)
            if count == args.count:
                body_bytes[label] = complete_body_bytes(server, summary["group_id"])

        def copy(tool: str, n: int) -> None:
            prefix = f"{tool}-{n}"
            if tool == "rclone":
                command = [rclone_bin, "copy", "--config", "", "--transfers", "16", str(big),
                           f"bench:{BUCKET}/{prefix}"]  # fmt: skip
                run = run_process(command, rclone_env)
            else:
                command = [
                    s5cmd_bin,
                    "--endpoint-url",
                    rclone.url,
                    "cp",
                    f"{big}/*",
                    f"s3://{BUCKET}/{prefix}/",
                ]
                run = run_process(command, s5cmd_env)
            assert count_objects(rclone, prefix) == args.count
            runs.setdefault(tool, []).append(run)

        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds} …", file=sys.stderr)
            cli(embedded, "embedded", big, args.count, n)
            copy("rclone", n)
            cli(s3, "s3", big, args.count, n)
            copy("s5cmd", n)
            cli(embedded, "embedded", small, 1000, n)
            cli(s3, "s3", small, 1000, n)
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

        def med(name: str, field: str = "seconds") -> float:
            return statistics.median(getattr(r, field) for r in runs[name])

        rclone_t, s5_t = med("rclone"), med("s5cmd")
        server_peak = {
            "embedded": vm_hwm_mb(embedded.proc.pid),
            "s3": vm_hwm_mb(s3.proc.pid),
            "rclone serve s3": vm_hwm_mb(rclone.proc.pid),
        }
        print()
        print(
            f"{args.count} masks of 512x512 ({big_total / 1e6:.1f} MB), {os.cpu_count()} CPUs, median of "
            f"{args.rounds} rounds (best in brackets); load average before: {load_before}, after: {load_after}"
        )
        print()
        print(
            "| process | seconds | ms per slice | per slice vs 1000-slice run | vs rclone copy | vs s5cmd cp "
            "| client CPU s | client peak RSS MB | engine s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        labels = {
            "embedded": "`pacs-mask upload` process, embedded server",
            "s3": "`pacs-mask upload` process, S3 (rclone serve s3)",
        }
        for label in ("embedded", "s3"):
            name, small_name = f"{label} {args.count}", f"{label} 1000"
            t = med(name)
            per, per_small = t / args.count * 1000, med(small_name) / 1000 * 1000
            print(
                f"| {labels[label]} | {t:.2f} ({min(r.seconds for r in runs[name]):.2f}) | {per:.3f} "
                f"| {per / per_small:.2f}x (1000: {per_small:.3f} ms) | {t / rclone_t:.2f}x | {t / s5_t:.2f}x "
                f"| {med(name, 'cpu'):.1f} | {med(name, 'peak_mb'):.0f} | {statistics.median(engine[name]):.2f} |"
            )
        for tool, label in (("rclone", "`rclone copy --transfers 16`"), ("s5cmd", "`s5cmd cp`")):
            t = med(tool)
            print(
                f"| {label} | {t:.2f} ({min(r.seconds for r in runs[tool]):.2f}) | {t / args.count * 1000:.3f} "
                f"|  | {t / rclone_t:.2f}x | {t / s5_t:.2f}x | {med(tool, 'cpu'):.1f} | {med(tool, 'peak_mb'):.0f} "
                "|  |"
            )
        print()
        print(
            "server peak RSS after all rounds (MB): "
            + ", ".join(f"{name} {mb:.0f}" for name, mb in server_peak.items())
        )
        for label, size in body_bytes.items():
            print(
                f"complete request body, {label}: {size / 1e6:.2f} MB for {args.count} slices "
                f"({size / LARGE_BODY_MAX_BYTES:.0%} of the route's {LARGE_BODY_MAX_BYTES / 2**20:.0f} MiB limit)"
            )
        return 0
    finally:
        tear_down(procs, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
