"""Complete is idempotent and race-safe; delete survives a storage failure midway; the review endpoint."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from server.contract.messages import SLICE_LABEL_MAX
from server.db.models import AuditLog, Mask
from server.storage import Storage
from tests.server.conftest import (
    ALL_DBS,
    ALL_STORAGES,
    FlakyDelete,
    Server,
    assert_error,
    complete,
    create_annotation,
    create_group,
    make_slices,
    upload,
    uploaded_group,
    with_mixin,
)


def audit_actions(server: Server, group_id: str) -> list[tuple[str, str]]:
    rows = server.api("GET", "/api/audit", params={"group_id": group_id, "limit": 1000}).json()["items"]
    return [(row["action"], row["actor"]) for row in reversed(rows)]


# --- complete ----------------------------------------------------------------------------------------


def test_complete_twice_with_the_same_body_gives_the_same_answer(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 4)
    first = complete(app_client, group["id"], slices)
    assert first.status_code == 200, first.text
    after_first = app_client.snapshot()

    again = complete(app_client, group["id"], slices)
    reordered = complete(app_client, group["id"], slices[::-1])

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert reordered.json() == first.json()
    assert app_client.snapshot() == after_first  # no new slice rows, no new audit rows


def test_complete_with_another_body_on_a_complete_group_is_409_immutable(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 3)
    assert complete(app_client, group["id"], slices).status_code == 200
    after = app_client.snapshot()

    fewer = complete(app_client, group["id"], slices[:2])
    other_index = app_client.api(
        "POST",
        f"/api/mask-group/{group['id']}/complete",
        role="uploader",
        json={"slices": [dict(s.to_complete(), slice_index=s.index + 10) for s in slices]},
    )

    for response in (fewer, other_index):
        body = assert_error(response, 409, "group_immutable")
        assert body["details"]["slice_count"] == 3
    assert app_client.snapshot() == after


class StatBarrier:
    """Mixin: the first ``stat`` of ``barrier_key`` waits until every racing complete has reached it."""

    barrier: threading.Barrier | None = None
    barrier_key: str = ""

    def stat(self, key: str):  # type: ignore[no-untyped-def]
        if self.barrier is not None and key == self.barrier_key:
            self.barrier.wait(timeout=20)
        return super().stat(key)  # type: ignore[misc]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_a_slice_listing_every_label_value_completes_and_one_longer_is_a_422(server_factory) -> None:
    """All 255 label values on one slice (911 characters) are stored as sent, on SQLite and PostgreSQL."""
    server: Server = server_factory()
    _annotation_id, group, slices = uploaded_group(server, 2)
    every_label = ",".join(str(value) for value in range(1, 256))
    body = [s.to_complete() for s in slices]
    body[0]["label"] = every_label
    too_long = [dict(item) for item in body]
    too_long[0]["label"] = every_label + "," + "9" * (SLICE_LABEL_MAX - len(every_label))
    path = f"/api/mask-group/{group['id']}/complete"

    refused = server.api("POST", path, role="uploader", json={"slices": too_long})
    assert_error(refused, 422)
    answer = server.api("POST", path, role="uploader", json={"slices": body})
    assert answer.status_code == 200, answer.text
    with server.db.session() as session:
        stored = session.scalar(select(Mask.label).where(Mask.filename == slices[0].filename))
    assert stored == every_label


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_two_racing_completes_register_one_set_of_rows(server_factory) -> None:
    server: Server = server_factory(storage_hook=lambda storage: with_mixin(storage, StatBarrier))
    annotation_id, group, slices = uploaded_group(server, 20)
    storage: Any = server.storage
    storage.barrier_key = f"mask/{annotation_id}/{group['id']}/{slices[0].filename}"
    storage.barrier = threading.Barrier(2)  # both have verified storage before either writes

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: complete(server, group["id"], slices), range(2)))

    for answer in answers:
        assert answer.status_code == 200, answer.text
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["slice_count"] == 20
    assert answers[0].json()["status"] == "complete"
    with server.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Mask)) == 20
        completes = session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.action == "group.complete")
        )
        assert completes == 1
    masks = server.api("GET", f"/api/mask/{group['id']}").json()["items"]
    assert [m["slice_index"] for m in masks] == list(range(20))


def test_expected_slices_mismatch_is_422_and_registers_nothing(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 3, expected_slices=4)
    before = app_client.snapshot()

    response = complete(app_client, group["id"], slices)

    body = assert_error(response, 422, "slice_count_mismatch")
    assert body["details"] == {"expected_slices": 4, "received": 3}
    assert app_client.snapshot() == before
    listed = app_client.api("GET", f"/api/mask/{group['id']}").json()
    assert listed["items"] == []
    assert listed["group"]["status"] == "pending"


# --- delete ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_delete_survives_a_storage_failure_midway(server_factory) -> None:
    def flaky(storage: Storage) -> Storage:
        return with_mixin(storage, FlakyDelete, fail_deletes=True, delete_before_failing=2)

    server: Server = server_factory(storage_hook=flaky)
    annotation_id, group, slices = uploaded_group(server, 5)
    assert complete(server, group["id"], slices).status_code == 200
    prefix = f"mask/{annotation_id}/{group['id']}/"
    assert len(server.objects(prefix)) == 5

    failed = server.api("DELETE", f"/api/mask-group/{group['id']}")

    body = assert_error(failed, 503, "storage_unavailable")
    assert body["details"]["group_id"] == group["id"]
    assert "deleting" in body["message"]
    assert len(server.objects(prefix)) == 3  # storage died after two
    (listed,) = server.api("GET", f"/api/mask-group/{annotation_id}").json()["items"]
    assert listed["status"] == "deleting"
    assert listed["slice_count"] == 5  # rows still there: never a row-less object
    # A group being deleted accepts neither uploads nor a complete.
    resign = server.api(
        "POST", f"/api/mask-group/{group['id']}/signed-url", json={"slices": [slices[0].to_sign()]}
    )
    assert_error(resign, 409, "group_not_pending")
    assert_error(complete(server, group["id"], slices), 409)

    server.storage.fail_deletes = False  # type: ignore[attr-defined]
    finished = server.api("DELETE", f"/api/mask-group/{group['id']}")

    assert finished.status_code == 200, finished.text
    assert finished.json() == {"id": group["id"], "deleted_objects": 3, "deleted_slices": 5}
    assert server.objects(prefix) == []
    with server.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Mask)) == 0
    assert server.api("GET", f"/api/mask-group/{annotation_id}").json()["items"] == []
    actions = [action for action, _actor in audit_actions(server, group["id"])]
    # The repeat finds the group 'deleting' already: it finishes without a second start entry.
    assert actions[-3:] == ["group.delete_started", "group.delete_failed", "group.delete"]


def test_delete_of_a_pending_group_removes_its_uploads(app_client: Server) -> None:
    annotation_id, group, _slices = uploaded_group(app_client, 3)
    response = app_client.api("DELETE", f"/api/mask-group/{group['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["deleted_objects"] == 3
    assert response.json()["deleted_slices"] == 0
    assert app_client.objects(f"mask/{annotation_id}/") == []
    # The same (model, version) can be uploaded again afterwards.
    assert create_group(app_client, annotation_id)["status"] == "pending"


def test_delete_twice_is_404_the_second_time(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 1)
    assert complete(app_client, group["id"], slices).status_code == 200
    assert app_client.api("DELETE", f"/api/mask-group/{group['id']}").status_code == 200
    assert_error(app_client.api("DELETE", f"/api/mask-group/{group['id']}"), 404, "group_not_found")


# --- review ------------------------------------------------------------------------------------------


def test_review_approve_and_reject(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 2)
    path = f"/api/mask-group/{group['id']}/review"
    assert_error(app_client.api("POST", path, role="reviewer", json={"decision": "approved"}), 409)
    assert complete(app_client, group["id"], slices).status_code == 200

    approved = app_client.api("POST", path, role="reviewer", json={"decision": "approved", "comment": "fine"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["review_status"] == "approved"
    assert approved.json()["reviewed_by"] == "test-reviewer"
    assert approved.json()["status"] == "complete"
    assert approved.json()["slice_count"] == 2
    assert ("group.review", "test-reviewer") in audit_actions(app_client, group["id"])

    before = app_client.snapshot()
    assert_error(
        app_client.api("POST", path, role="uploader", json={"decision": "approved"}), 403, "forbidden"
    )
    assert_error(
        app_client.api("POST", path, role="reviewer", json={"decision": "rejected", "comment": "  "}),
        422,
        "comment_required",
    )
    assert_error(app_client.api("POST", path, role="reviewer", json={"decision": "maybe"}), 400)
    assert app_client.snapshot() == before

    rejected = app_client.api(
        "POST", path, role="reviewer", json={"decision": "rejected", "comment": "slice 3 misses the lesion"}
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["review_status"] == "rejected"
    assert rejected.json()["review_comment"] == "slice 3 misses the lesion"
    # The masks themselves are untouched by reviews.
    masks = app_client.api("GET", f"/api/mask/{group['id']}").json()["items"]
    assert [m["filename"] for m in masks] == [s.filename for s in slices]


def test_annotations_search(app_client: Server) -> None:
    first = create_annotation(app_client)
    response = app_client.api(
        "POST",
        "/api/annotations",
        role="uploader",
        json={"study_instance_uid": "9.8.7", "series_instance_uid": "9.8.7.6", "description": "Liver CT"},
    )
    assert response.status_code == 201
    second = response.json()["id"]
    group = create_group(app_client, second)
    upload(app_client, group["id"], make_slices(1))

    found = app_client.api("GET", "/api/annotations", role="uploader", params={"search": "liver"}).json()[
        "items"
    ]
    assert [a["id"] for a in found] == [second]
    assert found[0]["group_count"] == 1
    every = app_client.api("GET", "/api/annotations", role="uploader").json()["items"]
    assert {a["id"] for a in every} == {first, second}
    one = app_client.api("GET", f"/api/annotations/{first}", role="uploader")
    assert one.status_code == 200
    assert one.json()["created_by"] == "test-uploader"


# --- durability ------------------------------------------------------------------------------------


class FailingDurability:
    """Mixin for a backend that cannot make objects durable (a disk that fails its fsync)."""

    def make_durable(self, keys: Any) -> None:
        from server.storage.base import StorageError

        raise StorageError("fsync failed: Input/output error")


def test_complete_registers_nothing_when_storage_cannot_make_the_slices_durable(server_factory) -> None:
    server: Server = server_factory(storage_hook=lambda storage: with_mixin(storage, FailingDurability))
    _annotation_id, group, slices = uploaded_group(server, 3)
    before = server.snapshot()

    refused = complete(server, group["id"], slices)

    body = assert_error(refused, 503, "storage_unavailable")
    assert "durable" in body["message"]
    assert server.snapshot() == before  # no slice rows, no audit row, group still pending
    listed = server.api("GET", f"/api/mask/{group['id']}").json()
    assert listed["group"]["status"] == "pending"
    assert listed["items"] == []
