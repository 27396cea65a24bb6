"""A small threaded HTTP proxy that sits in front of storage and misbehaves on purpose (tests only).

Put it between the upload engine and storage:

- local backend: start the server with ``PACS_MASK_PUBLIC_URL`` set to the proxy's address. Signed URLs
  then point at the proxy, which forwards ``/storage/...`` to the real server.
- S3 (``rclone serve s3``): start the server with ``PACS_MASK_S3_ENDPOINT_URL`` set to the proxy's
  address. SigV4 signs the ``Host`` header, so the server presigns for the proxy's host:port and the
  proxy forwards the raw request to rclone *with the Host header the client sent*; rclone checks the
  signature against the Host it receives, which is the one that was signed.

What it can do to requests whose method is in ``fault_methods`` (PUT by default) and whose path ends
with ``fault_path_suffix`` (any path by default; e.g. ``/complete`` with ``fault_methods={"POST"}`` when
the API goes through the proxy too):

- ``drop``: this fraction is read completely, then the connection is closed without any answer;
- ``drop_after``: this fraction is forwarded (the object lands) and then the answer is thrown away and
  the connection closed: the client cannot know the PUT worked and must send it again;
- ``fail``: this fraction is answered ``503 Slow Down`` (S3-style XML) without being forwarded;
- ``delay``: every such request waits this long before it is forwarded (a slow link);
- ``hold_first``: the first attempt at each path waits this long before it is forwarded (so a URL that
  was valid when sent arrives expired), for the fraction ``hold_fraction`` of paths.

Fault decisions are a pure function of ``(seed, file name, attempt number at that path)`` (the last
path segment, so the random group id in a key does not change them), so a run is deterministic whatever
the thread interleaving, and ``max_faults_per_path`` bounds how many times one
path can be hit (a flaky network, not a dead one). Everything else is forwarded untouched.

Counters (see :class:`ProxyStats`): requests seen, faults injected, upstream answers by status, and, per
path (query string removed), how many PUTs were forwarded and answered 2xx by upstream.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import urllib3

# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own business; everything else passes untouched.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate (injected by the test proxy).</Message></Error>"
)


@dataclass
class FaultConfig:
    """How the proxy misbehaves; see the module docstring."""

    drop: float = 0.0
    fail: float = 0.0
    drop_after: float = 0.0
    delay: float = 0.0
    hold_first: float = 0.0
    hold_fraction: float = 1.0
    seed: int = 0
    max_faults_per_path: int = 3
    fault_methods: frozenset[str] = frozenset({"PUT"})
    fault_path_suffix: str = ""


@dataclass
class ProxyStats:
    """What the proxy saw. ``ok_puts[path]`` counts PUTs forwarded and answered 2xx by upstream."""

    requests: Counter[str] = field(default_factory=Counter)  # by method
    puts_total: int = 0
    dropped: int = 0
    dropped_after: int = 0
    upstream_errors: int = 0  # upstream could not be reached or hung up: answered 502
    failed: int = 0
    forwarded: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # upstream answers to fault_methods requests
    ok_puts: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)  # fault_methods requests per path
    # every non-2xx upstream answer: (method, path, status, body)
    answers: list[tuple[str, str, int, bytes]] = field(default_factory=list)

    @property
    def ok_put_total(self) -> int:
        """Successful PUTs in all."""
        return sum(self.ok_puts.values())


class FaultProxy:
    """``with FaultProxy(upstream) as proxy: ... proxy.url ...``; reconfigure with :meth:`configure`."""

    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, config: FaultConfig | None = None
    ):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self.config = config or FaultConfig()
        self.stats = ProxyStats()
        self._lock = threading.Condition()
        self._active = 0
        self._last_start = 0.0
        self._pool = urllib3.HTTPConnectionPool(
            parts.hostname,
            parts.port or 80,
            maxsize=64,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=5.0, read=120.0),
        )
        self._server = _Server((host, port), _handler_for(self))
        self.host, self.port = host, self._server.server_port
        self._thread: threading.Thread | None = None

    # --- life -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's base URL (what the server should sign for)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close upstream connections."""
        self._server.shutdown()
        self._server.server_close()
        self._pool.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control --------------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Replace the fault configuration (unnamed fields take their defaults) and reset the counters."""
        if "fault_methods" in changes:
            changes["fault_methods"] = frozenset(m.upper() for m in changes["fault_methods"])
        with self._lock:
            self.config = FaultConfig(**changes)
            self.stats = ProxyStats()

    def reset_counts(self) -> None:
        """Zero every counter, keeping the configuration."""
        with self._lock:
            self.stats = ProxyStats()

    def wait_for_ok_puts(self, count: int, timeout: float = 30.0) -> int:
        """Block until at least ``count`` PUTs succeeded upstream; returns the count reached."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.stats.ok_put_total < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"only {self.stats.ok_put_total} of {count} PUTs succeeded in {timeout}s"
                    )
                self._lock.wait(left)
            return self.stats.ok_put_total

    def wait_idle(self, timeout: float = 30.0, quiet: float = 0.5) -> None:
        """Block until no request is being handled and none started for ``quiet`` seconds.

        The quiet period matters after a client is killed: a request it had already written to a kept-alive
        connection is still in the socket buffer, and the connection's handler thread picks it up a moment
        after finishing the previous one. It was in flight at the kill and must be counted with that run.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                idle_for = time.monotonic() - self._last_start
                if not self._active and idle_for >= quiet:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._active} request(s) still in flight after {timeout}s")
                self._lock.wait(min(left, max(0.01, quiet - idle_for)))

    # --- the work -------------------------------------------------------------------------------------

    def _decide(self, path: str) -> tuple[str, float]:
        """``(fault, hold)`` for the next attempt at ``path``: fault is "", "drop" or "fail"."""
        with self._lock:
            config = self.config
            self.stats.attempts[path] += 1
            attempt = self.stats.attempts[path]
            self.stats.puts_total += 1
        name = path.rsplit("/", 1)[-1]
        hold = config.delay
        if attempt == 1 and config.hold_first and _unit(config.seed, "hold", name, 0) < config.hold_fraction:
            hold += config.hold_first
        # Attempts past the cap are never faulted: the same path cannot be hit more often than that.
        if attempt > config.max_faults_per_path:
            return "", hold
        roll = _unit(config.seed, "fault", name, attempt)
        if roll < config.drop:
            return "drop", hold
        if roll < config.drop + config.fail:
            return "fail", hold
        if roll < config.drop + config.fail + config.drop_after:
            return "drop_after", hold
        return "", hold

    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self._last_start = time.monotonic()

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            self._lock.notify_all()

    def _record(self, method: str, path: str, status: int, body: bytes, faulted: bool) -> None:
        with self._lock:
            self.stats.forwarded += 1
            if faulted:
                self.stats.statuses[status] += 1
                if 200 <= status < 300 and method == "PUT":
                    self.stats.ok_puts[path] += 1
            if not 200 <= status < 300:
                self.stats.answers.append((method, path, status, body[:4096]))
            self._lock.notify_all()

    def _count(self, what: str, method: str) -> None:
        with self._lock:
            if what == "request":
                self.stats.requests[method] += 1
            elif what == "drop":
                self.stats.dropped += 1
            elif what == "fail":
                self.stats.failed += 1
            elif what == "drop_after":
                self.stats.dropped_after += 1

    def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> urllib3.BaseHTTPResponse:
        """Send the request upstream exactly as received (Host included), minus hop-by-hop headers."""
        forwarded = urllib3.HTTPHeaderDict()
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                forwarded.add(name, value)
        return self._pool.urlopen(
            method,
            target,
            body=body if body or method in ("PUT", "POST") else None,
            headers=forwarded,
            assert_same_host=False,
            redirect=False,
            retries=False,
            preload_content=True,
            decode_content=False,
        )


def _unit(seed: int, kind: str, name: str, attempt: int) -> float:
    """A deterministic number in [0, 1) for this seed, file name and attempt."""
    digest = hashlib.blake2b(f"{seed}\0{kind}\0{name}\0{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real object store

        def log_message(self, format: str, *args: Any) -> None:  # the base class names it `format`
            pass

        def _handle(self) -> None:
            proxy._enter()
            try:
                self._proxy()
            finally:
                proxy._leave()

        def _proxy(self) -> None:
            method = self.command
            proxy._count("request", method)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) != length:  # the client went away mid-body (e.g. killed): nothing to forward
                self.close_connection = True
                return
            path = urlsplit(self.path).path
            config = proxy.config
            faulted = method in config.fault_methods and path.endswith(config.fault_path_suffix)
            fault, hold = proxy._decide(path) if faulted else ("", 0.0)
            if hold:
                time.sleep(hold)
            if fault == "drop":
                proxy._count("drop", method)
                self._hang_up()
                return
            if fault == "fail":
                proxy._count("fail", method)
                self._answer(503, [("Content-Type", "application/xml"), ("Retry-After", "0")], _SLOW_DOWN)
                return
            try:
                response = proxy.forward(method, self.path, list(self.headers.items()), body)
            except urllib3.exceptions.HTTPError as exc:
                message = f"upstream failed: {exc.__class__.__name__}: {exc}".encode()
                with proxy._lock:
                    proxy.stats.upstream_errors += 1
                    proxy.stats.answers.append((method, path, 502, message))
                self._answer(502, [("Content-Type", "text/plain")], message)
                return
            data = response.data or b""
            proxy._record(method, path, response.status, data, faulted)
            if fault == "drop_after":
                proxy._count("drop_after", method)
                self._hang_up()
                return
            headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
            self._answer(response.status, headers, data, head=method == "HEAD")

        def _hang_up(self) -> None:
            """Close at once, no answer at all: the client sees the connection die mid-request."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _answer(
            self, status: int, headers: list[tuple[str, str]], body: bytes, *, head: bool = False
        ) -> None:
            try:
                self.send_response_only(status)
                has_length = False
                for name, value in headers:
                    if name.lower() == "content-length":
                        has_length = True
                    self.send_header(name, value)
                if not has_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body and not head:
                    self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (e.g. killed mid-upload)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
