"""Issue 14: the review queue: complete groups with no decision, oldest first, filtered and paged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from server.db.models import MaskGroup
from tests.server.conftest import ALL_DBS, Server, assert_error
from tests.server.review_data import annotation, geometry, upload_group

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def seed(server: Server) -> dict[str, Any]:
    """Six groups on two annotations; completed_at set by hand so the order is known.

    q1 (ai, alice, a1, 08:00), q2 (manual, bob, a1, 09:00), q3 (ai, alice, a2, 09:00),
    q4 (ai, bob, a2, 10:00), reviewed (11:00, approved) and pending (never completed).
    """
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[1, 1, 1] = 1
    a1 = annotation(server, geometry(2, 4), description="liver, arterial")
    a2 = annotation(server, None, description=None)
    alice, bob = server.token("uploader", "alice"), server.token("uploader", "bob")
    made = {
        "q1": upload_group(server, a1, mask, token=alice, model_name="liver-net", version="1"),
        "q2": upload_group(
            server, a1, mask, token=bob, model_name="manual-fix", version="1", source="manual"
        ),
        "q3": upload_group(server, a2, mask, token=alice, model_name="liver-net", version="2"),
        "q4": upload_group(server, a2, mask, token=bob, model_name="liver-net", version="3"),
        "reviewed": upload_group(server, a2, mask, token=bob, model_name="other", version="1"),
        "pending": upload_group(server, a2, mask, token=bob, model_name="other", version="2", complete=False),
    }
    hours = {"q1": 0, "q2": 1, "q3": 1, "q4": 2, "reviewed": 3}
    with server.db.session() as session:
        for name, offset in hours.items():
            session.execute(
                update(MaskGroup)
                .where(MaskGroup.id == uuid.UUID(made[name]["id"]))
                .values(completed_at=T0 + timedelta(hours=offset))
            )
    ok = server.api(
        "POST",
        f"/api/mask-group/{made['reviewed']['id']}/review",
        role="reviewer",
        json={"decision": "approved"},
    )
    assert ok.status_code == 200, ok.text
    names = {group["id"]: name for name, group in made.items()}
    return {"a1": a1, "a2": a2, "names": names, "groups": made}


def queue(server: Server, role: str = "reviewer", **params: Any) -> Any:
    return server.api("GET", "/api/review/queue", role=role, params=params)


def names(seeded: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    return [seeded["names"][item["id"]] for item in answer["items"]]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_queue_lists_complete_unreviewed_groups_oldest_first_with_the_patient(app_client: Server) -> None:
    server = app_client
    seeded = seed(server)
    answer = queue(server)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # q2 and q3 completed at the same moment: ordered by id then.
    same_time = sorted(
        [seeded["groups"]["q2"]["id"], seeded["groups"]["q3"]["id"]], key=lambda i: i.replace("-", "")
    )
    assert names(seeded, body) == ["q1", *(seeded["names"][i] for i in same_time), "q4"]
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert (first["patient_id"], first["patient_name"], first["annotation_description"]) == (
        "P-7",
        "Doe^Jane",
        "liver, arterial",
    )
    assert first["status"] == "complete"
    assert first["review_status"] is None
    assert first["slice_count"] == 2
    assert first["created_by"] == "alice"
    assert first["findings"] == []
    assert first["reviews"] == []
    other = next(i for i in body["items"] if seeded["names"][i["id"]] == "q4")
    assert (other["patient_id"], other["patient_name"], other["annotation_description"]) == (
        "P-7",
        None,
        None,
    )
    # A rejected group leaves the queue too; reviewing removes it.
    server.api(
        "POST",
        f"/api/mask-group/{first['id']}/review",
        role="reviewer",
        json={"decision": "rejected", "comment": "no"},
    )
    assert "q1" not in names(seeded, queue(server).json())


def test_each_filter(app_client: Server) -> None:
    server = app_client
    seeded = seed(server)
    cases = [
        ({"model_name": "liver-net"}, {"q1", "q3", "q4"}),
        ({"version": "1"}, {"q1", "q2"}),
        ({"source": "manual"}, {"q2"}),
        ({"source": "ai"}, {"q1", "q3", "q4"}),
        ({"created_by": "bob"}, {"q2", "q4"}),
        ({"annotation_id": seeded["a2"]}, {"q3", "q4"}),
        ({"model_name": "liver-net", "created_by": "alice", "annotation_id": seeded["a1"]}, {"q1"}),
        ({"model_name": "nothing"}, set()),
    ]
    for params, expected in cases:
        answer = queue(server, **params)
        assert answer.status_code == 200, (params, answer.text)
        assert set(names(seeded, answer.json())) == expected, params


def test_pages_follow_the_cursor_without_repeats_or_gaps(app_client: Server) -> None:
    server = app_client
    seeded = seed(server)
    whole = names(seeded, queue(server).json())
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = queue(server, **params).json()
        assert len(page["items"]) <= 1
        seen += names(seeded, page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole
    assert pages == 4
    # A group reviewed between pages does not shift the next page.
    first_page = queue(server, limit=2).json()
    server.api(
        "POST",
        f"/api/mask-group/{first_page['items'][0]['id']}/review",
        role="reviewer",
        json={"decision": "approved"},
    )
    rest = queue(server, limit=2, cursor=first_page["next_cursor"]).json()
    assert names(seeded, rest) == whole[2:]
    assert rest["next_cursor"] is None
    # Filters and cursor together.
    ai_first = queue(server, limit=1, source="ai").json()
    ai_rest = queue(server, limit=5, source="ai", cursor=ai_first["next_cursor"]).json()
    assert "q2" not in names(seeded, ai_rest)


def test_bad_parameters_are_4xx_and_roles_are_enforced(app_client: Server) -> None:
    server = app_client
    seed(server)
    for params in (
        {"limit": 0},
        {"limit": 201},
        {"annotation_id": 2**31},
        {"model_name": "a\x00"},
        {"source": "robot"},
        {"cursor": "x" * 513},
    ):
        assert_error(queue(server, **params), 422)
    assert_error(queue(server, limit="many"), 400)
    for cursor in ("not-a-cursor", "bm90IGpzb24", "WzEsMl0"):
        assert_error(queue(server, cursor=cursor), 422, "invalid_cursor")
    assert_error(queue(server, role="uploader"), 403)
    assert_error(server.api("GET", "/api/review/queue", token=""), 401)
    assert queue(server, role="admin").status_code == 200
    assert len(queue(server, limit=200).json()["items"]) == 4
