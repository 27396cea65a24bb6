"""Pytest plugin: the REAL server as a subprocess (``python -m server serve``), for client end-to-end tests.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Fixtures:

- ``live_server_factory`` (session): ``start(storage="local"|"s3", proxy=False, ttl=None, env=None)``
  starts a server on a free port with its own temp ``PACS_MASK_DATA_DIR`` (and, for ``s3``, a fresh
  bucket on the session's ``rclone serve s3``) and returns a :class:`LiveServer`. Servers with the same
  arguments are shared for the session; all are stopped at the end. With ``proxy=True`` a
  :class:`tests.faultproxy.FaultProxy` sits in front of storage: the server signs URLs for the proxy
  (``PACS_MASK_PUBLIC_URL`` for local, ``PACS_MASK_S3_ENDPOINT_URL`` for S3) and the proxy forwards to
  the real storage.
- ``live_server`` / ``live_server_s3`` (session): the plain local and S3 servers.
- ``ct_1000`` (session): a synthetic 1000-slice 512x512 CT series and its realistic label masks
  (``core.demo``; about 5 s to write, the 500 MB series is removed at the end of the session).
  :func:`copy_masks` copies a run of those masks for tests that need fewer.
- ``client_env`` (function): a fresh client data dir (so tests never share an upload journal) and no
  ``PACS_MASK_SERVER``/``PACS_MASK_TOKEN`` from the developer's shell; call ``client_env(server)`` to
  point the client at a server through the environment, as a user would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.demo import write_masks_for_series, write_synthetic_ct
from server.contract.messages import MaskList
from tests.faultproxy import FaultProxy
from tests.processes import stop_process
from tests.s3_server import RcloneS3

_START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """This process's environment without any PACS_MASK_*, RCLONE_* or AWS_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PACS_MASK_", "RCLONE_", "AWS_"))}


def s3_environ(s3: RcloneS3) -> dict[str, str]:
    """Standard AWS_* variables for the rclone server's key, and no developer config files."""
    missing = str(s3.root.parent / "no-aws-config")
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": s3.region,
        "AWS_DEFAULT_REGION": s3.region,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class LiveServer:
    """A running server subprocess and what a client needs to talk to it."""

    url: str
    token: str
    data_dir: Path
    storage: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    proxy: FaultProxy | None = None
    bucket: str | None = None
    s3: RcloneS3 | None = None
    _annotations: list[int] = field(default_factory=list)

    def api(self) -> ApiClient:
        """A new API client (close it, or use it as a context manager)."""
        return ApiClient(self.url, self.token)

    def new_annotation(self, description: str = "test", series: Path | None = None) -> int:
        """A fresh annotation without stored geometry, so each test has its own groups: on its own new
        study/series UIDs, or on those of the DICOM ``series`` folder the test uploads with."""
        study_uid, series_uid = str(generate_uid()), str(generate_uid())
        if series is not None:
            from pacs_mask_desktop.core.dicom_series import load_series

            loaded = load_series(series)
            study_uid, series_uid = loaded.study_instance_uid, loaded.series_instance_uid
        with self.api() as api:
            row = api.create_annotation(study_uid, series_uid, "TEST", description)
        return int(row.id)

    def sign_calls(self, group_id: str) -> int:
        """How many ``signed-url`` calls the server audited for this group."""
        with self.api() as api:
            rows = api.audit(group_id=group_id, limit=10_000)
        return sum(1 for r in rows if r.action == "group.sign")

    def object_bytes(self, key: str) -> bytes:
        """The stored bytes of ``key``, read straight from the backend (not through the API)."""
        if self.storage == "local":
            return (self.data_dir / "objects" / key).read_bytes()
        assert self.s3 is not None
        assert self.bucket is not None
        return (self.s3.root / self.bucket / key).read_bytes()

    def stored_keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` as the backend holds them (rclone serves a plain folder)."""
        root = self.data_dir / "objects" if self.storage == "local" else self.s3.root / self.bucket  # type: ignore[union-attr,operator]
        base = root / prefix
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (and its proxy)."""
        stop_process(self.proc)
        if self.proxy is not None:
            self.proxy.stop()


def start_server(
    base: Path,
    *,
    storage: str = "local",
    s3: RcloneS3 | None = None,
    s3_client: Any = None,
    proxy: bool = False,
    ttl: int | None = None,
    env: dict[str, str] | None = None,
) -> LiveServer:
    """Start ``python -m server serve`` on a free port and wait until ``/health`` answers."""
    data_dir = base / "server-data"
    data_dir.mkdir(parents=True)
    log_path = base / "server.log"
    server_env = clean_environ()
    server_env.update({"PACS_MASK_DATA_DIR": str(data_dir), "PACS_MASK_LOG_LEVEL": "WARNING"})
    if ttl is not None:
        server_env["PACS_MASK_URL_TTL_SECONDS"] = str(ttl)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fault_proxy: FaultProxy | None = None
    bucket: str | None = None
    if storage == "s3":
        if s3 is None or s3_client is None:
            raise ValueError("S3 storage needs the rclone server and a client")
        bucket = f"live-{uuid.uuid4().hex[:20]}"
        s3_client.create_bucket(Bucket=bucket)
        endpoint = s3.endpoint_url
        if proxy:
            fault_proxy = FaultProxy(s3.endpoint_url).start()
            endpoint = fault_proxy.url
        server_env.update(s3_environ(s3))
        server_env.update(
            {
                "PACS_MASK_STORAGE": "s3",
                "PACS_MASK_S3_BUCKET": bucket,
                "PACS_MASK_S3_ENDPOINT_URL": endpoint,
                "PACS_MASK_S3_ADDRESSING_STYLE": "path",
                "PACS_MASK_S3_REGION": s3.region,
            }
        )
    elif storage == "local":
        if proxy:
            fault_proxy = FaultProxy(url).start()
            server_env["PACS_MASK_PUBLIC_URL"] = fault_proxy.url
    else:
        raise ValueError(f"unknown storage {storage!r}")
    server_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    live = LiveServer(
        url, "", data_dir, storage, log_path, proc, fault_proxy, bucket, s3 if storage == "s3" else None
    )
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.poll() is not None:
            live.stop()
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{live.log_tail()}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            live.stop()
            raise RuntimeError(f"the server did not answer within {_START_TIMEOUT:.0f}s:\n{live.log_tail()}")
        time.sleep(0.05)
    live.token = (data_dir / "admin.token").read_text(encoding="utf-8").strip()
    return live


ServerFactory = Callable[..., LiveServer]


@pytest.fixture(scope="session")
def live_server_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """``start(storage=..., proxy=..., ttl=..., env=...)``: a shared live server for those arguments."""
    started: dict[tuple[Any, ...], LiveServer] = {}

    def start(
        storage: str = "local",
        *,
        proxy: bool = False,
        ttl: int | None = None,
        env: dict[str, str] | None = None,
    ) -> LiveServer:
        key = (storage, proxy, ttl, tuple(sorted((env or {}).items())))
        if key not in started:
            s3 = s3_client = None
            if storage == "s3":
                s3 = request.getfixturevalue("rclone_s3")
                s3_client = request.getfixturevalue("rclone_s3_client")
            base = tmp_path_factory.mktemp(f"live-{storage}{'-proxy' if proxy else ''}")
            started[key] = start_server(
                base, storage=storage, s3=s3, s3_client=s3_client, proxy=proxy, ttl=ttl, env=env
            )
        server = started[key]
        if server.proc.poll() is not None:
            raise RuntimeError(f"the live server died:\n{server.log_tail()}")
        if server.proxy is not None:
            server.proxy.configure()  # no faults, counters at zero, whatever the last test did
        return server

    try:
        yield start
    finally:
        for server in started.values():
            server.stop()
            if server.s3 is not None and server.bucket is not None:
                shutil.rmtree(server.s3.root / server.bucket, ignore_errors=True)


@pytest.fixture(scope="session")
def live_server(live_server_factory: ServerFactory) -> LiveServer:
    """The embedded default: local storage, SQLite, one process."""
    return live_server_factory("local")


@pytest.fixture(scope="session")
def live_server_s3(live_server_factory: ServerFactory) -> LiveServer:
    """The server with S3 storage on the session's real ``rclone serve s3``."""
    return live_server_factory("s3")


@pytest.fixture
def client_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[LiveServer | None], dict[str, str]]:
    """A private client data dir for this test; ``client_env(server)`` also points the client at it.

    Returns the environment to hand to a client subprocess.
    """
    client_dir = tmp_path / "client-data"
    client_dir.mkdir()
    for name in list(os.environ):
        if name.startswith("PACS_MASK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(client_dir))

    def point(server: LiveServer | None = None) -> dict[str, str]:
        if server is not None:
            monkeypatch.setenv("PACS_MASK_SERVER", server.url)
            monkeypatch.setenv("PACS_MASK_TOKEN", server.token)
        return dict(os.environ)

    return point


@dataclass
class Ran:
    """What one in-process ``pacs-mask`` run returned and printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Ran]]:
    """``run_cli(args, env)``: ``pacs-mask ARGS`` in this process (no interpreter start: seconds saved)
    with exactly ``env``'s PACS_MASK_* settings; the Ctrl+C handlers it installs are put back after."""
    import signal

    from pacs_mask_desktop import cli

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def run(args: list[str], env: dict[str, str]) -> Ran:
        for name in list(os.environ):
            if name.startswith("PACS_MASK_") and name not in env:
                monkeypatch.delenv(name)
        for name, value in env.items():
            if name.startswith("PACS_MASK_"):
                monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = cli.main(args)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@dataclass(frozen=True)
class Volume:
    """A synthetic series and one label mask per slice (``mask_0000.png`` ... in geometry order)."""

    series: Path
    masks: Path
    count: int

    def mask_paths(self) -> list[Path]:
        """The mask files in index order."""
        return sorted(self.masks.glob("mask_*.png"))


@pytest.fixture(scope="session")
def ct_1000(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    """1000 slices of 512x512: the series (for ``--series``) and its ground-truth masks."""
    base = tmp_path_factory.mktemp("ct1000")
    write_synthetic_ct(base / "series", slices=1000, size=512, seed=11)
    write_masks_for_series(base / "series", base / "masks")
    try:
        yield Volume(base / "series", base / "masks", 1000)
    finally:
        shutil.rmtree(base / "series", ignore_errors=True)


def copy_masks(volume: Volume, target: Path, start: int, count: int) -> list[Path]:
    """Copy masks ``start .. start+count-1`` of ``volume`` (names kept) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in volume.mask_paths()[start : start + count]:
        copied.append(Path(shutil.copy2(path, target / path.name)))
    return copied


def md5_hex(data: bytes) -> str:
    """Hex MD5 of ``data``."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def assert_group_matches(
    server: LiveServer, group_id: str, files: list[Path], *, view_sample: int = 10
) -> MaskList:
    """The group is complete and holds exactly ``files``, each once, intact in the server and in storage.

    Checks: status and slice count; one row per file with the file's MD5 and size; the stored object's
    bytes (read from the backend's folder, not through the API) have that MD5; no other object under
    the group's prefix (nothing duplicated, no strays); the view route returns the exact bytes for a
    sample spread over the group. Returns ``GET /api/mask/{group_id}``.
    """
    expected = {p.name: p.read_bytes() for p in files}
    with server.api() as api:
        found = api.group_with_slices(group_id)
        group, items = found.group, found.items
        assert group.status == "complete", group
        assert group.slice_count == len(expected)
        assert len(items) == len(expected)
        assert sorted(m.filename for m in items) == sorted(expected)
        prefix = f"mask/{group.annotation_id}/{group_id}/"
        for m in items:
            data = expected[m.filename]
            assert m.checksum == md5_hex(data), m.filename
            assert m.size_bytes == len(data), m.filename
            assert m.storage_key == prefix + m.filename
            assert md5_hex(server.object_bytes(m.storage_key)) == m.checksum, m.filename
        assert server.stored_keys(prefix) == sorted(prefix + name for name in expected)
        ordered = sorted(items, key=lambda m: m.slice_index)
        step = max(1, len(ordered) // max(1, view_sample))
        for m in ordered[::step]:
            assert api.view(group_id, filename=m.filename) == expected[m.filename], m.filename
        same_identity = [
            g
            for g in api.list_groups(group.annotation_id)
            if (g.model_name, g.version) == (group.model_name, group.version)
        ]
        assert [g.id for g in same_identity] == [group_id]
    return found


def journal_state(client_dir: Path) -> tuple[str, set[str]]:
    """``(group_id, landed filenames)`` of the one upload in a client's journal, read like another process."""
    db = sqlite3.connect(client_dir / "upload-journal.sqlite3")
    try:
        (group_id,) = db.execute("SELECT group_id FROM upload").fetchone()
        landed = {
            name for (name,) in db.execute("SELECT filename FROM landed WHERE group_id = ?", (group_id,))
        }
    finally:
        db.close()
    return group_id, landed
