"""Every rejection gets its clear 4xx, the one error shape, and writes nothing.

Storage-level rejections (expired, tampered, re-targeted, wrong MD5, oversize) run on ``local`` (the
app's own ``/storage`` route answers with the JSON error shape) and on a real ``rclone serve s3``
(which answers in S3's XML); the API-level ones run on SQLite + local. After each rejection the rows
and the stored objects are exactly what they were before. (No response in this suite may be a 500:
the ``server_factory`` fixture fails a test that saw one.)
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.server.conftest import (
    ALL_STORAGES,
    Server,
    assert_error,
    complete,
    create_annotation,
    create_group,
    make_slices,
    md5_b64,
    overwrite_object,
    sign,
    upload,
    uploaded_group,
)

# --- helpers -----------------------------------------------------------------------------------------


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def flip_last(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


def s3_code(response: httpx.Response) -> str:
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else ""


def assert_storage_refused(
    server: Server, response: httpx.Response, local: tuple[int, str], s3: tuple[set[int], set[str]]
) -> None:
    """Local answers ``(status, code)`` in the JSON error shape; S3 answers one of ``s3`` in XML."""
    if server.storage_kind == "local":
        assert_error(response, *local)
    else:
        statuses, codes = s3
        assert response.status_code in statuses, (response.status_code, response.text)
        assert s3_code(response) in codes, response.text


@pytest.fixture
def pending(app_client: Server) -> dict[str, Any]:
    """A pending group with one slice signed but not uploaded, and a snapshot of everything stored."""
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    slices = make_slices(2)
    urls = sign(app_client, group["id"], slices)
    return {"group": group, "slices": slices, "urls": urls, "before": app_client.snapshot()}


# --- storage-level rejections (local and real S3) ----------------------------------------------------


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_expired_url_is_refused(server_factory) -> None:
    server: Server = server_factory(url_ttl_seconds=1)
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id)
    (piece,) = make_slices(1)
    (signed,) = sign(server, group["id"], [piece])
    before = server.snapshot()
    time.sleep(2.2)

    response = server.put_signed(signed, piece.body)

    # AWS answers 403 "Request has expired"; rclone 400 AccessDenied with a time-skew message.
    assert_storage_refused(server, response, (403, "expired_url"), ({400, 403}, {"AccessDenied"}))
    assert server.snapshot() == before


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_tampered_signature_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]
    param = "signature" if app_client.storage_kind == "local" else "X-Amz-Signature"
    original = dict(parse_qsl(urlsplit(signed["url"]).query))[param]

    response = app_client.put_signed(
        signed, piece.body, url=with_query(signed["url"], **{param: flip_last(original)})
    )

    assert_storage_refused(
        app_client, response, (403, "signature_mismatch"), ({403}, {"SignatureDoesNotMatch", "AccessDenied"})
    )
    assert app_client.snapshot() == pending["before"]


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_url_reused_for_another_key_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, other = pending["urls"][0], pending["slices"][1]
    retargeted = signed["url"].replace(pending["slices"][0].filename, other.filename)
    assert retargeted != signed["url"]

    # Same bytes, same headers, another key of the same group: the signature does not cover it.
    response = app_client.put_signed(signed, pending["slices"][0].body, url=retargeted)

    assert_storage_refused(
        app_client, response, (403, "signature_mismatch"), ({403}, {"SignatureDoesNotMatch"})
    )
    assert app_client.snapshot() == pending["before"]


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_body_with_wrong_md5_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]
    corrupted = bytearray(piece.body)
    corrupted[len(corrupted) // 2] ^= 0xFF  # one flipped byte, same length

    response = app_client.put_signed(signed, bytes(corrupted))

    assert_storage_refused(app_client, response, (400, "bad_digest"), ({400}, {"BadDigest"}))
    assert app_client.snapshot() == pending["before"]


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_oversize_body_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]
    bigger = piece.body + b"\0" * 1024
    # The real length goes on the wire (a client cannot lie about Content-Length to an HTTP/1.1 peer).
    headers = {k: v for k, v in signed["headers"].items() if k.lower() != "content-length"}

    response = app_client.put_signed(signed, bigger, headers=headers)

    assert_storage_refused(
        app_client, response, (413, "entity_too_large"), ({403}, {"SignatureDoesNotMatch"})
    )
    assert app_client.snapshot() == pending["before"]


def test_local_chunked_oversize_body_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    """Without a Content-Length the route counts the bytes and stops at the signed size."""
    signed, piece = pending["urls"][0], pending["slices"][0]

    def chunks():
        yield piece.body
        yield b"\0" * 4096

    response = app_client.client.put(signed["url"], content=chunks(), headers=signed["headers"])

    assert_error(response, 413, "entity_too_large")
    assert app_client.snapshot() == pending["before"]


def test_local_short_body_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]

    response = app_client.put_signed(signed, piece.body[:-1])

    assert_error(response, 400)
    assert app_client.snapshot() == pending["before"]


def test_local_storage_route_never_leaves_its_root(app_client: Server, pending: dict[str, Any]) -> None:
    signed = pending["urls"][0]
    query = urlsplit(signed["url"]).query
    for path in ("/storage/mask/%2e%2e/%2e%2e/%2e%2e/escape.png", "/storage/mask/1/.hidden.png", "/storage/"):
        response = app_client.client.put(f"{path}?{query}", content=b"x", headers=signed["headers"])
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    root = app_client.settings.data_dir
    assert not list(root.parent.glob("**/escape.png"))
    assert app_client.snapshot() == pending["before"]


def test_unsigned_storage_url_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]
    bare = signed["url"].split("?", 1)[0]

    assert_error(app_client.put_signed(signed, piece.body, url=bare), 403, "signature_missing")
    assert_error(app_client.client.get(bare), 403, "signature_missing")
    assert app_client.snapshot() == pending["before"]


def test_changed_content_type_is_refused(app_client: Server, pending: dict[str, Any]) -> None:
    signed, piece = pending["urls"][0], pending["slices"][0]
    headers = dict(signed["headers"], **{"Content-Type": "application/octet-stream"})

    assert_error(app_client.put_signed(signed, piece.body, headers=headers), 403, "signature_mismatch")
    assert app_client.snapshot() == pending["before"]


# --- signing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("../x.png", "image/png"),
        (".hidden.png", "image/png"),
        ("a/b.png", "image/png"),
        ("x.exe", "image/png"),
        ("con.png", "image/png"),
        ("LPT1.png", "image/png"),
        ("a" * 125 + ".png", "image/png"),  # 129 characters
        ("schnitt_ü.png", "image/png"),
        ("슬라이스.png", "image/png"),
        ("a\\b.png", "image/png"),
        ("x.png\n", "image/png"),
        ("", "image/png"),
        ("ok.png", "application/octet-stream"),
        ("ok.png", "image/png\r\nX-Evil: 1"),
    ],
)
def test_odd_filenames_and_types_are_refused_before_signing(
    app_client: Server, filename: str, content_type: str
) -> None:
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    good = make_slices(1)[0].to_sign()
    bad = dict(good, filename=filename, content_type=content_type)
    before = app_client.snapshot()

    response = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/signed-url", role="uploader", json={"slices": [good, bad]}
    )

    body = assert_error(response, 422, "invalid_slices")
    assert [p["filename"] for p in body["details"]["slices"]] == [filename]
    assert all(p["reason"] for p in body["details"]["slices"])
    assert app_client.snapshot() == before  # nothing signed, not even the good one; no audit row


def test_128_character_filename_is_fine(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    piece = make_slices(1)[0]
    long = type(piece)("a" * 124 + ".png", 0, piece.body)
    assert len(long.filename) == 128
    (signed,) = sign(app_client, group["id"], [long])
    assert app_client.put_signed(signed, long.body).status_code == 200


def test_bad_content_md5_is_refused(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    item = dict(make_slices(1)[0].to_sign(), content_md5="not-base64-md5")
    before = app_client.snapshot()
    response = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/signed-url", role="uploader", json={"slices": [item]}
    )
    assert_error(response, 422, "invalid_slices")
    assert app_client.snapshot() == before


def test_oversize_slice_is_refused_at_signing(server_factory) -> None:
    server: Server = server_factory(max_slice_bytes=1000)
    annotation_id = create_annotation(server)
    group = create_group(server, annotation_id)
    item = dict(make_slices(1)[0].to_sign(), size=1001, content_md5=md5_b64(b"\0" * 1001))
    before = server.snapshot()

    response = server.api(
        "POST", f"/api/mask-group/{group['id']}/signed-url", role="uploader", json={"slices": [item]}
    )

    body = assert_error(response, 413, "entity_too_large")
    assert body["details"]["slices"] == [{"filename": item["filename"], "size": 1001, "limit": 1000}]
    assert server.snapshot() == before


@pytest.mark.parametrize("group_ref", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_group_is_404_everywhere(app_client: Server, group_ref: str) -> None:
    slices = make_slices(1)
    before = app_client.snapshot()
    calls = [
        ("POST", f"/api/mask-group/{group_ref}/signed-url", {"json": {"slices": [slices[0].to_sign()]}}),
        ("POST", f"/api/mask-group/{group_ref}/complete", {"json": {"slices": [slices[0].to_complete()]}}),
        ("GET", f"/api/mask/{group_ref}", {}),
        ("GET", f"/api/mask-group/{group_ref}/view", {"params": {"slice_index": 0}}),
        ("POST", f"/api/mask-group/{group_ref}/review", {"json": {"decision": "approved"}}),
        ("DELETE", f"/api/mask-group/{group_ref}", {}),
    ]
    for method, path, kwargs in calls:
        assert_error(app_client.api(method, path, **kwargs), 404, "group_not_found")
    assert app_client.snapshot() == before


def test_unknown_annotation_is_404(app_client: Server) -> None:
    before = app_client.snapshot()
    body = {"annotation_id": 999_999, "model_name": "m", "version": "1", "source": "ai"}
    assert_error(app_client.api("POST", "/api/mask-group", json=body), 404, "annotation_not_found")
    assert_error(app_client.api("GET", "/api/mask-group/999999"), 404, "annotation_not_found")
    assert_error(app_client.api("GET", "/api/annotations/999999"), 404, "annotation_not_found")
    assert app_client.snapshot() == before


def test_signing_for_a_completed_group_is_refused(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 2)
    assert complete(app_client, group["id"], slices).status_code == 200
    before = app_client.snapshot()

    response = app_client.api(
        "POST",
        f"/api/mask-group/{group['id']}/signed-url",
        role="uploader",
        json={"slices": [s.to_sign() for s in make_slices(1, start=5)]},
    )

    body = assert_error(response, 409, "group_not_pending")
    assert body["details"]["status"] == "complete"
    assert app_client.snapshot() == before


# --- completing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_completing_with_a_missing_object_is_409_listing_it(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    group = create_group(app_client, annotation_id)
    slices = make_slices(3)
    upload(app_client, group["id"], slices[:2])  # the third never lands
    before = app_client.snapshot()

    response = complete(app_client, group["id"], slices)

    body = assert_error(response, 409, "objects_missing")
    assert body["details"]["missing"] == [slices[2].filename]
    assert slices[2].filename in body["message"] or "1 slice" in body["message"]
    assert app_client.snapshot() == before
    masks = app_client.api("GET", f"/api/mask/{group['id']}").json()
    assert masks["items"] == []
    assert masks["group"]["status"] == "pending"


@pytest.mark.parametrize("storage_kind", ALL_STORAGES)
def test_completing_with_a_corrupt_object_is_422(app_client: Server) -> None:
    annotation_id, group, slices = uploaded_group(app_client, 3)
    key = f"mask/{annotation_id}/{group['id']}/{slices[1].filename}"
    overwrite_object(app_client, key, slices[1].body[:-1] + b"\x00")  # bit rot after the upload
    before = app_client.snapshot()

    response = complete(app_client, group["id"], slices)

    body = assert_error(response, 422, "checksum_mismatch")
    assert [m["filename"] for m in body["details"]["mismatched"]] == [slices[1].filename]
    # The damaged object held other bytes than signed: removed, so the client's re-sent PUT (uploads are
    # create-only) can land. Nothing else changed.
    assert body["details"]["removed"] == [slices[1].filename]
    rows, objects = before
    assert app_client.snapshot() == (rows, [k for k in objects if k != key])
    assert app_client.api("GET", f"/api/mask/{group['id']}").json()["group"]["status"] == "pending"
    upload(app_client, group["id"], [slices[1]])
    assert complete(app_client, group["id"], slices).status_code == 200


def test_completing_with_an_invalid_body_is_refused(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 2)
    before = app_client.snapshot()
    twice = [slices[0].to_complete(), dict(slices[1].to_complete(), slice_index=0)]
    response = app_client.api("POST", f"/api/mask-group/{group['id']}/complete", json={"slices": twice})
    assert_error(response, 422, "invalid_slices")
    bad_checksum = [dict(slices[0].to_complete(), checksum="xyz")]
    response = app_client.api(
        "POST", f"/api/mask-group/{group['id']}/complete", json={"slices": bad_checksum}
    )
    assert_error(response, 422, "invalid_value")  # a value of the right type out of its bounds
    assert app_client.snapshot() == before


# --- groups, requests, auth --------------------------------------------------------------------------


def test_duplicate_group_is_409_naming_the_existing_one(app_client: Server) -> None:
    annotation_id = create_annotation(app_client)
    first = create_group(app_client, annotation_id, version="3.0")
    before = app_client.snapshot()

    response = app_client.api(
        "POST",
        "/api/mask-group",
        role="uploader",
        json={
            "annotation_id": annotation_id,
            "model_name": "liver-seg",
            "version": "3.0",
            "source": "manual",
        },
    )

    body = assert_error(response, 409, "duplicate_group")
    assert body["details"]["group_id"] == first["id"]
    assert first["id"] in body["message"]
    assert app_client.snapshot() == before


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/api/mask-group", b'{"annotation_id": 1, "model_name": '),
        ("/api/annotations", b"{not json}"),
        ("/api/mask-group/00000000-0000-0000-0000-000000000000/signed-url", b"[1, 2"),
    ],
)
def test_malformed_json_is_400(app_client: Server, path: str, raw: bytes) -> None:
    before = app_client.snapshot()
    response = app_client.api("POST", path, content=raw, headers={"Content-Type": "application/json"})
    body = assert_error(response, 400, "malformed_json")
    assert "JSON" in body["message"]
    assert app_client.snapshot() == before


def test_wrong_field_types_are_400(app_client: Server) -> None:
    before = app_client.snapshot()
    response = app_client.api(
        "POST",
        "/api/mask-group",
        json={"annotation_id": "one", "model_name": "m", "version": "1", "source": "robot"},
    )
    assert_error(response, 400, "invalid_request")
    assert app_client.snapshot() == before


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-real-token"]
)
def test_missing_or_unknown_token_is_401(app_client: Server, header: str | None) -> None:
    annotation_id = create_annotation(app_client)
    before = app_client.snapshot()
    headers = {"Authorization": header} if header is not None else {}
    for method, path, kwargs in [
        ("GET", "/api/annotations", {}),
        ("POST", "/api/annotations", {"json": {"study_instance_uid": "1.2", "series_instance_uid": "1.2.3"}}),
        ("GET", f"/api/mask-group/{annotation_id}", {}),
        ("DELETE", f"/api/mask-group/{uuid.uuid4()}", {}),
        ("GET", "/api/audit", {}),
    ]:
        response = app_client.client.request(method, path, headers=headers, **kwargs)
        assert_error(response, 401)
    assert app_client.snapshot() == before


def test_revoked_token_is_401(app_client: Server) -> None:
    token = app_client.token("uploader", "leaver")
    assert app_client.api("GET", "/api/annotations", token=token).status_code == 200
    assert app_client.api("DELETE", "/api/tokens/leaver").status_code == 200
    assert_error(app_client.api("GET", "/api/annotations", token=token), 401, "invalid_token")


def test_wrong_role_is_403(app_client: Server) -> None:
    _annotation_id, group, slices = uploaded_group(app_client, 1)
    assert complete(app_client, group["id"], slices).status_code == 200
    before = app_client.snapshot()

    for role, method, path, kwargs in [
        ("uploader", "DELETE", f"/api/mask-group/{group['id']}", {}),
        ("reviewer", "DELETE", f"/api/mask-group/{group['id']}", {}),
        ("uploader", "GET", "/api/audit", {}),
        ("uploader", "POST", f"/api/mask-group/{group['id']}/review", {"json": {"decision": "approved"}}),
        ("uploader", "POST", "/api/tokens", {"json": {"name": "x", "role": "admin"}}),
        ("reviewer", "POST", "/api/tokens", {"json": {"name": "x", "role": "admin"}}),
        ("reviewer", "GET", "/api/tokens", {}),
    ]:
        body = assert_error(app_client.api(method, path, role=role, **kwargs), 403, "forbidden")
        assert body["details"]["role"] == role

    assert app_client.snapshot() == before
    assert app_client.objects() == before[1]
    assert app_client.api("GET", "/api/audit", role="reviewer").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/nothing-here"), ("POST", "/api/mask-groups"), ("GET", "/nope"), ("GET", "/api/mask/")],
)
def test_unknown_route_is_404_with_the_error_shape(app_client: Server, method: str, path: str) -> None:
    before = app_client.snapshot()
    assert_error(app_client.api(method, path), 404)
    assert app_client.snapshot() == before


def test_wrong_method_is_405_with_the_error_shape(app_client: Server) -> None:
    assert_error(app_client.api("PATCH", "/api/annotations"), 405, "method_not_allowed")


def test_health_needs_no_token(app_client: Server) -> None:
    response = app_client.client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


def test_a_client_that_hangs_up_mid_upload_leaves_nothing_behind(
    app_client: Server, pending: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The signed-upload route gets half the body, then the client disconnects: nothing is written,
    nothing is answered (there is nobody to answer) and the request log says 499, not a server error.
    Driven at the ASGI level to inject the hang-up."""
    import asyncio
    import logging

    signed, piece = pending["urls"][0], pending["slices"][0]
    parts = urlsplit(signed["url"])
    headers = [(name.lower().encode(), value.encode()) for name, value in signed["headers"].items()]
    headers.append((b"content-length", str(len(piece.body)).encode()))
    scope = {
        "type": "http", "method": "PUT", "path": parts.path, "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(), "headers": headers, "http_version": "1.1", "scheme": "http",
        "server": ("testserver.local", 80), "client": ("127.0.0.1", 5555), "root_path": "", "state": {},
    }  # fmt: skip
    incoming = [
        {"type": "http.request", "body": piece.body[: len(piece.body) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="pacs_mask.access"):
        asyncio.run(app_client.app(scope, receive, send))

    assert sent == []
    assert app_client.snapshot() == pending["before"]
    (record,) = [r for r in caplog.records if r.name == "pacs_mask.access"]
    assert (record.levelname, record.status) == ("INFO", 499)  # type: ignore[attr-defined]
