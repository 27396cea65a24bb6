"""Issue 14: reviews with per-slice findings, four eyes and the kept history of every review."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from server.db.migrate import upgrade
from server.db.models import Comparison, Finding, Review
from tests.server.conftest import ALL_DBS, Server, assert_error
from tests.server.review_data import annotation, geometry, upload_group

LABELS = {"1": {"name": "liver"}, "2": {"name": "lesion"}}


def volume(slices: int = 5, size: int = 8) -> np.ndarray:
    array = np.zeros((slices, size, size), np.uint8)
    array[1:3, 2:5, 2:5] = 1
    array[2, 6, 6] = 2
    return array


def reviewed_group(server: Server, *, series: bool = True, **fields: Any) -> dict[str, Any]:
    """A complete group of 5 slices uploaded by 'alice' (slices 1 and 2 only, when without geometry)."""
    annotation_id = annotation(server, geometry(5, 8) if series else None)
    return upload_group(
        server, annotation_id, volume(), [0, 1, 2], token=server.token("uploader", "alice"), **fields
    )


def review(
    server: Server, group_id: str, body: dict[str, Any], *, token: str | None = None, role: str = "reviewer"
):
    return server.api("POST", f"/api/mask-group/{group_id}/review", json=body, role=role, token=token)


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_findings_round_trip_with_the_group_and_in_its_history(app_client: Server) -> None:
    server = app_client
    group = reviewed_group(server, labels=LABELS)
    findings = [
        {"slice_index": 2, "label": 2, "comment": "The lesion is\nundersegmented."},
        {"slice_index": 4, "label": None, "comment": "Liver missing on this slice."},
        {"slice_index": 1, "comment": ""},
    ]
    answer = review(
        server, group["id"], {"decision": "rejected", "comment": "see findings", "findings": findings}
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()
    expected = [
        {"slice_index": 1, "label": None, "comment": ""},
        {"slice_index": 2, "label": 2, "comment": "The lesion is\nundersegmented."},
        {"slice_index": 4, "label": None, "comment": "Liver missing on this slice."},
    ]  # in slice order
    assert got["findings"] == expected
    assert [
        (r["decision"], r["comment"], r["reviewed_by"], r["override_four_eyes"]) for r in got["reviews"]
    ] == [("rejected", "see findings", "test-reviewer", False)]
    assert got["reviews"][0]["findings"] == expected
    opened = server.api("GET", f"/api/mask/{group['id']}").json()["group"]
    assert opened["findings"] == expected
    assert opened["reviews"] == got["reviews"]
    listed = server.api("GET", f"/api/mask-group/{group['annotation_id']}").json()["items"][0]
    assert listed["findings"] == expected
    audit = [
        a
        for a in server.api("GET", "/api/audit", params={"group_id": group["id"]}).json()["items"]
        if a["action"] == "group.review"
    ]
    assert [(a["actor"], a["detail"]["decision"], a["detail"]["findings"]) for a in audit] == [
        ("test-reviewer", "rejected", 3)
    ]


def test_a_group_reviewed_again_keeps_every_review(app_client: Server) -> None:
    server = app_client
    group = reviewed_group(server)
    first = review(
        server,
        group["id"],
        {"decision": "rejected", "comment": "edge", "findings": [{"slice_index": 1, "comment": "edge"}]},
    )
    assert first.status_code == 200, first.text
    second_reviewer = server.token("reviewer", "bob")
    second = review(
        server, group["id"], {"decision": "approved", "comment": "fine after all"}, token=second_reviewer
    )
    assert second.status_code == 200, second.text
    got = second.json()
    assert (got["review_status"], got["review_comment"], got["reviewed_by"]) == (
        "approved",
        "fine after all",
        "bob",
    )
    assert got["findings"] == []  # the current review has none
    assert [(r["decision"], r["reviewed_by"], len(r["findings"])) for r in got["reviews"]] == [
        ("rejected", "test-reviewer", 1),
        ("approved", "bob", 0),
    ]
    assert got["reviews"][0]["reviewed_at"] <= got["reviews"][1]["reviewed_at"]
    audit = server.api("GET", "/api/audit", params={"group_id": group["id"]}).json()["items"]
    previous = [a["detail"]["previous_decision"] for a in audit if a["action"] == "group.review"]
    assert sorted(previous, key=str) == sorted([None, "rejected"], key=str)


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_four_eyes_refuses_approving_your_own_group_unless_an_admin_overrides(app_client: Server) -> None:
    server = app_client
    alice_reviewer = server.token("reviewer", "carol")
    group = upload_group(server, annotation(server, geometry(5, 8)), volume(), [1], token=alice_reviewer)
    before = server.snapshot()
    body = assert_error(
        review(server, group["id"], {"decision": "approved"}, token=alice_reviewer), 403, "four_eyes"
    )
    assert "uploaded" in body["message"]
    assert "themselves" in body["message"]
    assert "Only an admin" in body["message"]
    assert_error(
        review(
            server, group["id"], {"decision": "approved", "override_four_eyes": True}, token=alice_reviewer
        ),
        403,
        "four_eyes",
    )
    assert server.snapshot() == before
    # Rejecting your own group is allowed.
    rejected = review(server, group["id"], {"decision": "rejected", "comment": "redo"}, token=alice_reviewer)
    assert rejected.status_code == 200, rejected.text

    # An admin who uploaded a group must say so explicitly; it is recorded on the review and in the audit.
    own = upload_group(server, annotation(server, geometry(5, 8)), volume(), [1], token=server.admin_token)
    body = assert_error(review(server, own["id"], {"decision": "approved"}, role="admin"), 403, "four_eyes")
    assert "override_four_eyes" in body["message"]
    done = review(server, own["id"], {"decision": "approved", "override_four_eyes": True}, role="admin")
    assert done.status_code == 200, done.text
    assert done.json()["reviews"][-1]["override_four_eyes"] is True
    audit = server.api("GET", "/api/audit", params={"group_id": own["id"]}).json()["items"]
    assert [a["detail"].get("override_four_eyes") for a in audit if a["action"] == "group.review"] == [True]
    # Someone else's group: the override is not needed and not recorded as used.
    other = review(server, group["id"], {"decision": "approved", "override_four_eyes": True}, role="admin")
    assert other.status_code == 200, other.text
    assert other.json()["reviews"][-1]["override_four_eyes"] is False


def test_findings_are_validated_against_the_series_and_the_label_table(app_client: Server) -> None:
    server = app_client
    group = reviewed_group(server, labels=LABELS)
    path = f"/api/mask-group/{group['id']}/review"
    before = server.snapshot()
    bad = review(
        server,
        group["id"],
        {
            "decision": "approved",
            "findings": [
                {"slice_index": 4, "label": 1, "comment": "fine"},
                {"slice_index": 5, "comment": "outside the 5-slice series"},
                {"slice_index": 0, "label": 3, "comment": "label not in the table"},
            ],
        },
    )
    body = assert_error(bad, 422, "invalid_findings")
    assert [(p["index"], p["slice_index"]) for p in body["details"]["findings"]] == [(1, 5), (2, 0)]
    assert "outside the annotation's series (0..4)" in body["details"]["findings"][0]["reason"]
    assert "label 3 is not in the group's label table [1, 2]" in body["details"]["findings"][1]["reason"]
    for finding in (
        {"slice_index": -1},
        {"slice_index": 2**31},
        {"slice_index": 1, "label": 0},
        {"slice_index": 1, "label": 256},
        {"slice_index": 1, "comment": "x" * 2001},
        {"slice_index": 1, "comment": "nul\x00"},
    ):
        assert_error(
            server.api("POST", path, role="reviewer", json={"decision": "approved", "findings": [finding]}),
            422,
        )
    for finding in ({"slice_index": 1, "colour": "red"}, {"label": 1}, {"slice_index": [1]}):  # wrong shape
        assert_error(
            server.api("POST", path, role="reviewer", json={"decision": "approved", "findings": [finding]}),
            400,
        )
    too_many = [{"slice_index": 1}] * 1001
    assert_error(
        server.api("POST", path, role="reviewer", json={"decision": "approved", "findings": too_many}), 422
    )
    assert_error(
        server.api("POST", path, role="reviewer", json={"decision": "approved", "findings": "x"}), 400
    )
    assert server.snapshot() == before
    longest = review(
        server,
        group["id"],
        {"decision": "approved", "findings": [{"slice_index": 4, "comment": "x" * 2000}] * 1000},
    )
    assert longest.status_code == 200, longest.text
    assert len(longest.json()["findings"]) == 1000


def test_without_geometry_findings_must_be_within_the_groups_slices_and_any_label(app_client: Server) -> None:
    server = app_client
    group = reviewed_group(server, series=False)  # slices 0..2 uploaded, no label table
    body = assert_error(
        review(server, group["id"], {"decision": "approved", "findings": [{"slice_index": 3}]}),
        422,
        "invalid_findings",
    )
    assert "outside the group's slices (0..2)" in body["message"]
    ok = review(
        server,
        group["id"],
        {"decision": "approved", "findings": [{"slice_index": 2, "label": 200, "comment": "?"}]},
    )
    assert ok.status_code == 200, ok.text


def test_reviews_made_before_the_history_become_its_first_entry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, "0005_wider_study_text")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO annotation (id, study_instance_uid, series_instance_uid, created_by, created_at) "
                    "VALUES (1, '1.2', '1.2.3', 'a', '2026-01-01 00:00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO annotation_mask_group (id, annotation_id, model_name, version, source, status, "
                    "created_by, created_at, review_status, review_comment, reviewed_by, reviewed_at) VALUES "
                    "('0123456789abcdef0123456789abcdef', 1, 'm', '1', 'ai', 'complete', 'a', '2026-01-01 00:00:00', "
                    "'approved', 'ok', 'rita', '2026-01-02 00:00:00')"
                )
            )
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT decision, comment, reviewed_by, override_four_eyes FROM annotation_mask_review")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("approved", "ok", "rita", 0)]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_deleting_a_group_removes_its_reviews_findings_and_comparisons(app_client: Server) -> None:
    server = app_client
    group = reviewed_group(server)
    other = upload_group(server, group["annotation_id"], volume(), [1, 2], version="2")
    assert (
        review(
            server, group["id"], {"decision": "rejected", "comment": "x", "findings": [{"slice_index": 1}]}
        ).status_code
        == 200
    )
    assert server.api("GET", f"/api/mask-group/{group['id']}/compare/{other['id']}").status_code == 200
    assert server.api("DELETE", f"/api/mask-group/{group['id']}").status_code == 200
    with server.db.session() as session:
        counts = [session.query(model).count() for model in (Review, Finding, Comparison)]
    assert counts == [0, 0, 0]
    assert server.api("GET", f"/api/mask/{other['id']}").json()["group"]["volumes"]["1"]["voxels"] == 18
