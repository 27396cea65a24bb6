"""Prometheus metrics of the upload flow, ``GET /metrics``, and the scheduled refresh of the gauges.

Counters and histograms are bumped by the services as things happen. The gauges that describe the
whole store (groups by status, bytes and objects in storage) are expensive to compute (a storage
listing), so a background thread refreshes them every ``PACS_MASK_METRICS_REFRESH_SECONDS``, never per
scrape.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``pacs-mask-server serve --workers
N`` sets up a fresh one), prometheus-client writes every process's values to files there and
``/metrics`` (answered by whichever worker) aggregates them: counters and histograms are summed, the
store gauges use ``mostrecent``. Only one worker refreshes the store gauges: the one holding an
exclusive lock on ``stats-refresh.lock`` in that directory (the lock dies with its process, and another
worker takes over at its next tick).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from litestar import Request, Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from server.security import require

if TYPE_CHECKING:
    from server.context import AppParts

log = logging.getLogger("pacs_mask.metrics")

FAILURE_REASONS = (
    "expired", "signature", "digest", "missing_object", "auth", "oversize", "storage", "object_exists",
)  # fmt: skip
GROUP_STATUSES = ("pending", "complete", "deleting")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The prefix whose usage the storage gauges report.
STORAGE_PREFIX = "mask/"
#: Buckets of the per-route request histogram: 1 ms to 30 s, dense where API calls fall.
HTTP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def multiprocess_dir() -> str | None:
    """The directory prometheus-client writes to, when it runs in multiprocess mode.

    prometheus-client chooses the mode once, when it is first imported, from the environment; what
    counts is that choice, not the variable's value now (a process may set or drop it later).
    """
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The server's metric families, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.slices_uploaded = Counter(
            "pacs_mask_slices_uploaded", "Mask slices registered by complete", registry=r
        )
        self.bytes_uploaded = Counter(
            "pacs_mask_bytes_uploaded", "Bytes of mask slices registered by complete", registry=r
        )
        self.urls_signed = Counter("pacs_mask_signed_urls", "Signed upload URLs issued", registry=r)
        self.completes = Counter("pacs_mask_group_completes", "Mask groups completed", registry=r)
        self.failures = Counter(
            "pacs_mask_upload_failures", "Upload failures by reason", ["reason"], registry=r
        )
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
        self.sign_seconds = Histogram(
            "pacs_mask_sign_seconds", "Time to sign one batch of URLs", buckets=buckets, registry=r
        )
        self.complete_seconds = Histogram(
            "pacs_mask_complete_seconds", "Time to verify and complete a group", buckets=buckets, registry=r
        )
        self.http_requests = Counter(
            "pacs_mask_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        # Labelled by route template (``/api/mask/{group_id}``), never the raw path, and not by status:
        # the label set stays bounded by the routes the app declares (unknown paths share "(no route)").
        self.http_request_seconds = Histogram(
            "pacs_mask_http_request_duration_seconds",
            "Time to answer an HTTP request (until the handler returns, body sent), by method and route",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.groups = Gauge(
            "pacs_mask_groups",
            "Mask groups by status (refreshed on a schedule)",
            ["status"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.storage_bytes = Gauge(
            "pacs_mask_storage_bytes",
            "Bytes stored under mask/ (refreshed on a schedule)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.storage_objects = Gauge(
            "pacs_mask_storage_objects",
            "Objects stored under mask/ (refreshed on a schedule)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.stats_refreshed = Gauge(
            "pacs_mask_stats_refreshed_timestamp_seconds",
            "When the group and storage gauges were last refreshed successfully (Unix time)",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.stats_refresh_errors = Counter(
            "pacs_mask_stats_refresh_errors", "Failed refreshes of the group and storage gauges", registry=r
        )
        for reason in FAILURE_REASONS:  # export every reason from the start, at 0
            self.failures.labels(reason=reason)

    def failure(self, reason: str, count: int = 1) -> None:
        """Count ``count`` failures of one reason (see ``FAILURE_REASONS``)."""
        self.failures.labels(reason=reason).inc(count)

    def exposition(self) -> bytes:
        """The text format of every metric: all workers' in multiprocess mode, else this registry's."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def refresh_stats(parts: AppParts) -> None:
    """Recompute groups by status (one query) and storage usage under ``mask/`` (a listing)."""
    from sqlalchemy import func, select

    from server.db.models import MaskGroup

    with parts.db.session() as session:
        counts = dict(
            session.execute(select(MaskGroup.status, func.count()).group_by(MaskGroup.status)).all()
        )
    usage = parts.storage.usage(STORAGE_PREFIX)
    metrics = parts.metrics
    for status in GROUP_STATUSES:
        metrics.groups.labels(status=status).set(counts.get(status, 0))
    metrics.storage_bytes.set(usage.bytes)
    metrics.storage_objects.set(usage.objects)
    metrics.stats_refreshed.set(time.time())


class StatsRefresher:
    """A daemon thread that runs :func:`refresh_stats` at start and then every ``interval`` seconds."""

    def __init__(self, parts: AppParts, interval: float) -> None:
        self.parts = parts
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: IO[str] | None = None

    def start(self) -> None:
        """Start the thread (an app startup hook); a second call does nothing."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacs-mask-stats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (an app shutdown hook, run before the database closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:  # a failed refresh (or lock) must not end the thread
                if self._is_leader():
                    refresh_stats(self.parts)
            except Exception as exc:
                self.parts.metrics.stats_refresh_errors.inc()
                log.warning(
                    "refreshing the group and storage gauges failed: %s",
                    exc,
                    extra={"event": "metrics.refresh_failed", "error": type(exc).__name__},
                )
            self._stop.wait(self.interval)

    def _is_leader(self) -> bool:
        """True in a single process; in multiprocess mode, only for the worker holding the lock."""
        directory = multiprocess_dir()
        if directory is None or self._lock_file is not None:
            return True
        try:
            import fcntl
        except ImportError:  # Windows: no multi-worker serving there, refresh anyway
            return True
        handle = Path(directory, "stats-refresh.lock").open("a", encoding="ascii")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True


@get("/metrics", guards=[require("reviewer")], include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(request: Request) -> Response[bytes]:
    """Prometheus text format, for a reviewer or admin token (Prometheus: ``authorization`` in the scrape
    config, e.g. ``pacs-mask-server create-token --name prometheus --role reviewer``)."""
    parts: AppParts = request.app.state.parts
    # Litestar appends the charset itself.
    return Response(parts.metrics.exposition(), media_type=CONTENT_TYPE_LATEST.split("; charset")[0])
