"""Stopping the child processes tests start (servers, rclone): politely, then for sure."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 15, after_kill: float = 10) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; no-op when it has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=after_kill)
