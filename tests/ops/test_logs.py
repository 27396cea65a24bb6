"""Logs: one JSON line per request and per job event, with no token or URL signature in them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from server.logs import JsonFormatter
from tests.ops.conftest import OpsEnv, backdate, md5_b64


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of the server's loggers, formatted as the server formats them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("pacs_mask.access", "pacs_mask.jobs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_line_per_request_without_secrets(ops: OpsEnv, captured: io.StringIO) -> None:
    group = ops.upload_group(1, complete=False, upload=0)
    captured.truncate(0)
    captured.seek(0)
    signed = ops.api(
        "POST",
        f"/api/mask-group/{group.id}/signed-url",
        json={"slices": [{"filename": "a.png", "size": 3, "content_md5": md5_b64(b"abc")}]},
    ).json()["urls"][0]
    put = ops.client.put(signed["url"], content=b"abc", headers=signed["headers"])
    assert put.status_code == 200
    wrong = ops.client.put(signed["url"], content=b"abd", headers=signed["headers"])
    assert wrong.status_code == 400
    refused = ops.client.get("/api/annotations", headers={"Authorization": "Bearer not-a-real-token-xyz"})
    assert refused.status_code == 401

    text = captured.getvalue()
    records = lines(captured)
    # The successful upload is a DEBUG line (one per slice adds nothing the audit log lacks); the
    # refused one is logged like any other request.
    assert len(records) == 3, text
    sign, bad_upload, denied = records
    assert sign["route"] == "/api/mask-group/{group_id}/signed-url"
    assert sign["method"] == "POST"
    assert sign["status"] == 200
    assert sign["actor"] == "ops-admin"
    assert sign["group"] == group.id
    assert isinstance(sign["duration_ms"], float)
    assert {"ts", "level", "event"} <= set(sign)
    assert bad_upload["route"] == "/storage/{key}"
    assert bad_upload["status"] == 400
    assert bad_upload["level"] == "info"
    assert bad_upload["actor"] is None
    assert denied["status"] == 401
    assert denied["actor"] is None

    signature = parse_qs(urlsplit(signed["url"]).query)["signature"][0]
    for secret in (ops.admin, signature, "not-a-real-token-xyz", "signature="):
        assert secret not in text


def test_successful_uploads_are_logged_at_debug(ops: OpsEnv, captured: io.StringIO) -> None:
    logging.getLogger("pacs_mask.access").setLevel(logging.DEBUG)
    group = ops.upload_group(1, complete=False, upload=0)
    signed = ops.api(
        "POST",
        f"/api/mask-group/{group.id}/signed-url",
        json={"slices": [{"filename": "a.png", "size": 3, "content_md5": md5_b64(b"abc")}]},
    ).json()["urls"][0]
    captured.truncate(0)
    captured.seek(0)

    assert ops.client.put(signed["url"], content=b"abc", headers=signed["headers"]).status_code == 200

    (upload,) = lines(captured)
    assert (upload["route"], upload["status"], upload["level"]) == ("/storage/{key}", 200, "debug")
    assert "signature" not in captured.getvalue()


def test_unknown_routes_are_logged_too(ops: OpsEnv, captured: io.StringIO) -> None:
    assert ops.client.get("/no/such/route?signature=abc").status_code == 404
    (record,) = lines(captured)
    assert record["route"] == "(no route)"
    assert record["status"] == 404
    assert "abc" not in captured.getvalue()


def test_job_events_are_json_lines(ops: OpsEnv, captured: io.StringIO) -> None:
    from server.jobs.cleanup import cleanup

    stale = ops.upload_group(1, complete=False, upload=1)
    backdate(ops, stale, timedelta(days=3))
    cleanup(ops.parts, apply=True)
    events = {r["event"]: r for r in lines(captured) if r["logger"] == "pacs_mask.jobs"}
    assert {"job.validate.started", "job.validate.finished", "job.cleanup.remove_pending_group"} <= set(
        events
    )
    action = events["job.cleanup.remove_pending_group"]
    assert action["actor"] == "job:cleanup"
    assert action["group"] == stale.id
    assert action["status"] == "done"


def test_formatter_drops_uvicorn_colour_copy_and_redacts() -> None:
    record = logging.makeLogRecord(
        {
            "msg": "GET /storage/k?X-Amz-Signature=deadbeef with Bearer abc.def",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "color_message": "\x1b[1mGET\x1b[0m",
        }
    )
    payload = json.loads(JsonFormatter().format(record))
    assert "color_message" not in payload
    assert "deadbeef" not in payload["msg"]
    assert "abc.def" not in payload["msg"]
