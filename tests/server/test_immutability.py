"""A completed group never changes; only its creator (or an admin) uploads to a pending group.

Issue 11, defects 1 and 6. The attack: sign one filename twice while the group is pending (the real
bytes, then other bytes), PUT the real bytes, complete, then PUT the other bytes with the second URL.
Three layers stop it, each tested on real parts:
- the server binds each filename to the size and MD5 of its first signature (``SignedUpload``), so the
  second URL is never issued; storage checks Content-MD5, so no URL writes other bytes: every backend,
  ``rclone serve s3`` included, which ignores ``If-None-Match``;
- local storage is create-only (412 ``object_exists`` for other bytes, 200 for the same bytes again);
- the S3 PUT signs ``If-None-Match: *``: a server that honours it (moto in server mode here, like AWS
  S3 and MinIO) answers 412 to any second PUT.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from sqlalchemy import func, select, update

from pacs_mask_desktop.core.api_client import ApiClient
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.storage_answers import is_already_stored_answer
from pacs_mask_desktop.core.upload import UploadEngine
from server.db.models import AuditLog, SignedUpload
from server.db.session import Database
from server.services.tokens import issue_token
from server.settings import Settings
from tests.live_server import LiveServer, Volume, copy_masks
from tests.server.conftest import (
    ALL_DBS,
    ALL_STORAGES,
    Server,
    Slice,
    assert_error,
    complete,
    create_annotation,
    create_group,
    md5_b64,
    object_under,
    png_bytes,
    sign,
    with_mixin,
)

REAL = Slice("slice_0000.png", 0, png_bytes(0))
OTHER = Slice("slice_0000.png", 0, png_bytes(99))  # same filename, other bytes


def sign_call(server: Server, group_id: str, slices: list[Slice], **kwargs: Any) -> httpx.Response:
    return server.api(
        "POST",
        f"/api/mask-group/{group_id}/signed-url",
        json={"slices": [s.to_sign() for s in slices]},
        **kwargs,
    )


def view(server: Server, group_id: str, filename: str) -> bytes:
    response = server.api("GET", f"/api/mask-group/{group_id}/view", params={"filename": filename})
    assert response.status_code == 200, response.text
    return response.content


# --- defect 1: the attack ------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_a_filename_signed_twice_cannot_overwrite_the_completed_group(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    key = f"mask/{annotation_id}/{group['id']}/{REAL.filename}"
    (real_url,) = sign(app_client, group["id"], [REAL])

    second = sign_call(app_client, group["id"], [OTHER], role="uploader")

    body = assert_error(second, 409, "slice_signed_differently")
    (conflict,) = body["details"]["slices"]
    assert conflict["filename"] == REAL.filename
    assert conflict["signed_size"] == len(REAL.body)
    assert "valid_until" in conflict
    # The same bytes may be signed again (a URL that expired, a retry): one binding, renewed.
    assert sign(app_client, group["id"], [REAL])[0]["headers"]["Content-MD5"] == md5_b64(REAL.body)

    assert app_client.put_signed(real_url, REAL.body).status_code == 200
    assert complete(app_client, group["id"], [REAL]).status_code == 200
    # A re-sent PUT of the same bytes (its first answer was lost) still ends well.
    assert app_client.put_signed(real_url, REAL.body).status_code == 200
    # The only URL there is binds the real bytes' MD5: storage refuses anything else.
    forged = app_client.put_signed(real_url, REAL.body[:-1] + bytes([REAL.body[-1] ^ 1]))
    assert forged.status_code == 400, forged.text  # rclone BadDigest, local bad_digest
    assert_error(sign_call(app_client, group["id"], [OTHER], role="uploader"), 409, "group_not_pending")

    assert view(app_client, group["id"], REAL.filename) == REAL.body
    assert object_under(app_client, key) == REAL.body


def test_local_storage_never_replaces_an_object(app_client: Server) -> None:
    """A URL for other bytes signed before the binding existed (an older server): 412, nothing changes."""
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    key = f"mask/{annotation_id}/{group['id']}/{REAL.filename}"
    (real_url,) = sign(app_client, group["id"], [REAL])
    older = app_client.storage.presign_put(
        key, size=len(OTHER.body), content_md5=md5_b64(OTHER.body), content_type="image/png", ttl_seconds=600
    )
    assert app_client.put_signed(real_url, REAL.body).status_code == 200
    assert complete(app_client, group["id"], [REAL]).status_code == 200

    refused = app_client.put_signed({"url": older.url, "method": "PUT", "headers": older.headers}, OTHER.body)

    body = assert_error(refused, 412, "object_exists")
    assert body["details"]["stored_md5"] is not None
    assert view(app_client, group["id"], REAL.filename) == REAL.body
    again = app_client.put_signed(real_url, REAL.body)
    assert again.status_code == 200  # idempotent for the same bytes
    assert again.headers["ETag"].strip('"') == body["details"]["stored_md5"]
    assert sorted(p.name for p in app_client.storage.path_for(key).parent.iterdir()) == [REAL.filename]


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_complete_refuses_stored_bytes_other_than_the_ones_still_signed(app_client: Server) -> None:
    """The real bytes' URL expired, other bytes were signed: completing with the real bytes would leave
    a valid URL for other bytes (an overwrite on a server ignoring If-None-Match). 409, nothing changes."""
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    (real_url,) = sign(app_client, group["id"], [REAL])
    assert app_client.put_signed(real_url, REAL.body).status_code == 200
    with app_client.db.session() as session:  # the real bytes' URLs expired long ago
        session.execute(update(SignedUpload).values(expires_at=datetime.now(UTC) - timedelta(days=1)))
    sign(app_client, group["id"], [OTHER])  # allowed now: no earlier URL can be used
    before = app_client.snapshot()

    refused = complete(app_client, group["id"], [REAL])

    body = assert_error(refused, 409, "slice_signed_differently")
    assert body["details"]["slices"][0]["filename"] == REAL.filename
    assert app_client.snapshot() == before
    assert app_client.api("GET", f"/api/mask/{group['id']}").json()["group"]["status"] == "pending"


# --- create-only on a server that implements it ---------------------------------------------------------


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 in server mode (real HTTP) with the bucket ``pacs-masks``; yields its endpoint URL.

    moto checks no signature, expiry or digest (rclone does, in the other tests), but it implements
    conditional writes: a PUT with ``If-None-Match: *`` on an existing key answers 412.
    """
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "moto-test",
        "AWS_SECRET_ACCESS_KEY": "moto-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
        boto3.session.Session().client("s3", endpoint_url=endpoint, config=config).create_bucket(
            Bucket="pacs-masks"
        )
        yield endpoint
    finally:
        server.stop()


def test_the_signed_put_is_create_only_on_a_server_that_honours_if_none_match(
    server_factory: Any, moto_s3: str
) -> None:
    server: Server = server_factory(
        storage="s3", s3_endpoint_url=moto_s3, s3_addressing_style="path", s3_region="us-east-1"
    )
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id)
    key = f"mask/{annotation_id}/{group['id']}/{REAL.filename}"
    (real_url,) = sign(server, group["id"], [REAL])
    assert real_url["headers"]["If-None-Match"] == "*"
    older = server.storage.presign_put(  # other bytes, signed straight by storage (no binding)
        key, size=len(OTHER.body), content_md5=md5_b64(OTHER.body), content_type="image/png", ttl_seconds=600
    )
    with httpx.Client(timeout=30) as http:
        assert http.put(real_url["url"], content=REAL.body, headers=real_url["headers"]).status_code == 200
        # Our own re-send whose first answer was lost: 412, which the client takes for "already there".
        resent = http.put(real_url["url"], content=REAL.body, headers=real_url["headers"])
        assert resent.status_code == 412, resent.text
        assert is_already_stored_answer(resent.status_code)
        assert complete(server, group["id"], [REAL]).status_code == 200  # complete checks what is stored

        overwrite = http.put(older.url, content=OTHER.body, headers=older.headers)

    assert overwrite.status_code == 412, overwrite.text
    assert "PreconditionFailed" in overwrite.text
    assert view(server, group["id"], REAL.filename) == REAL.body
    assert object_under(server, key) == REAL.body


# --- who may upload to a group ---------------------------------------------------------------------------


def test_only_the_creator_or_an_admin_signs_or_completes_a_group(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    alice = app_client.token("uploader", "alice")
    bob = app_client.token("uploader", "bob")
    reviewer = app_client.token("reviewer", "rita")
    created = app_client.api(
        "POST",
        "/api/mask-group",
        token=alice,
        json={"annotation_id": annotation_id, "model_name": "liver-seg", "version": "1", "source": "ai"},
    )
    group_id = created.json()["id"]
    (url,) = sign(app_client, group_id, [REAL], role="admin")  # an admin may
    assert app_client.put_signed(url, REAL.body).status_code == 200
    before = app_client.snapshot()

    for token in (bob, reviewer):
        body = assert_error(sign_call(app_client, group_id, [REAL], token=token), 403, "not_group_owner")
        assert body["details"] == {"group_id": group_id, "created_by": "alice"}
        assert "alice" in body["message"]
        refused = app_client.api(
            "POST", f"/api/mask-group/{group_id}/complete", token=token, json={"slices": [REAL.to_complete()]}
        )
        assert_error(refused, 403, "not_group_owner")
    assert app_client.snapshot() == before

    assert sign_call(app_client, group_id, [REAL], token=alice).status_code == 200
    done = app_client.api(
        "POST", f"/api/mask-group/{group_id}/complete", token=alice, json={"slices": [REAL.to_complete()]}
    )
    assert done.status_code == 200, done.text


def test_another_uploader_cannot_adopt_a_pending_group(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """The engine adopts the pending group of a 409 duplicate_group; for someone else's group the server
    refuses the first signature and the run ends with that reason, after one signing call."""
    client_env(live_server)
    copy_masks(ct_1000, tmp_path / "masks", 300, 6)
    annotation = live_server.new_annotation()
    db = Database(Settings(data_dir=live_server.data_dir).resolved_database_url)
    try:
        alice, bob = (
            issue_token(db, f"alice-{annotation}", "uploader"),
            issue_token(db, f"bob-{annotation}", "uploader"),
        )
    finally:
        db.close()
    prepared = prepare(
        tmp_path / "masks", annotation_id=annotation, model_name="adopt", version="1", source="ai"
    )
    assert prepared.plan is not None
    with ApiClient(live_server.url, alice) as api:
        group = api.create_group(
            {"annotation_id": annotation, "model_name": "adopt", "version": "1", "source": "ai"}
        )

    with ApiClient(live_server.url, bob) as api:
        engine = UploadEngine(api)
        try:
            result = engine.run(prepared.plan)
        finally:
            engine.close()

    assert not result.ok
    assert result.uploaded == 0
    assert len(result.failed) == 6
    assert all("alice" in reason and "creator" in reason for reason in result.failed.values())
    assert live_server.sign_calls(group.id) == 0  # refused calls are not audited as signatures
    assert live_server.stored_keys(f"mask/{annotation}/") == []


# --- defect 6: two racing deletes ------------------------------------------------------------------------


class DeleteBarrier:
    """Mixin: ``delete_prefix`` waits until both racing deletes have got that far."""

    barrier: threading.Barrier | None = None

    def delete_prefix(self, prefix: str) -> int:
        if self.barrier is not None:
            self.barrier.wait(timeout=20)
        return super().delete_prefix(prefix)  # type: ignore[misc]


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_the_losing_delete_of_two_racing_deletes_writes_no_audit_row(server_factory: Any) -> None:
    server: Server = server_factory(storage_hook=lambda storage: with_mixin(storage, DeleteBarrier))
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id)
    (url,) = sign(server, group["id"], [REAL])
    assert server.put_signed(url, REAL.body).status_code == 200
    assert complete(server, group["id"], [REAL]).status_code == 200
    server.storage.barrier = threading.Barrier(2)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: server.api("DELETE", f"/api/mask-group/{group['id']}"), range(2)))

    assert sorted(a.status_code for a in answers) == [200, 404], [a.text for a in answers]
    assert_error(next(a for a in answers if a.status_code == 404), 404, "group_not_found")
    with server.db.session() as session:
        actions = session.scalars(
            select(AuditLog.action).where(AuditLog.group_id == uuid.UUID(group["id"])).order_by(AuditLog.id)
        ).all()
        bindings = session.scalar(select(func.count()).select_from(SignedUpload))
    assert [a for a in actions if a.startswith("group.delete")] == ["group.delete_started", "group.delete"]
    assert bindings == 0
    assert server.objects(f"mask/{annotation_id}/") == []
