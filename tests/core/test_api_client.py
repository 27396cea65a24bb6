"""ApiClient speaks the wire contract: answers decoded strictly into its structs, requests encoded from them.

The server is replaced by an ``httpx.MockTransport`` so the exact bytes sent and the reaction to an
answer of the wrong shape can be checked (the real app's answers are checked in
``tests/server/test_contract.py``).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat

from pacs_mask_desktop.core.api_client import ApiClient, ApiError, _tls_context
from server.contract import messages
from server.contract.errors import ErrorCode

GROUP = {
    "id": "7d0d3c5e-5d0c-4a55-9d1e-3f1f0a3b9c11", "annotation_id": 3, "model_name": "m", "version": "1",
    "source": "ai", "status": "pending", "expected_slices": None, "confidence": None, "params": None,
    "created_by": "alice", "created_at": "2026-11-30T22:00:00.123456Z", "completed_at": None,
    "slice_count": 0, "review_status": None, "review_comment": None, "reviewed_by": None, "reviewed_at": None,
}  # fmt: skip
ANNOTATION = {
    "id": 3, "study_instance_uid": "1.2", "series_instance_uid": "1.2.3", "patient_id": None, "description": None,
    "created_by": "alice", "created_at": "2026-11-30T22:00:00Z",
}  # fmt: skip


def client(handler: Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    api = ApiClient("http://server.test", "token", attempts=1)
    api._http = httpx.Client(
        base_url=api.base_url, headers=api._http.headers, transport=httpx.MockTransport(handler)
    )
    return api


def test_an_answer_is_a_struct_with_datetimes_and_defaults() -> None:
    with client(lambda _request: httpx.Response(200, json={"items": [GROUP]})) as api:
        (group,) = api.list_groups(3)
    assert isinstance(group, messages.GroupOut)
    assert (group.id, group.status, group.created_at.year, group.findings) == (
        GROUP["id"],
        "pending",
        2026,
        [],
    )


def test_an_answer_of_another_shape_is_an_api_error_not_a_key_error_later() -> None:
    broken = {k: v for k, v in GROUP.items() if k != "status"}
    with client(lambda _request: httpx.Response(200, json=broken)) as api, pytest.raises(ApiError) as caught:
        api.get_annotation(3)
    assert caught.value.code == ErrorCode.MALFORMED_ANSWER
    assert "GET /api/annotations/3" in caught.value.message


def test_request_bodies_are_encoded_from_structs_and_dicom_values_go_as_plain_json() -> None:
    sent: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == "Bearer token"
        sent.append(json.loads(request.content))
        if request.url.path == "/api/annotations":
            return httpx.Response(201, json=ANNOTATION)
        return httpx.Response(201, json=GROUP | {"status": "complete"})

    with client(handler) as api:
        api.create_group(
            messages.GroupCreate(annotation_id=3, model_name="m", version="1", source="ai", confidence=0.5)
        )
        api.review(GROUP["id"], "rejected", "edge", findings=[messages.FindingIn(slice_index=2, comment="x")])
        geometry = {
            "series_instance_uid": UID("1.2.3"),
            "rows": IS("4"),
            "spacing": [DSfloat("0.5"), np.float64(2)],
        }
        api.create_annotation(UID("1.2"), UID("1.2.3"), series=geometry)  # type: ignore[arg-type]  # a dict on purpose
    assert sent[0] == {
        "annotation_id": 3, "model_name": "m", "version": "1", "source": "ai", "expected_slices": None,
        "confidence": 0.5, "params": None, "labels": None,
    }  # fmt: skip
    assert sent[1] == {
        "decision": "rejected", "comment": "edge",
        "findings": [{"slice_index": 2, "label": None, "comment": "x"}], "override_four_eyes": False,
    }  # fmt: skip
    assert sent[2]["series"] == {"series_instance_uid": "1.2.3", "rows": 4, "spacing": [0.5, 2.0]}
    assert (sent[2]["study_instance_uid"], sent[2]["patient_id"]) == ("1.2", None)


def test_a_value_with_no_json_form_is_refused_before_anything_is_sent() -> None:
    with (
        client(lambda _request: pytest.fail("nothing may be sent")) as api,
        pytest.raises(TypeError, match="cannot send a object to the server"),
    ):
        api.create_group({"params": object()})  # type: ignore[arg-type]


def test_a_plain_http_server_gets_a_tls_context_that_trusts_nobody_and_https_the_default() -> None:
    """No CA bundle is loaded for a plain-http server (start-up time), and nothing is trusted instead:
    should TLS ever happen through that client, it fails closed. https keeps httpx's verification."""
    plain = _tls_context("http://127.0.0.1:8000")
    assert isinstance(plain, ssl.SSLContext)
    assert (plain.verify_mode, plain.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert _tls_context("HTTPS://masks.clinic.example") is True
