"""The whole upload flow on every database and storage backend (issue 2, first "Done when").

Create an annotation and a group, sign 100 slices, PUT them with exactly the returned headers (to the
app's own ``/storage`` route for ``local``, to a real ``rclone serve s3`` for ``s3``), complete, list,
view every slice and delete; then nothing is left under the group's prefix and no rows remain, while
the audit trail names who did each step.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from server.db.models import Mask, MaskGroup
from server.naming import group_prefix
from tests.server.conftest import (
    ALL_DBS,
    ALL_STORAGES,
    Server,
    Slice,
    assert_error,
    complete,
    create_annotation,
    create_group,
    make_slices,
    md5_hex,
    sign,
)

SLICES = 100


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_whole_flow(app_client: Server) -> None:
    server = app_client
    uploader = server.token("uploader", "alice")

    # create
    annotation_id = create_annotation(server)
    group = server.api(
        "POST",
        "/api/mask-group",
        token=uploader,
        json={
            "annotation_id": annotation_id,
            "model_name": "liver-seg",
            "version": "2.1.0",
            "source": "ai",
            "expected_slices": SLICES,
            "confidence": 0.93,
            "params": {"threshold": 0.5},
        },
    )
    assert group.status_code == 201, group.text
    group = group.json()
    group_id = group["id"]
    assert group["status"] == "pending"
    assert group["created_by"] == "alice"
    assert group["slice_count"] == 0

    # sign 100 in one batch
    slices = make_slices(SLICES)
    response = server.api(
        "POST",
        f"/api/mask-group/{group_id}/signed-url",
        token=uploader,
        json={"slices": [s.to_sign() for s in slices]},
    )
    assert response.status_code == 200, response.text
    urls = response.json()["urls"]
    assert [u["filename"] for u in urls] == [s.filename for s in slices]
    prefix = group_prefix(annotation_id, group_id)
    for signed, piece in zip(urls, slices, strict=True):
        assert signed["key"] == prefix + piece.filename
        assert signed["method"] == "PUT"
        assert signed["headers"]["Content-MD5"] == piece.to_sign()["content_md5"]
        assert signed["expires_at"]
    if server.storage_kind == "local":
        assert urls[0]["url"].startswith("http://testserver.local/storage/")
    else:
        assert urls[0]["url"].startswith(server.settings.s3_endpoint_url + "/")

    # PUT each with exactly the returned headers
    for signed, piece in zip(urls, slices, strict=True):
        put = server.put_signed(signed, piece.body)
        assert put.status_code == 200, put.text
    assert server.objects(prefix) == sorted(prefix + s.filename for s in slices)
    # Nothing is registered before complete.
    listed = server.api("GET", f"/api/mask/{group_id}", token=uploader).json()
    assert listed["items"] == []

    # complete
    done = server.api(  # the order of the body does not matter
        "POST",
        f"/api/mask-group/{group_id}/complete",
        token=uploader,
        json={"slices": [s.to_complete() for s in reversed(slices)]},
    )
    assert done.status_code == 200, done.text
    done = done.json()
    assert done["status"] == "complete"
    assert done["slice_count"] == SLICES
    assert done["completed_at"]

    # list groups
    groups = server.api("GET", f"/api/mask-group/{annotation_id}", token=uploader)
    assert groups.status_code == 200, groups.text
    (listed_group,) = groups.json()["items"]
    assert listed_group["id"] == group_id
    assert listed_group["slice_count"] == SLICES
    assert listed_group["status"] == "complete"

    # list slices, ordered by slice_index
    masks = server.api("GET", f"/api/mask/{group_id}", token=uploader)
    assert masks.status_code == 200, masks.text
    items = masks.json()["items"]
    assert [m["slice_index"] for m in items] == list(range(SLICES))
    assert [m["filename"] for m in items] == [s.filename for s in slices]
    for item, piece in zip(items, slices, strict=True):
        assert item["checksum"] == md5_hex(piece.body)
        assert item["size_bytes"] == len(piece.body)
        assert item["storage_key"] == prefix + piece.filename
        assert item["sop_instance_uid"] == piece.to_complete()["sop_instance_uid"]

    # view every slice: bytes identical, with type, length and ETag
    for piece in slices:
        view = server.api(
            "GET", f"/api/mask-group/{group_id}/view", token=uploader, params={"filename": piece.filename}
        )
        assert view.status_code == 200, view.text
        assert view.content == piece.body
        assert view.headers["content-type"] == "image/png"
        assert int(view.headers["content-length"]) == len(piece.body)
        assert view.headers["etag"].strip('"') == md5_hex(piece.body)
    by_index = server.api(
        "GET", f"/api/mask-group/{group_id}/view", token=uploader, params={"slice_index": 42}
    )
    assert by_index.status_code == 200
    assert by_index.content == slices[42].body

    # delete (admin)
    deleted = server.api("DELETE", f"/api/mask-group/{group_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": group_id, "deleted_objects": SLICES, "deleted_slices": SLICES}
    assert server.objects(prefix) == []
    assert server.objects(f"mask/{annotation_id}/") == []
    with server.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Mask)) == 0
        assert session.scalar(select(func.count()).select_from(MaskGroup)) == 0
    assert_error(server.api("GET", f"/api/mask/{group_id}", token=uploader), 404, "group_not_found")
    assert server.api("GET", f"/api/mask-group/{annotation_id}", token=uploader).json()["items"] == []

    # the audit trail, with the right actor for each step
    audit = server.api("GET", "/api/audit", params={"group_id": group_id, "limit": 1000})
    assert audit.status_code == 200, audit.text
    rows = audit.json()["items"]
    actors: dict[str, set[str]] = {}
    for row in rows:
        actors.setdefault(row["action"], set()).add(row["actor"])
        assert row["annotation_id"] == annotation_id
    assert actors["group.create"] == {"alice"}
    assert actors["group.sign"] == {"alice"}
    assert actors["group.complete"] == {"alice"}
    assert actors["slice.view"] == {"alice"}
    assert actors["group.delete"] == {"test-admin"}
    assert sum(1 for row in rows if row["action"] == "slice.view") == SLICES + 1
    sign_row = next(row for row in rows if row["action"] == "group.sign")
    assert sign_row["detail"]["count"] == SLICES
    created = server.api(
        "GET", "/api/audit", params={"annotation_id": annotation_id, "actor": "test-uploader"}
    )
    assert "annotation.create" in {r["action"] for r in created.json()["items"]}


def test_sign_batch_of_1000_in_one_request(app_client: Server) -> None:
    """The seed's batch size: 1000 URLs in one call, every key distinct."""
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    body = make_slices(1)[0].body
    many = [Slice(f"s_{i:05d}.png", i, body) for i in range(1000)]
    urls = sign(app_client, group["id"], many)
    assert len(urls) == 1000
    assert len({u["url"] for u in urls}) == 1000


def test_a_browser_upload_to_local_storage_gets_cors_headers(server_factory) -> None:
    """Uploads carrying an Origin go through the framework's CORS layer, then the same upload code."""
    origin = "https://viewer.example-clinic.org"
    server: Server = server_factory(cors_origins=[origin])
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id)
    pieces = make_slices(2)
    first, second = sign(server, group["id"], pieces)

    from_browser = server.client.put(
        first["url"], content=pieces[0].body, headers={**first["headers"], "Origin": origin}
    )
    plain = server.put_signed(second, pieces[1].body)
    tampered = server.client.put(
        second["url"], content=pieces[0].body, headers={**second["headers"], "Origin": origin}
    )

    assert from_browser.status_code == 200, from_browser.text
    assert from_browser.headers["access-control-allow-origin"] == origin
    assert from_browser.headers["etag"] == f'"{md5_hex(pieces[0].body)}"'
    assert plain.status_code == 200
    assert plain.headers["etag"] == f'"{md5_hex(pieces[1].body)}"'
    assert "access-control-allow-origin" not in plain.headers
    assert tampered.status_code in (400, 403), tampered.text  # same checks on the browser path
    assert complete(server, group["id"], pieces).status_code == 200


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_a_slice_larger_than_the_inline_write_limit_lands_intact(app_client: Server) -> None:
    """Small uploads to local storage are written on the event loop, larger ones in a worker thread."""
    from server.api.storage_routes import INLINE_WRITE_MAX

    big = Slice("slice_0000.png", 0, bytes(range(256)) * (INLINE_WRITE_MAX // 256 + 10))
    small = Slice("slice_0001.png", 1, b"small mask bytes")
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    for signed, piece in zip(sign(app_client, group["id"], [big, small]), [big, small], strict=True):
        response = app_client.put_signed(signed, piece.body)
        assert response.status_code == 200, response.text

    assert complete(app_client, group["id"], [big, small]).status_code == 200
    stored = app_client.api("GET", f"/api/mask/{group['id']}").json()["items"]
    assert {item["filename"]: item["checksum"] for item in stored} == {
        big.filename: md5_hex(big.body),
        small.filename: md5_hex(small.body),
    }
