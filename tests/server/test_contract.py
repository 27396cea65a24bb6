"""The wire contract (``server.contract``): one definition of the rules and bodies both sides use.

The rules (file names, slice indexes, group fields) are asserted on the single definition the client
and the server both import; the structs are held to the JSON the real app sends: every answer the
desktop client decodes re-encodes to the very bytes the server wrote (no field lost, renamed or
reshaped), and every error code the server's source raises is an :class:`ErrorCode`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

import server
from pacs_mask_desktop.core import plan
from server.contract import messages
from server.contract.errors import ErrorCode
from server.contract.groups import (
    LARGE_BODY_MAX_BYTES,
    MAX_SLICES,
    MODEL_NAME_MAX,
    VERSION_MAX,
    group_fields_problems,
)
from server.contract.naming import (
    INT32_MAX,
    MAX_SLICE_INDEX,
    content_type_problem,
    filename_problem,
    parse_id,
    slice_index_problem,
)
from tests.server.conftest import ALL_DBS, Server, create_annotation, create_group
from tests.server.review_data import annotation, geometry, upload_group
from tests.server.test_compare import hand_pair

# --- file names and integer ranges --------------------------------------------------------------------

ACCEPTED = ["mask_0000.png", "MASK-12.PNG", "a.png", "slice.7.png", "x" * 124 + ".png", "0.png", "_under.png",
            "-dash.png", "console.png", "mask..png"]  # fmt: skip
REFUSED = {
    "x" * 125 + ".png": "1-128 characters",
    ".hidden.png": "must not start with a dot",
    "../up.png": "1-128 characters",
    "a/b.png": "1-128 characters",
    "a\\b.png": "1-128 characters",
    "space name.png": "1-128 characters",
    "ünïcode.png": "1-128 characters",
    "mask\x00.png": "1-128 characters",
    "a:b.png": "1-128 characters",
    "": "1-128 characters",
    "mask.jpg": "only .png files",
    "mask.png.exe": "only .png files",
    "mask": "only .png files",
    "con.png": "reserved on Windows",
    "NUL.png": "reserved on Windows",
    "lpt1.png": "reserved on Windows",
    "com9.PNG": "reserved on Windows",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_a_good_slice_name_is_accepted(name: str) -> None:
    assert filename_problem(name) is None


@pytest.mark.parametrize(("name", "why"), REFUSED.items())
def test_a_bad_slice_name_is_refused_saying_why(name: str, why: str) -> None:
    problem = filename_problem(name)
    assert problem is not None
    assert why in problem


def test_the_client_checks_names_with_the_contract_itself() -> None:
    """No copy to keep in step: the planner calls the very function the server calls."""
    assert plan.filename_problem is filename_problem
    assert plan.slice_index_problem is slice_index_problem


def test_slice_indexes_and_ids_are_bounded_by_a_postgresql_integer() -> None:
    assert MAX_SLICE_INDEX == INT32_MAX == 2**31 - 1
    assert slice_index_problem(0) is None
    assert slice_index_problem(MAX_SLICE_INDEX) is None
    assert "too large" in (slice_index_problem(MAX_SLICE_INDEX + 1) or "")
    assert "negative" in (slice_index_problem(-1) or "")
    assert [parse_id(t) for t in ("0", "42", "0" * 30 + "42", str(INT32_MAX))] == [0, 42, 42, INT32_MAX]
    assert [parse_id(t) for t in (str(INT32_MAX + 1), "²", "-1", "1e3", "", " 1")] == [None] * 6


def test_content_type_follows_the_extension() -> None:
    assert content_type_problem("a.png", "image/png") is None
    assert "must be 'image/png'" in (content_type_problem("a.PNG", "image/jpeg") or "")


# --- the rules of a new group ----------------------------------------------------------------------------


def test_group_fields_accept_what_the_server_accepts() -> None:
    assert group_fields_problems(1, "m" * MODEL_NAME_MAX, "v" * VERSION_MAX, "ai", 0.5, {"t": [1]}) == []
    assert group_fields_problems(INT32_MAX, "m", "1", "manual", None, None) == []


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ((0, "m", "1", "ai", None, None), "annotation_id must be a positive integer"),
        ((INT32_MAX + 1, "m", "1", "ai", None, None), "annotation_id must be a positive integer"),
        ((True, "m", "1", "ai", None, None), "annotation_id must be a positive integer"),
        ((1, "  ", "1", "ai", None, None), "model_name is required"),
        ((1, "m" * (MODEL_NAME_MAX + 1), "1", "ai", None, None), f"at most {MODEL_NAME_MAX} characters"),
        ((1, "m", "v\x7f", "ai", None, None), "without control characters"),
        ((1, "m", "1", "robot", None, None), "source must be 'manual' or 'ai'"),
        ((1, "m", "1", "ai", 1.5, None), "confidence must be between 0 and 1"),
        ((1, "m", "1", "ai", None, [1]), "params must be a JSON object"),
        ((1, "m", "1", "ai", None, {"x": float("nan")}), "params must be plain JSON"),
    ],
)
def test_group_fields_the_server_would_refuse_are_named(fields: tuple[Any, ...], said: str) -> None:
    (problem,) = group_fields_problems(*fields)
    assert said in problem


def test_group_create_struct_is_built_from_the_same_limits() -> None:
    ok = {"annotation_id": 1, "model_name": "m" * MODEL_NAME_MAX, "version": "1", "source": "ai"}
    msgspec.convert(ok, messages.GroupCreate)
    for wrong in ({"model_name": "m" * (MODEL_NAME_MAX + 1)}, {"version": "v" * (VERSION_MAX + 1)},
                  {"expected_slices": MAX_SLICES + 1}, {"source": "robot"}, {"extra": 1}):  # fmt: skip
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(ok | wrong, messages.GroupCreate)


# --- error codes -------------------------------------------------------------------------------------------

_RAISED = re.compile(r"""(?:\bcode=|\bcode = |"error": )"([a-z_]+)"|ErrorCode\.([A-Z_]+)""")


def test_every_error_code_the_server_raises_is_in_the_contract() -> None:
    """A code written as a bare string anywhere in the server must still be one of the contract's."""
    root = Path(server.__file__).parent
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        if "contract" in path.parts:
            continue
        for literal, member in _RAISED.findall(path.read_text(encoding="utf-8")):
            found.setdefault(literal or ErrorCode[member].value, set()).add(str(path.relative_to(root)))
    unknown = {code: where for code, where in found.items() if code not in set(ErrorCode)}
    assert not unknown, f"error codes missing from server.contract.errors.ErrorCode: {unknown}"
    assert len(found) > 50  # the scan really read the server's source


def test_error_codes_compare_equal_to_the_strings_on_the_wire() -> None:
    assert ErrorCode.GROUP_NOT_FOUND == "group_not_found"
    assert msgspec.json.encode({"error": ErrorCode.FOUR_EYES}) == b'{"error":"four_eyes"}'


# --- the structs hold the JSON the real app sends --------------------------------------------------------


def _same_json(response: Any, answer: type[Any]) -> Any:
    """Decode the app's answer as the client does; re-encoded, it must be the very bytes sent."""
    assert response.status_code in (200, 201), response.text
    decoded = msgspec.json.decode(response.content, type=answer)
    assert msgspec.json.encode(decoded) == response.content
    return decoded


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_every_answer_the_client_decodes_is_the_servers_json_byte_for_byte(app_client: Server) -> None:
    server = app_client
    a, b = hand_pair()
    annotation_id = annotation(server, geometry(3, 4, pixel_spacing=(10.0, 10.0), step=10.0), "contract")
    group_a = upload_group(server, annotation_id, a, [0, 1], version="a")
    group_b = upload_group(server, annotation_id, b, [0, 1, 2], version="b")

    def get(path: str, answer: type[Any], **params: Any) -> Any:
        return _same_json(server.api("GET", path, params=params), answer)

    assert get("/health", messages.Health).status == "ok"
    assert get("/api/config", messages.ClientConfig).role == "admin"
    assert get(f"/api/annotations/{annotation_id}", messages.AnnotationOut).has_geometry
    assert len(get("/api/annotations", messages.AnnotationList).items) == 1
    assert len(get(f"/api/annotations/{annotation_id}/series", messages.SeriesGeometry).instances) == 3
    found = get(f"/api/mask/{group_a['id']}", messages.MaskList)
    assert (found.group.status, [m.slice_index for m in found.items]) == ("complete", [0, 1])
    assert found.group.volumes is not None  # computed when first opened
    assert len(get(f"/api/mask-group/{annotation_id}", messages.GroupList).items) == 2
    comparison = get(f"/api/mask-group/{group_a['id']}/compare/{group_b['id']}", messages.Comparison)
    assert comparison.totals.voxels_a > 0

    reviewer = server.token("reviewer", "rita")
    reviewed = server.api(
        "POST",
        f"/api/mask-group/{group_b['id']}/review",
        token=reviewer,
        content=msgspec.json.encode(
            messages.ReviewRequest(
                decision="rejected",
                comment="edge",
                findings=[messages.FindingIn(slice_index=1, label=None, comment="missed")],
            )
        ),
        headers={"Content-Type": "application/json"},
    )
    group = _same_json(reviewed, messages.GroupOut)
    assert (group.review_status, group.findings[0].comment, group.reviews[0].reviewed_by) == (
        "rejected", "missed", "rita",
    )  # fmt: skip
    queue = get("/api/review/queue", messages.ReviewQueue)
    assert [item.id for item in queue.items] == [group_a["id"]]
    assert get("/api/audit", messages.AuditList, annotation_id=annotation_id).items

    pending = upload_group(server, annotation_id, a, [0], version="pending", complete=False)
    assert pending["status"] == "pending"
    msgspec.convert(pending, messages.GroupOut)  # the create answer is a GroupOut too
    deleted = _same_json(server.api("DELETE", f"/api/mask-group/{pending['id']}"), messages.DeleteResult)
    assert deleted.id == pending["id"]


def test_a_request_built_from_structs_is_what_the_server_accepts(app_client: Server) -> None:
    """The bodies ``ApiClient`` encodes from structs (signing here) pass the server's own validation."""
    server = app_client
    annotation_id = annotation(server, None)
    created = server.api(
        "POST",
        "/api/mask-group",
        role="uploader",
        content=msgspec.json.encode(
            messages.GroupCreate(annotation_id=annotation_id, model_name="m", version="1", source="manual")
        ),
        headers={"Content-Type": "application/json"},
    )
    group = _same_json(created, messages.GroupOut)
    body = messages.SignRequest(
        slices=[messages.SliceToSign(filename="m_0000.png", size=10, content_md5="1B2M2Y8AsgTpgAmY7PhCfg==")]
    )
    signed = server.api(
        "POST",
        f"/api/mask-group/{group.id}/signed-url",
        role="uploader",
        content=msgspec.json.encode(body),
        headers={"Content-Type": "application/json"},
    )
    (url,) = _same_json(signed, messages.SignResponse).urls
    assert url.filename == "m_0000.png"
    assert url.expires_at.tzinfo is not None  # a datetime, not a string to parse


# --- request sizes --------------------------------------------------------------------------------------

LONGEST_UID = "1." * 31 + "12"  # 64 characters
LONGEST_FLOAT = -1.2345678901234567e-05  # 23 characters as JSON, inside every coordinate bound


def _encoded_list_size(item: msgspec.Struct, count: int, envelope: dict[str, Any]) -> int:
    """Bytes of ``envelope`` whose one list holds ``count`` copies of ``item`` (commas included)."""
    return len(msgspec.json.encode(envelope)) + count * (len(msgspec.json.encode(item)) + 1)


def test_the_largest_valid_complete_and_series_fit_the_large_body_limit() -> None:
    """Every field at its longest, the most items: the body still fits what the route accepts."""
    worst_slice = messages.SliceToComplete(
        filename="x" * 124 + ".png",
        slice_index=INT32_MAX,
        width=INT32_MAX,
        height=INT32_MAX,
        checksum="f" * 32,
        label="9" * messages.SLICE_LABEL_MAX,
        sop_instance_uid=LONGEST_UID,
        size=messages.INT64_MAX,
    )
    msgspec.convert(msgspec.to_builtins(worst_slice), messages.SliceToComplete)  # valid as it stands
    complete = _encoded_list_size(worst_slice, MAX_SLICES, {"slices": []})
    assert complete <= LARGE_BODY_MAX_BYTES, (complete, LARGE_BODY_MAX_BYTES)

    worst_instance = messages.SeriesInstance(
        slice_index=messages.MAX_SERIES_INSTANCES - 1,
        sop_instance_uid=LONGEST_UID,
        sop_class_uid=LONGEST_UID,
        instance_number=-(2**31),
        image_position_patient=[LONGEST_FLOAT] * 3,
        frame_number=messages.MAX_SERIES_INSTANCES,
        image_orientation_patient=[LONGEST_FLOAT] * 6,
        rows=65535,
        columns=65535,
    )
    msgspec.convert(msgspec.to_builtins(worst_instance), messages.SeriesInstance)
    head = {"series_instance_uid": LONGEST_UID, "study_instance_uid": LONGEST_UID, "description": "x" * 512}
    series = _encoded_list_size(
        worst_instance, messages.MAX_SERIES_INSTANCES, {"series": {**head, "instances": []}}
    )
    assert series <= LARGE_BODY_MAX_BYTES - 64 * 1024, (
        series,
        LARGE_BODY_MAX_BYTES,
    )  # room for the other fields


def test_a_complete_larger_than_the_default_limit_is_read_and_one_larger_than_the_route_limit_is_a_413(
    app_client: Server,
) -> None:
    """11 MB (over Litestar's 10 MB default) reaches the checks; past the route's limit it is refused unread."""
    group = create_group(app_client, create_annotation(app_client))
    item = {
        "filename": "",
        "slice_index": 0,
        "width": 1,
        "height": 1,
        "checksum": "f" * 32,
        "label": "9" * 1000,
    }
    slices = [{**item, "filename": f"s_{i:05d}.png", "slice_index": i} for i in range(10_000)]
    body = msgspec.json.encode({"slices": slices})
    assert 10 * 1024 * 1024 < len(body) < LARGE_BODY_MAX_BYTES
    read = app_client.api("POST", f"/api/mask-group/{group['id']}/complete", role="uploader", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert read.status_code != 413, read.text
    assert read.json()["error"] == "objects_missing", read.text  # checked, and nothing was uploaded

    huge = b'{"slices": [' + b" " * LARGE_BODY_MAX_BYTES + b"]}"
    refused = app_client.api("POST", f"/api/mask-group/{group['id']}/complete", role="uploader", content=huge,
                             headers={"content-type": "application/json"})  # fmt: skip
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "entity_too_large"
