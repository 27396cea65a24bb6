"""The bundled server as a child process of the desktop app (the embedded default).

Unless a server URL is configured, the desktop app starts ``server`` on a free loopback port, waits
for ``GET /health``, reads the local admin token the server writes into the shared data dir and stops
the child when the app quits (terminate, then kill).

The child is started with the interpreter that runs the app, never a ``python`` found on PATH:

* from a source tree or an installed package: ``[sys.executable, "-m", "server", "serve", ...]``;
* frozen by PyInstaller (``sys.frozen``): ``sys.executable`` is the app itself, so the child is
  ``[sys.executable, "--run-server", ...]`` and ``pacs_mask_desktop.app`` serves when it sees that flag.

The child's output goes to a log file (not a pipe that could fill up and block it); when start-up
fails, the error quotes the tail of that file so the user sees why (a port in use, a bad setting...).
On Linux the child also gets ``PR_SET_PDEATHSIG`` when launched from the main thread, so a crashed or
killed app does not leave an orphan server behind.

No Qt here: the app calls :meth:`EmbeddedServer.launch` on its GUI thread (cheap: fork/exec) and
:meth:`EmbeddedServer.wait_ready` from a worker.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

import pacs_mask_desktop
from pacs_mask_desktop.core.paths import ADMIN_TOKEN_FILE, ServerTarget, data_dir, log_dir, private_dir

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
RUN_SERVER_FLAG = "--run-server"
"""The frozen app's argument that makes it serve instead of opening a window."""
STARTUP_TIMEOUT = 60.0
"""Seconds to wait for ``/health``: a first start migrates the database, a cold disk can be slow."""
STOP_TIMEOUT = 8.0
"""Seconds a terminated child gets to shut down gracefully before it is killed."""
_STDERR_TAIL = 2000
_PORT_IN_USE = ("address already in use", "errno 98", "errno 48", "10048", "only one usage of each socket")


class EmbeddedServerError(Exception):
    """The bundled server could not be started (the message says why, with its own last words)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def server_command(port: int, host: str = LOOPBACK) -> list[str]:
    """The child's argument list: the frozen app's serve mode, or ``python -m server serve``."""
    if getattr(sys, "frozen", False):
        return [sys.executable, RUN_SERVER_FLAG, "--host", host, "--port", str(port)]
    return [sys.executable, "-m", "server", "serve", "--host", host, "--port", str(port)]


def _source_root() -> Path | None:
    """The folder holding both packages when running from a source tree (so ``-m server`` resolves)."""
    root = Path(pacs_mask_desktop.__file__).resolve().parents[1]
    return root if (root / "server" / "__init__.py").is_file() else None


def _child_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PACS_MASK_DATA_DIR"] = str(folder)
    env["PYTHONUNBUFFERED"] = "1"
    # The child serves its own URL; an inherited setting for another server would sign wrong URLs.
    env.pop("PACS_MASK_PUBLIC_URL", None)
    root = _source_root()
    if root is not None and not getattr(sys, "frozen", False):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: deliver SIGTERM to the server when the thread that launched it (the app's main) dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmbeddedServer:
    """One bundled-server child process and how to reach it.

    ``with EmbeddedServer(folder) as server: server.target`` starts and stops it; the app uses
    :meth:`launch` + :meth:`wait_ready` to keep the blocking part off its GUI thread.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        host: str = LOOPBACK,
        preferred_port: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(folder) if folder is not None else data_dir()
        self.host = host
        self.preferred_port = preferred_port
        self.startup_timeout = startup_timeout
        self.log_path = log_path or (log_dir() / "embedded-server.log")
        self.port: int | None = None
        self.target: ServerTarget | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._atexit_registered = False

    # --- state ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the child (after :meth:`launch`)."""
        if self.port is None:
            raise EmbeddedServerError("the embedded server has not been launched")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    # --- start ----------------------------------------------------------------------------------------

    def start(self) -> ServerTarget:
        """Launch the child and wait until it answers; returns its URL and token."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the child process (returns at once; see :meth:`wait_ready`)."""
        with self._lock:
            if self.running():
                return
            port = self.preferred_port
            if port is None or not port_is_free(port, self.host):
                port = free_port(self.host)
            self._spawn(port)

    def _spawn(self, port: int) -> None:
        self.port = port
        self.target = None
        # The database, the stored objects (masks, SEGs) and the server's log are patient data; the
        # folders are the app's own, so ones made by an older version are tightened too.
        private_dir(self.data_dir)
        private_dir(self.log_path.parent)
        self._close_log()
        self._log_handle = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        command = server_command(port, self.host)
        creationflags = 0  # POSIX accepts only 0
        preexec_fn: Callable[[], None] | None = None  # Windows accepts only None
        if sys.platform == "win32":
            creationflags = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        elif sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            preexec_fn = _die_with_parent
        log.info("starting the bundled server: %s (data dir %s)", " ".join(command), self.data_dir)
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                env=_child_env(self.data_dir),
                close_fds=True,
                creationflags=creationflags,
                preexec_fn=preexec_fn,
            )
        except OSError as exc:
            self._close_log()
            raise EmbeddedServerError(f"Cannot start the bundled server ({command[0]}): {exc}") from exc
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def wait_ready(self, cancel: threading.Event | None = None) -> ServerTarget:
        """Block until ``/health`` answers ok, then read the token; relaunch once if the port was taken."""
        for attempt in range(3):
            try:
                return self._wait_health(cancel)
            except _PortTaken:
                if attempt == 2:
                    break
                log.warning("port %s was taken before the bundled server bound it; retrying", self.port)
                with self._lock:
                    self._spawn(free_port(self.host))
        raise EmbeddedServerError(
            f"The bundled server could not bind a loopback port.\n\n{self.stderr_tail()}"
        )

    def _wait_health(self, cancel: threading.Event | None) -> ServerTarget:
        process = self._process
        if process is None:
            raise EmbeddedServerError("the embedded server has not been launched")
        deadline = time.monotonic() + self.startup_timeout
        last_problem = "no answer yet"
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as http:
            while True:
                if cancel is not None and cancel.is_set():
                    self.stop()
                    raise EmbeddedServerError("starting the bundled server was cancelled")
                code = process.poll()
                if code is not None:
                    tail = self.stderr_tail()
                    if any(marker in tail.lower() for marker in _PORT_IN_USE):
                        raise _PortTaken
                    raise EmbeddedServerError(
                        f"The bundled server stopped during start-up (exit code {code}).\n\n{tail}"
                    )
                try:
                    response = http.get(f"{self.url}/health")
                except httpx.HTTPError as exc:
                    last_problem = f"{exc.__class__.__name__}"
                else:
                    if response.status_code == 200:
                        break
                    last_problem = f"/health answered {response.status_code}: {response.text[:300]}"
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedServerError(
                        f"The bundled server did not become healthy within {self.startup_timeout:.0f} s "
                        f"({last_problem}).\n\n{self.stderr_tail()}"
                    )
                time.sleep(0.1)
        token_file = self.data_dir / ADMIN_TOKEN_FILE
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EmbeddedServerError(
                f"The bundled server is up but its token file {token_file} is unreadable: {exc}"
            ) from exc
        if not token:
            raise EmbeddedServerError(f"The bundled server's token file {token_file} is empty.")
        self.target = ServerTarget(url=self.url, token=token)
        log.info("bundled server ready at %s (pid %s)", self.url, self.pid)
        return self.target

    def stderr_tail(self, limit: int = _STDERR_TAIL) -> str:
        """The last ``limit`` characters the child wrote (stdout and stderr), for error messages."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - limit))
                text = handle.read().decode("utf-8", "replace").strip()
        except OSError:
            return "(the server wrote nothing)"
        return text or "(the server wrote nothing)"

    # --- stop -----------------------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the child, kill it if it lingers; safe to call twice and from ``atexit``."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None and process.poll() is None:
                log.info("stopping the bundled server (pid %s)", process.pid)
                with contextlib.suppress(OSError):
                    process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("the bundled server did not stop within %.0f s; killing it", timeout)
                    with contextlib.suppress(OSError):
                        process.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=timeout)
            self.target = None
            self._close_log()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def _close_log(self) -> None:
        if self._log_handle is not None:
            with contextlib.suppress(OSError):
                self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    """Another process bound the chosen port between our check and the child's bind."""
