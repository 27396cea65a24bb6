"""The bundled server as the app starts it (``core.embedded``): the frozen child mode, errors, stopping."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from pacs_mask_desktop.core import embedded
from pacs_mask_desktop.core.embedded import EmbeddedServer, EmbeddedServerError, server_command


def test_the_frozen_app_starts_its_server_from_its_own_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    command = server_command(12345)
    assert command[:2] == [sys.executable, "--run-server"]
    assert command[-2:] == ["--port", "12345"]
    monkeypatch.delattr(sys, "frozen")
    assert server_command(12345)[:4] == [sys.executable, "-m", "server", "serve"]


def test_run_server_mode_of_the_app_serves_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a frozen build runs as its child: the app entry point with --run-server."""
    monkeypatch.setattr(
        embedded,
        "server_command",
        lambda port, host="127.0.0.1": [
            sys.executable,
            "-m",
            "pacs_mask_desktop",
            "--run-server",
            "--host",
            host,
            "--port",
            str(port),
        ],
    )
    server = EmbeddedServer(tmp_path / "data", log_path=tmp_path / "server.log")
    target = server.start()
    try:
        assert httpx.get(f"{target.url}/health", timeout=5).json()["status"] == "ok"
        assert target.token == (tmp_path / "data" / "admin.token").read_text().strip()
        assert server.running()
    finally:
        server.stop()
    assert not server.running()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{target.url}/health", timeout=2)


def test_a_failing_start_says_why_with_the_servers_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_MASK_URL_TTL_SECONDS", "0")
    server = EmbeddedServer(tmp_path / "data", log_path=tmp_path / "server.log", startup_timeout=30)
    with pytest.raises(EmbeddedServerError) as failure:
        server.start()
    message = str(failure.value)
    assert "stopped during start-up" in message
    assert "bad setting" in message
    assert not server.running()
