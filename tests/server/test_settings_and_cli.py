"""Settings from ``PACS_MASK_*`` and the ``pacs-mask-server`` commands, run as real processes."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.db.session import Database
from server.security import lookup_actor, new_token
from server.settings import Settings, SettingsError
from tests.processes import stop_process
from tests.server.conftest import png_bytes

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a server process: nothing of the developer's PACS_MASK_*, a temp data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_MASK_")}
    env["PACS_MASK_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_server_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- settings ----------------------------------------------------------------------------------------


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path))
    settings = Settings.from_env()
    assert settings.storage == "local"
    assert settings.url_ttl_seconds == 900
    assert settings.s3_bucket == "pacs-masks"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'pacs-masks.sqlite3'}"
    assert settings.storage_root == tmp_path / "objects"
    assert settings.cors_origins == []


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PACS_MASK_STORAGE", "s3")
    monkeypatch.setenv("PACS_MASK_S3_ENDPOINT_URL", "http://minio:9000/")
    monkeypatch.setenv("PACS_MASK_S3_ADDRESSING_STYLE", "path")
    monkeypatch.setenv("PACS_MASK_URL_TTL_SECONDS", "604800")
    monkeypatch.setenv("PACS_MASK_CORS_ORIGINS", "https://viewer.example, http://localhost:3000")
    monkeypatch.setenv("PACS_MASK_PUBLIC_URL", "https://masks.example/")
    settings = Settings.from_env()
    assert settings.storage == "s3"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.s3_addressing_style == "path"
    assert settings.url_ttl_seconds == 604800
    assert settings.cors_origins == ["https://viewer.example", "http://localhost:3000"]
    assert settings.public_url == "https://masks.example"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PACS_MASK_URL_TTL_SECONDS", "0"),
        ("PACS_MASK_URL_TTL_SECONDS", "604801"),
        ("PACS_MASK_URL_TTL_SECONDS", "soon"),
        ("PACS_MASK_STORAGE", "ftp"),
        ("PACS_MASK_MAX_SLICE_BYTES", "0"),
        ("PACS_MASK_PUBLIC_URL", "masks.example"),
        ("PACS_MASK_S3_ENDPOINT_URL", "minio:9000"),
        ("PACS_MASK_S3_ADDRESSING_STYLE", "sideways"),
        ("PACS_MASK_DATABASE_URL", "mysql://db/masks"),
        ("PACS_MASK_SIGNING_KEY", "too-short"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.setenv("PACS_MASK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_serve_with_a_bad_setting_stops_with_one_line(tmp_path: Path) -> None:
    result = run_server_cli("serve", env=clean_env(tmp_path, PACS_MASK_URL_TTL_SECONDS="0"), timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PACS_MASK_URL_TTL_SECONDS" in lines[0]
    assert result.stdout == ""


# --- commands ----------------------------------------------------------------------------------------


def test_new_tokens_never_start_with_a_dash_that_a_command_line_reads_as_an_option() -> None:
    """``pacs-mask --token -abc…`` fails in argparse; one plain url-safe token in 64 would start so."""
    tokens = [new_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)


def test_create_token_prints_the_token_alone(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    result = run_server_cli("create-token", "--name", "ai-worker-1", "--role", "uploader", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert TOKEN_RE.fullmatch(token), result.stdout

    db = Database(f"sqlite:///{tmp_path / 'pacs-masks.sqlite3'}")
    try:
        actor = lookup_actor(db, token)
    finally:
        db.close()
    assert actor is not None
    assert (actor.name, actor.role) == ("ai-worker-1", "uploader")

    again = run_server_cli("create-token", "--name", "ai-worker-1", "--role", "admin", env=env)
    assert again.returncode == 1
    assert again.stdout == ""
    assert "ai-worker-1" in again.stderr


def test_migrate_command(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    up = run_server_cli("migrate", env=env)
    assert up.returncode == 0, up.stderr
    assert "database is at revision" in up.stdout
    down = run_server_cli("migrate", "--downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert "revision base" in down.stdout


def test_serve_really_starts(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=clean_env(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None, "the server did not answer /health in time"
        assert health.status_code == 200, health.text
        assert health.json()["database"] == "ok"
        assert health.json()["storage"] == "ok"

        token_file = data_dir / "admin.token"
        assert token_file.is_file()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text(encoding="utf-8").strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
            annotation = api.post(
                "/api/annotations", json={"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4"}
            )
            assert annotation.status_code == 201, annotation.text
            group = api.post(
                "/api/mask-group",
                json={
                    "annotation_id": annotation.json()["id"],
                    "model_name": "m",
                    "version": "1",
                    "source": "ai",
                },
            ).json()
            body = png_bytes(3)
            md5 = hashlib.md5(body, usedforsecurity=False)
            (signed,) = api.post(
                f"/api/mask-group/{group['id']}/signed-url",
                json={
                    "slices": [
                        {
                            "filename": "a.png",
                            "size": len(body),
                            "content_md5": base64.b64encode(md5.digest()).decode(),
                            "content_type": "image/png",
                        }
                    ]
                },
            ).json()["urls"]
            # The local signed URL points at this very server (PACS_MASK_PUBLIC_URL set by `serve`).
            assert signed["url"].startswith(f"{base}/storage/")
            put = httpx.put(signed["url"], content=body, headers=signed["headers"], timeout=10)
            assert put.status_code == 200, put.text
            done = api.post(
                f"/api/mask-group/{group['id']}/complete",
                json={
                    "slices": [
                        {
                            "filename": "a.png",
                            "slice_index": 0,
                            "width": 16,
                            "height": 16,
                            "checksum": md5.hexdigest(),
                        }
                    ]
                },
            )
            assert done.status_code == 200, done.text
            assert done.json()["slice_count"] == 1
            assert api.get("/schema/openapi.json").status_code == 200
            assert httpx.get(f"{base}/api/annotations", timeout=5).status_code == 401
    finally:
        stop_process(proc, after_kill=5)
        log.close()
