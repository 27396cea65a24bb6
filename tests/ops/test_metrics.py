"""``/metrics``: counters move with a real flow, the store gauges refresh on a schedule (not per
scrape), several workers aggregate through prometheus-client's multiprocess mode, and every metric
the Grafana dashboard and the alert rules query is exported."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.cli import prepare_metrics_dir
from server.metrics import FAILURE_REASONS, MULTIPROC_ENV
from server.storage.base import Storage, Usage
from tests.ops.conftest import PUBLIC_URL, OpsEnv, md5_b64
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pacs-masks-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "pacs-masks-alerts.yml"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: Any, token: str) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_counters_and_histograms_move_with_a_real_flow(ops: OpsEnv) -> None:
    before = scrape(ops.client, ops.admin)
    group = ops.upload_group(3)
    # Failures: no token (auth), a reviewer-only call by an uploader (auth), a corrupted PUT (digest),
    # and a complete before the upload landed (missing_object).
    assert ops.client.get("/api/annotations").status_code == 401
    assert ops.api("GET", "/api/audit", token=ops.token("uploader")).status_code == 403
    pending = ops.upload_group(1, complete=False, upload=0)
    signed = ops.api(
        "POST",
        f"/api/mask-group/{pending.id}/signed-url",
        json={"slices": [{"filename": "x.png", "size": 3, "content_md5": md5_b64(b"abc")}]},
    ).json()["urls"][0]
    assert ops.client.put(signed["url"], content=b"abd", headers=signed["headers"]).status_code == 400
    missing = ops.api(
        "POST",
        f"/api/mask-group/{pending.id}/complete",
        json={
            "slices": [{"filename": "x.png", "slice_index": 0, "width": 1, "height": 1, "checksum": "0" * 32}]
        },
    )
    assert missing.status_code == 409
    after = scrape(ops.client, ops.admin)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pacs_mask_slices_uploaded_total") == 3
    assert delta("pacs_mask_bytes_uploaded_total") == sum(len(b) for b in group.bodies)
    assert delta("pacs_mask_signed_urls_total") == 3 + 1 + 1
    assert delta("pacs_mask_group_completes_total") == 1
    assert delta("pacs_mask_upload_failures_total", reason="auth") == 2
    assert delta("pacs_mask_upload_failures_total", reason="digest") == 1
    assert delta("pacs_mask_upload_failures_total", reason="missing_object") == 1
    assert delta("pacs_mask_sign_seconds_count") == 3
    assert delta("pacs_mask_complete_seconds_count") == 1
    assert delta("pacs_mask_sign_seconds_bucket", le="+Inf") == 3
    route = "/api/mask-group/{group_id}/complete"
    assert delta("pacs_mask_http_requests_total", method="POST", route=route, status="200") == 1
    assert delta("pacs_mask_http_requests_total", method="POST", route=route, status="409") == 1
    for reason in FAILURE_REASONS:  # every reason is exported, even at zero
        assert ("pacs_mask_upload_failures_total", (("reason", reason),)) in after


def test_every_route_has_a_request_duration_histogram_labelled_by_template(ops: OpsEnv) -> None:
    """p50/p99 of any call can be read from ``/metrics``; labels are route templates, never raw paths
    (one group id per label value would grow without bound), and methods outside HTTP's usual set are
    counted together."""
    before = scrape(ops.client, ops.admin)
    group = ops.upload_group(2)
    assert ops.api("GET", f"/api/mask/{group.id}").status_code == 200
    assert ops.api("GET", "/api/no-such-route/123").status_code == 404
    assert ops.client.request("BREW", "/api/annotations").status_code in (401, 405)
    after = scrape(ops.client, ops.admin)
    name = "pacs_mask_http_request_duration_seconds"

    def delta(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    complete = {"method": "POST", "route": "/api/mask-group/{group_id}/complete"}
    assert delta(f"{name}_count", **complete) == 1
    assert delta(f"{name}_bucket", le="+Inf", **complete) == 1
    assert delta(f"{name}_sum", **complete) > 0
    assert delta(f"{name}_count", method="POST", route="/api/mask-group/{group_id}/signed-url") >= 1
    assert delta(f"{name}_count", method="GET", route="/api/mask/{group_id}") == 1
    assert delta(f"{name}_count", method="GET", route="(no route)") == 1
    counts = {labels: v for (sample, labels), v in after.items() if sample == f"{name}_count"}
    others = sum(
        v - before.get((f"{name}_count", labels), 0.0)
        for labels, v in counts.items()
        if ("method", "OTHER") in labels
    )
    assert others == 1
    routes = {dict(labels)["route"] for labels in counts}
    assert not any(str(group.id) in route or "123" in route for route in routes), routes
    assert "BREW" not in {dict(labels)["method"] for labels in counts}


class CountingStorage(Storage):
    """Delegates to a real backend and counts ``usage`` calls."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = inner.name
        self.usage_calls = 0

    def usage(self, prefix: str) -> Usage:
        self.usage_calls += 1
        return self.inner.usage(prefix)

    def presign_put(self, key: str, **kwargs: Any) -> Any:
        return self.inner.presign_put(key, **kwargs)

    def presign_get(self, key: str, **kwargs: Any) -> Any:
        return self.inner.presign_get(key, **kwargs)

    def stat(self, key: str) -> Any:
        return self.inner.stat(key)

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Any:
        return self.inner.open(key, chunk_size)

    def list(self, prefix: str) -> Any:
        return self.inner.list(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def check(self) -> None:
        self.inner.check()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_metrics_need_a_reviewer_or_admin_token(ops: OpsEnv) -> None:
    """Every call is authenticated: Prometheus scrapes with a reviewer (or admin) token."""
    assert ops.client.get("/metrics").status_code == 401
    assert ops.api("GET", "/metrics", token=ops.token("uploader")).status_code == 403
    assert ops.api("GET", "/metrics", token=ops.token("reviewer")).status_code == 200


def test_store_gauges_refresh_on_a_schedule_not_per_scrape(ops: OpsEnv) -> None:
    ops.upload_group(2)
    ops.upload_group(1, complete=False, upload=1)
    slow = ops.settings.model_copy(update={"metrics_refresh_seconds": 3600.0})
    storage = CountingStorage(ops.parts.storage)
    with TestClient(create_app(slow, storage=storage), base_url=PUBLIC_URL) as client:
        wait_for(lambda: storage.usage_calls == 1)  # once at startup
        wait_for(lambda: value(scrape(client, ops.admin), "pacs_mask_storage_objects") == 3)
        for _ in range(5):
            got = scrape(client, ops.admin)
        assert storage.usage_calls == 1, "a scrape must not list storage"
        assert value(got, "pacs_mask_groups", status="complete") == 1
        assert value(got, "pacs_mask_groups", status="pending") == 1
        assert value(got, "pacs_mask_groups", status="deleting") == 0
        assert value(got, "pacs_mask_storage_bytes") == sum(i.size for i in ops.parts.storage.list("mask/"))
        assert value(got, "pacs_mask_stats_refreshed_timestamp_seconds") > time.time() - 60

    fast = ops.settings.model_copy(update={"metrics_refresh_seconds": 0.05})
    storage = CountingStorage(ops.parts.storage)
    with TestClient(create_app(fast, storage=storage), base_url=PUBLIC_URL) as client:
        wait_for(lambda: storage.usage_calls >= 3)
        ops.upload_group(1)
        wait_for(lambda: value(scrape(client, ops.admin), "pacs_mask_groups", status="complete") == 2)
    calls = storage.usage_calls
    time.sleep(0.2)
    assert storage.usage_calls == calls, "the refresh thread must stop with the app"


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bpacs_mask_[a-z0-9_]+", text))


def test_dashboard_and_alerts_query_only_exported_metrics(ops: OpsEnv) -> None:
    ops.upload_group(1)
    ops.client.get("/api/annotations")  # one labelled request counter sample at least
    exported = {name for name, _labels in scrape(ops.client, ops.admin)}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        t["expr"]
        for p in dashboard["panels"]
        for t in p.get("targets", [])
        if t.get("datasource", {}).get("type") == "prometheus"
    ]
    assert exprs
    queried = set().union(*(_metric_names(e) for e in exprs))
    assert queried, "the dashboard queries no pacs_mask metric"
    assert not queried - exported, (
        f"the dashboard queries metrics the server does not export: {queried - exported}"
    )
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "upload rate",
        "failures by reason",
        "sign latency",
        "complete latency",
        "storage",
        "groups by status",
    ):
        assert topic in titles
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"][0]["rules"]
    alerted = set().union(*(_metric_names(r["expr"]) for r in rules))
    assert not alerted - exported, f"alert rules query unknown metrics: {alerted - exported}"


def test_prepare_metrics_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert prepare_metrics_dir(1) is None
    assert MULTIPROC_ENV not in os.environ
    made = prepare_metrics_dir(3)
    try:
        assert made is not None
        assert made.is_dir()
        assert os.environ[MULTIPROC_ENV] == str(made)
    finally:
        monkeypatch.delenv(MULTIPROC_ENV)
        made and made.rmdir()
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    assert prepare_metrics_dir(4) is None  # the operator's directory: emptied of .db files, kept
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_several_workers_aggregate_their_metrics(tmp_path: Path) -> None:
    """A real ``pacs-mask-server serve --workers 2``: counts from every worker appear in one scrape."""
    port = _free_port()
    prom = tmp_path / "prom"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_MASK_")}
    env |= {
        "PACS_MASK_DATA_DIR": str(tmp_path / "data"),
        "PACS_MASK_METRICS_REFRESH_SECONDS": "0.2",
        MULTIPROC_ENV: str(prom),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        wait_for(lambda: len({p.name.split("_")[-1] for p in prom.glob("counter_*.db")}) >= 2, timeout=30)
        auth = {"Authorization": "Bearer " + (tmp_path / "data" / "admin.token").read_text().strip()}
        for _ in range(30):  # a new connection each time, so both workers take some
            assert httpx.get(f"{base}/api/annotations", headers={"Connection": "close"}).status_code == 401
        for _ in range(6):
            got = samples(httpx.get(f"{base}/metrics", headers={"Connection": "close", **auth}).text)
            assert value(got, "pacs_mask_upload_failures_total", reason="auth") == 30
            assert (
                value(
                    got, "pacs_mask_http_requests_total", method="GET", route="/api/annotations", status="401"
                )
                == 30
            )
        refreshed = ("pacs_mask_groups", (("status", "pending"),))
        wait_for(lambda: refreshed in samples(httpx.get(f"{base}/metrics", headers=auth).text), timeout=20)
        assert (prom / "stats-refresh.lock").exists()
    finally:
        stop_process(proc, grace=20)
        log.close()
