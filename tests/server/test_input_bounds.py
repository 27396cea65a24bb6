"""Every bad input is a 4xx with the one error body, on SQLite and PostgreSQL (issue 11, defects 2, 3, 4, 8).

- 2: integers a database column cannot hold (above 2**31-1 for PostgreSQL's INTEGER, above 2**63-1 for
  SQLite) used to raise overflow errors (500); they are a 422 ``invalid_value`` now, in bodies, paths
  and query parameters.
- 3: NUL and other control characters in text used to be a 500 on PostgreSQL (it cannot store NUL);
  they are a 422 wherever text is stored or filtered on. Free text keeps its line breaks.
- 4: JSON nested ~1000 levels deep used to be a 500 (RecursionError); any body deeper than the bound is
  a 400 ``json_too_deep``.
- 8: the API document lists each route's error statuses with the real error body.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from server.contract.naming import INT32_MAX
from server.request import MAX_JSON_DEPTH, json_depth_exceeds
from tests.server.conftest import (
    ALL_DBS,
    ERROR_KEYS,
    Server,
    assert_error,
    complete,
    create_annotation,
    create_group,
    make_slices,
    upload,
    uploaded_group,
)

OVERSIZE = [2**31, 2**63]
NUL_TEXTS = ["a\x00b", "escape\x1b", "del\x7f"]
ZERO_GROUP = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def seeded(app_client: Server) -> dict[str, Any]:
    """A complete group (with viewable slices) and a pending group whose slices are uploaded."""
    annotation_id, pending, pending_slices = uploaded_group(app_client, 2)
    done = create_group(app_client, annotation_id, version="done")
    slices = make_slices(2)
    upload(app_client, done["id"], slices)
    assert complete(app_client, done["id"], slices).status_code == 200
    return {
        "annotation_id": annotation_id,
        "pending": pending["id"],
        "pending_slices": pending_slices,
        "done": done["id"],
        "before": app_client.snapshot(),
    }


def _json(server: Server, method: str, path: str, body: Any, role: str = "admin") -> Any:
    return server.api(method, path, role=role, json=body)


# --- 2: integers -------------------------------------------------------------------------------------


def _oversize_requests(seed: dict[str, Any], value: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, request kwargs)`` that each carry ``value`` where an ``Integer`` column is read."""
    complete_slice = seed["pending_slices"][0].to_complete()
    group, done = seed["pending"], seed["done"]
    return [
        ("GET", f"/api/annotations/{value}", {}),
        ("GET", f"/api/annotations/{value}/series", {}),
        ("GET", f"/api/mask-group/{value}", {}),
        ("GET", "/api/audit", {"params": {"annotation_id": value}}),
        ("GET", f"/api/mask-group/{done}/view", {"params": {"slice_index": value}}),
        (
            "POST",
            "/api/mask-group",
            {"json": {"annotation_id": value, "model_name": "m", "version": "9", "source": "ai"}},
        ),
        ("POST", f"/api/mask-group/{group}/complete", {"json": {"slices": [complete_slice | {"slice_index": value}]}}),
        ("POST", f"/api/mask-group/{group}/complete", {"json": {"slices": [complete_slice | {"width": value}]}}),
        ("POST", f"/api/mask-group/{group}/complete", {"json": {"slices": [complete_slice | {"height": value}]}}),
        (
            "POST",
            f"/api/mask-group/{group}/signed-url",
            {"json": {"slices": [seed["pending_slices"][0].to_sign() | {"slice_index": value}]}},
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("db_kind", ALL_DBS)
@pytest.mark.parametrize("value", OVERSIZE)
def test_an_integer_no_column_can_hold_is_422_everywhere(
    app_client: Server, seeded: dict[str, Any], value: int
) -> None:
    for method, path, kwargs in _oversize_requests(seeded, value):
        response = app_client.api(method, path, **kwargs)
        body = assert_error(response, 422, "invalid_value")
        assert str(INT32_MAX) in body["message"] or "out of range" in body["message"], (path, body)
    assert app_client.snapshot() == seeded["before"]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_the_largest_integer_a_column_holds_is_accepted(app_client: Server, seeded: dict[str, Any]) -> None:
    assert_error(app_client.api("GET", f"/api/annotations/{INT32_MAX}"), 404, "annotation_not_found")
    assert_error(app_client.api("GET", f"/api/mask-group/{INT32_MAX}"), 404, "annotation_not_found")
    assert app_client.api("GET", "/api/audit", params={"annotation_id": INT32_MAX}).json() == {"items": []}
    view = app_client.api("GET", f"/api/mask-group/{seeded['done']}/view", params={"slice_index": INT32_MAX})
    assert_error(view, 404, "slice_not_found")


@pytest.mark.parametrize("db_kind", ALL_DBS)
@pytest.mark.parametrize("search", [str(2**31), str(2**63), "9" * 5000, "²", "٣"])
def test_searching_for_a_number_no_id_can_be_finds_nothing_instead_of_failing(
    app_client: Server, search: str
) -> None:
    create_annotation(app_client)
    response = app_client.api("GET", "/api/annotations", params={"search": search[:200]})
    assert response.status_code == 200, response.text
    assert response.json() == {"items": []}


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_a_completed_upload_with_an_index_too_large_is_refused_and_the_group_stays_pending(
    app_client: Server,
) -> None:
    """The CLI's real case: ``mask_9223372036854775808.png`` used to end in five 500s from ``complete``."""
    _annotation_id, group, slices = uploaded_group(app_client, 1)
    body = {"slices": [slices[0].to_complete() | {"slice_index": 9223372036854775808}]}
    response = app_client.api("POST", f"/api/mask-group/{group['id']}/complete", role="uploader", json=body)
    assert_error(response, 422, "invalid_value")
    assert app_client.api("GET", f"/api/mask/{group['id']}").json()["group"]["status"] == "pending"


# --- 3: control characters ---------------------------------------------------------------------------


def _text_requests(seed: dict[str, Any], text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, request kwargs)`` that each carry ``text`` where text is stored or filtered on."""
    annotation = {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4"}
    group = {"annotation_id": seed["annotation_id"], "model_name": "m", "version": "9", "source": "ai"}
    complete_slice = seed["pending_slices"][0].to_complete()
    return [
        ("POST", "/api/annotations", {"json": annotation | {"description": text}}),
        ("POST", "/api/annotations", {"json": annotation | {"patient_id": text}}),
        ("POST", "/api/annotations/from-pacs", {"json": {"series_instance_uid": "1.2.3", "description": text}}),
        ("GET", "/api/annotations", {"params": {"search": text}}),
        ("POST", "/api/mask-group", {"json": group | {"model_name": text}}),
        ("POST", "/api/mask-group", {"json": group | {"version": text}}),
        ("POST", f"/api/mask-group/{seed['pending']}/complete", {"json": {"slices": [complete_slice | {"label": text}]}}),
        ("POST", f"/api/mask-group/{seed['done']}/review", {"json": {"decision": "rejected", "comment": text}}),
        ("GET", f"/api/mask-group/{seed['done']}/view", {"params": {"filename": text}}),
        ("GET", "/api/audit", {"params": {"actor": text}}),
        ("GET", "/api/audit", {"params": {"group_id": text}}),
        ("DELETE", f"/api/tokens/{quote(text, safe='')}", {}),
        ("POST", "/api/admin/validate", {"params": {"group_id": text}}),
    ]  # fmt: skip


@pytest.mark.parametrize("db_kind", ALL_DBS)
@pytest.mark.parametrize("text", NUL_TEXTS)
def test_control_characters_are_422_wherever_text_is_stored_or_filtered_on(
    app_client: Server, seeded: dict[str, Any], text: str
) -> None:
    for method, path, kwargs in _text_requests(seeded, text):
        response = app_client.api(method, path, **kwargs)
        body = assert_error(response, 422, "invalid_value")
        assert "control characters" in body["message"], (method, path, body)
    assert app_client.snapshot() == seeded["before"]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_free_text_keeps_its_line_breaks_and_tabs(app_client: Server, seeded: dict[str, Any]) -> None:
    description = "Liver, arterial phase.\r\nSecond line\twith a tab."
    created = app_client.api(
        "POST",
        "/api/annotations",
        json={"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "description": description},
    )
    assert created.status_code == 201, created.text
    assert (
        app_client.api("GET", f"/api/annotations/{created.json()['id']}").json()["description"] == description
    )
    comment = "Slice 3 misses the tumour.\nSlice 4 too."
    review = app_client.api(
        "POST", f"/api/mask-group/{seeded['done']}/review", json={"decision": "rejected", "comment": comment}
    )
    assert review.status_code == 200, review.text
    assert review.json()["review_comment"] == comment
    for patient_id in ("P\n1", "P1\n", "P\t1"):  # one-line text: no line break, not even a final one
        one_line = app_client.api(
            "POST",
            "/api/annotations",
            json={"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "patient_id": patient_id},
        )
        assert_error(one_line, 422, "invalid_value")


# --- 4: JSON depth -----------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_json_nested_deeper_than_the_bound_is_400(app_client: Server) -> None:
    before = app_client.snapshot()
    for path in ("/api/annotations", "/api/mask-group", f"/api/mask-group/{ZERO_GROUP}/complete"):
        for depth in (MAX_JSON_DEPTH + 1, 900, 1000, 5000, 100_000):
            response = app_client.api(
                "POST", path, content=_nested(depth), headers={"Content-Type": "application/json"}
            )
            body = assert_error(response, 400, "json_too_deep")
            assert str(MAX_JSON_DEPTH) in body["message"], (path, depth)
    assert app_client.snapshot() == before


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_deep_nesting_inside_group_params_is_400_and_the_bound_itself_is_fine(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)

    def group_with_params(depth: int, version: str) -> Any:
        params: Any = "leaf"
        for _ in range(depth - 1):  # the body object is the first level
            params = {"x": params}
        body = {"annotation_id": annotation_id, "model_name": "m", "version": version, "source": "ai"}
        raw = json.dumps(body | {"params": params}).encode()
        return app_client.api(
            "POST", "/api/mask-group", content=raw, headers={"Content-Type": "application/json"}
        )

    assert_error(group_with_params(950, "1"), 400, "json_too_deep")
    assert_error(group_with_params(MAX_JSON_DEPTH + 1, "2"), 400, "json_too_deep")
    accepted = group_with_params(MAX_JSON_DEPTH, "3")
    assert accepted.status_code == 201, accepted.text


def test_the_depth_check_counts_lists_and_objects_and_needs_no_recursion() -> None:
    assert not json_depth_exceeds("text", 1)
    assert not json_depth_exceeds([], 1)
    assert json_depth_exceeds([[]], 1)
    assert not json_depth_exceeds({"a": [{"b": 1}], "c": [1, 2]}, 3)
    assert json_depth_exceeds({"a": [{"b": []}]}, 3)
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth_exceeds(deep, MAX_JSON_DEPTH)


# --- 8: the API document -----------------------------------------------------------------------------


def _operations(app_client: Server) -> dict[tuple[str, str], dict[str, Any]]:
    document = app_client.client.get("/schema/openapi.json").json()
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    }


def test_every_error_response_in_the_document_is_the_real_error_body(app_client: Server) -> None:
    document = app_client.client.get("/schema/openapi.json").json()
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == ERROR_KEYS
    assert "status_code" not in json.dumps(document["paths"]), "Litestar's default error body is documented"
    for (method, path), operation in _operations(app_client).items():
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/health":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_the_document_lists_the_statuses_each_kind_of_route_answers(app_client: Server) -> None:
    operations = _operations(app_client)
    assert len(operations) >= 15
    for (method, path), operation in operations.items():
        statuses = {int(s) for s in operation["responses"]}
        if path != "/health":
            assert 401 in statuses, (method, path)
        if "{" in path:
            assert 404 in statuses, (method, path)
        if "requestBody" in operation:
            assert {400, 413, 422} <= statuses, (method, path)
    expected = {
        ("POST", "/api/mask-group"): {201, 400, 401, 404, 409, 413, 422},
        ("POST", "/api/mask-group/{group_id}/signed-url"): {200, 400, 401, 403, 404, 409, 413, 422},
        ("POST", "/api/mask-group/{group_id}/complete"): {200, 400, 401, 403, 404, 409, 413, 422, 503},
        ("GET", "/api/mask-group/{group_id}/view"): {200, 400, 401, 404, 409, 422, 503},
        ("DELETE", "/api/mask-group/{group_id}"): {200, 400, 401, 403, 404, 503},
        ("GET", "/api/tokens"): {200, 401, 403},
        ("GET", "/health"): {200, 503},
    }
    for key, statuses in expected.items():
        assert {int(s) for s in operations[key]["responses"]} == statuses, key
    view = operations[("GET", "/api/mask-group/{group_id}/view")]["responses"]["200"]
    assert list(view["content"]) == ["image/png"]
