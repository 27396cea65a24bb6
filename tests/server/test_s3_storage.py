"""S3Storage against a REAL S3-compatible server (``rclone serve s3``), plus signer and error unit tests.

rclone checks SigV4 signatures, expiry and Content-MD5 like S3 does, so these tests show that the
storage server itself refuses every kind of tampering with a presigned PUT. Statuses observed with
rclone 1.75: BadDigest 400 for other bytes, SignatureDoesNotMatch 403 for another key, length, type,
method or signature, AccessDenied 400 with a time-skew message once expired (AWS: 403 "Request has
expired").
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import botocore.auth
import httpx
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from server.settings import Settings
from server.storage.base import StorageError
from server.storage.s3 import S3Storage
from tests.s3_server import RcloneS3, use_rclone_credentials

KEY = "mask/101/202/slice_0001.png"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex(data))).decode("ascii")


def sign_put(storage: S3Storage, key: str, body: bytes, *, ttl: int = 60, content_type: str = "image/png"):
    return storage.presign_put(
        key, size=len(body), content_md5=md5_b64(body), content_type=content_type, ttl_seconds=ttl
    )


def put(storage: S3Storage, key: str, body: bytes) -> None:
    signed = sign_put(storage, key, body)
    response = httpx.put(signed.url, content=body, headers=signed.headers)
    assert response.status_code == 200, response.text


def error_code(response: httpx.Response) -> str:
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else ""


@pytest.fixture
def body() -> bytes:
    return os.urandom(4096)


# -- real server --------------------------------------------------------------------------------------


@pytest.mark.s3
class TestPresignedPutOnRclone:
    def test_put_with_exactly_the_returned_headers_lands(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        assert signed.method == "PUT"
        assert set(signed.headers) == {"Content-MD5", "Content-Type", "Content-Length", "If-None-Match"}

        response = httpx.put(signed.url, content=body, headers=signed.headers)

        assert response.status_code == 200, response.text
        info = s3_storage.stat(KEY)
        assert info is not None
        assert (info.key, info.size, info.md5_hex) == (KEY, len(body), md5_hex(body))

    def test_key_needing_quoting_round_trips(self, s3_storage: S3Storage, body: bytes) -> None:
        key = "mask/1/2/slice 0001+a~(b).png"
        put(s3_storage, key, body)
        info = s3_storage.stat(key)
        assert info is not None
        assert info.size == len(body)
        assert b"".join(s3_storage.open(key)) == body

    def test_other_bytes_of_same_length_are_refused_as_bad_digest(
        self, s3_storage: S3Storage, body: bytes
    ) -> None:
        signed = sign_put(s3_storage, KEY, body)
        corrupted = bytes([body[0] ^ 0xFF]) + body[1:]

        response = httpx.put(signed.url, content=corrupted, headers=signed.headers)

        assert response.status_code == 400
        assert error_code(response) == "BadDigest"
        assert s3_storage.stat(KEY) is None

    def test_tampered_signature_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        last = signed.url[-1]
        tampered = signed.url[:-1] + ("0" if last != "0" else "1")

        response = httpx.put(tampered, content=body, headers=signed.headers)

        assert response.status_code == 403
        assert error_code(response) == "SignatureDoesNotMatch"
        assert s3_storage.stat(KEY) is None

    def test_url_used_for_another_key_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        other = signed.url.replace("slice_0001.png", "slice_0002.png")
        assert other != signed.url

        response = httpx.put(other, content=body, headers=signed.headers)

        assert response.status_code == 403
        assert error_code(response) == "SignatureDoesNotMatch"
        assert s3_storage.stat("mask/101/202/slice_0002.png") is None

    def test_expired_url_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body, ttl=1)
        time.sleep(2.2)

        response = httpx.put(signed.url, content=body, headers=signed.headers)

        # rclone: 400 AccessDenied "difference between the request time and the server's time";
        # AWS: 403 AccessDenied "Request has expired".
        assert response.status_code in (400, 403)
        assert error_code(response) == "AccessDenied"
        assert "time" in response.text or "expired" in response.text
        assert s3_storage.stat(KEY) is None

    def test_oversize_body_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        headers = {**signed.headers, "Content-Length": str(len(body) + 1)}

        response = httpx.put(signed.url, content=body + b"x", headers=headers)

        assert response.status_code == 403
        assert error_code(response) == "SignatureDoesNotMatch"
        assert s3_storage.stat(KEY) is None

    def test_chunked_body_without_content_length_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        headers = {k: v for k, v in signed.headers.items() if k != "Content-Length"}

        response = httpx.put(signed.url, content=iter([body]), headers=headers)

        assert response.status_code == 403
        assert s3_storage.stat(KEY) is None

    def test_changed_content_type_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        headers = {**signed.headers, "Content-Type": "application/octet-stream"}

        response = httpx.put(signed.url, content=body, headers=headers)

        assert response.status_code == 403
        assert error_code(response) == "SignatureDoesNotMatch"
        assert s3_storage.stat(KEY) is None

    def test_missing_content_md5_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)
        headers = {k: v for k, v in signed.headers.items() if k != "Content-MD5"}

        response = httpx.put(signed.url, content=body, headers=headers)

        assert response.status_code == 403
        assert s3_storage.stat(KEY) is None

    def test_put_url_cannot_be_used_with_another_method(self, s3_storage: S3Storage, body: bytes) -> None:
        signed = sign_put(s3_storage, KEY, body)

        response = httpx.post(signed.url, content=body, headers=signed.headers)

        assert response.status_code in (403, 405)
        assert s3_storage.stat(KEY) is None

    def test_parallel_puts_share_one_client(self, s3_storage: S3Storage) -> None:
        bodies = {f"mask/7/8/slice_{i:04d}.png": os.urandom(512 + i) for i in range(24)}
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: put(s3_storage, *item), bodies.items()))
        for key, data in bodies.items():
            info = s3_storage.stat(key)
            assert info is not None
            assert info.md5_hex == md5_hex(data)


@pytest.mark.s3
class TestReadsOnRclone:
    def test_presigned_get_returns_the_bytes(self, s3_storage: S3Storage, body: bytes) -> None:
        put(s3_storage, KEY, body)
        signed = s3_storage.presign_get(KEY, ttl_seconds=60)
        assert signed.method == "GET"
        assert signed.headers == {}

        response = httpx.get(signed.url)

        assert response.status_code == 200
        assert response.content == body

    def test_presigned_get_of_another_key_is_refused(self, s3_storage: S3Storage, body: bytes) -> None:
        put(s3_storage, KEY, body)
        put(s3_storage, "mask/101/202/slice_0002.png", body)
        signed = s3_storage.presign_get(KEY, ttl_seconds=60)

        response = httpx.get(signed.url.replace("slice_0001", "slice_0002"))

        assert response.status_code == 403

    def test_open_streams_in_chunks_and_missing_key_is_keyerror(self, s3_storage: S3Storage) -> None:
        data = os.urandom(200_000)
        put(s3_storage, KEY, data)

        chunks = list(s3_storage.open(KEY, chunk_size=64 * 1024))

        assert b"".join(chunks) == data
        assert len(chunks) > 1
        with pytest.raises(KeyError):
            s3_storage.open("mask/101/202/missing.png")

    def test_read_many_returns_every_object_once_and_missing_is_keyerror(
        self, s3_storage: S3Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        objects = {f"mask/7/g/slice_{i:04d}.png": os.urandom(50 + i) for i in range(40)}
        for key, data in objects.items():
            put(s3_storage, key, data)
        assert dict(s3_storage.read_many(list(objects))) == objects
        assert s3_storage.read(next(iter(objects))) == next(iter(objects.values()))
        with pytest.raises(KeyError):
            dict(s3_storage.read_many([*objects, "mask/7/g/missing.png"]))
        # A GET the server refuses (here: a spoilt signature, 403) is read through boto3 instead.
        sign = s3_storage._sign
        first = next(iter(objects))

        def spoilt(method: str, key: str, *args: Any, **kwargs: Any) -> tuple[str, dt.datetime]:
            url, at = sign(method, key, *args, **kwargs)
            return (url.replace("X-Amz-Signature=", "X-Amz-Signature=00") if key == first else url), at

        monkeypatch.setattr(s3_storage, "_sign", spoilt)
        assert dict(s3_storage.read_many(list(objects))) == objects

    def test_stat_of_missing_key_is_none(self, s3_storage: S3Storage) -> None:
        assert s3_storage.stat("mask/101/202/missing.png") is None

    def test_list_usage_and_delete_prefix(self, s3_storage: S3Storage) -> None:
        group_a = {f"mask/1/a/slice_{i:04d}.png": os.urandom(100 + i) for i in range(5)}
        group_b = {f"mask/1/b/slice_{i:04d}.png": os.urandom(300) for i in range(3)}
        for key, data in (group_a | group_b).items():
            put(s3_storage, key, data)

        listed = {info.key: info for info in s3_storage.list("mask/1/a/")}
        assert set(listed) == set(group_a)
        for key, data in group_a.items():
            assert listed[key].size == len(data)
            assert listed[key].md5_hex == md5_hex(data)
        usage = s3_storage.usage("mask/1/")
        assert (usage.objects, usage.bytes) == (8, sum(len(d) for d in (group_a | group_b).values()))

        assert s3_storage.delete_prefix("mask/1/a/") == 5

        assert list(s3_storage.list("mask/1/a/")) == []
        assert {info.key for info in s3_storage.list("mask/1/")} == set(group_b)
        assert s3_storage.delete_prefix("mask/1/a/") == 0  # safe to repeat

    @pytest.mark.slow
    def test_delete_prefix_over_1000_objects(self, s3_storage: S3Storage, rclone_s3_client: Any) -> None:
        def upload(i: int) -> None:
            rclone_s3_client.put_object(Bucket=s3_storage.bucket, Key=f"mask/5/g/{i:05d}.png", Body=b"x")

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(upload, range(1003)))
        rclone_s3_client.put_object(Bucket=s3_storage.bucket, Key="mask/5/other/keep.png", Body=b"yy")

        assert s3_storage.delete_prefix("mask/5/g/") == 1003

        assert s3_storage.usage("mask/5/").objects == 1
        assert s3_storage.stat("mask/5/other/keep.png") is not None

    def test_delete_prefix_refuses_the_whole_bucket(self, s3_storage: S3Storage) -> None:
        with pytest.raises(ValueError, match="prefix"):
            s3_storage.delete_prefix("")


@pytest.mark.s3
class TestCheckOnRclone:
    def test_check_passes_on_existing_bucket(self, s3_storage: S3Storage) -> None:
        s3_storage.check()

    def test_check_names_missing_bucket_and_endpoint(
        self, rclone_s3: RcloneS3, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        use_rclone_credentials(monkeypatch, rclone_s3)
        storage = S3Storage("no-such-bucket", endpoint_url=rclone_s3.endpoint_url, addressing_style="path")
        try:
            with pytest.raises(StorageError) as caught:
                storage.check()
        finally:
            storage.close()
        message = str(caught.value)
        assert "'no-such-bucket'" in message
        assert rclone_s3.endpoint_url in message
        assert "does not exist" in message

    def test_check_with_wrong_secret_never_shows_it(
        self, rclone_s3: RcloneS3, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        use_rclone_credentials(monkeypatch, rclone_s3)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
        storage = S3Storage(rclone_s3.bucket, endpoint_url=rclone_s3.endpoint_url, addressing_style="path")
        try:
            with pytest.raises(StorageError) as caught:
                storage.check()
        finally:
            storage.close()
        assert "wrong-secret-value-123" not in str(caught.value)
        assert rclone_s3.bucket in str(caught.value)


# -- no server needed ---------------------------------------------------------------------------------


@pytest.fixture
def offline_storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Storage]:
    """An S3Storage on an endpoint nothing listens on: presigning is local CPU work only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage = S3Storage(
        "pacs-masks", endpoint_url="http://127.0.0.1:9", addressing_style="path", region="us-east-1"
    )
    yield storage
    storage.close()


def _botocore_put_url(storage: S3Storage, key: str, data: bytes, ttl: int) -> str:
    """The PUT URL the client's own presigner makes for the same inputs (the reference for ours)."""
    return storage._client.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": storage.bucket,
            "Key": key,
            "ContentMD5": md5_b64(data),
            "ContentType": "image/png",
            "ContentLength": len(data),
            "IfNoneMatch": "*",
        },
        ExpiresIn=ttl,
    )


def _freeze_botocore_clock(monkeypatch: pytest.MonkeyPatch, when: dt.datetime) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_args, **_kwargs: when)


@pytest.mark.parametrize(
    "when",
    [dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(2026, 1, 3, 0, 0, 1), dt.datetime(2026, 1, 2, 23, 59, 59)],
)
def test_presign_put_matches_botocore_generate_presigned_url(
    offline_storage: S3Storage, monkeypatch: pytest.MonkeyPatch, when: dt.datetime
) -> None:
    """Same timestamp, same inputs → byte-identical URL to the client's own presigner (several days,
    so the cached signing key can never be reused across a date change)."""
    _freeze_botocore_clock(monkeypatch, when)
    data = b"mask bytes"
    key = "mask/1/2/a b+c.png"

    ours = offline_storage.presign_put(
        key, size=len(data), content_md5=md5_b64(data), content_type="image/png", ttl_seconds=900
    )
    theirs = _botocore_put_url(offline_storage, key, data, 900)

    assert ours.url == theirs
    assert ours.expires_at == when.replace(tzinfo=dt.UTC) + dt.timedelta(seconds=900)


def test_presign_get_matches_botocore(offline_storage: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    _freeze_botocore_clock(monkeypatch, dt.datetime(2026, 5, 6, 7, 8, 9))
    ours = offline_storage.presign_get(KEY, ttl_seconds=300)
    theirs = offline_storage._client.generate_presigned_url(
        "get_object", Params={"Bucket": "pacs-masks", "Key": KEY}, ExpiresIn=300
    )
    assert ours.url == theirs


def test_presign_put_signs_length_md5_and_type(offline_storage: S3Storage) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    signed = offline_storage.presign_put(
        KEY, size=10, content_md5=md5_b64(b"0123456789"), content_type="image/png", ttl_seconds=600
    )
    query = parse_qs(urlsplit(signed.url).query)
    assert query["X-Amz-SignedHeaders"] == ["content-length;content-md5;content-type;host;if-none-match"]
    assert query["X-Amz-Expires"] == ["600"]
    assert signed.headers == {
        "Content-MD5": md5_b64(b"0123456789"),
        "Content-Type": "image/png",
        "Content-Length": "10",
        "If-None-Match": "*",  # create-only where the server honours it (tests/server/test_create_only.py)
    }
    assert before + dt.timedelta(seconds=600) <= signed.expires_at <= before + dt.timedelta(seconds=602)
    assert urlsplit(signed.url).path == "/pacs-masks/" + KEY


@pytest.mark.parametrize(
    ("endpoint", "style", "region"),
    [
        ("http://127.0.0.1:9", "path", "us-east-1"),
        ("https://minio.clinic.example:443", "path", "eu-central-1"),
        ("https://s3.eu-west-1.amazonaws.com", "virtual", "eu-west-1"),
        ("http://storage.local:80", "virtual", "us-east-1"),
        ("http://MinIO.Clinic.Example:9000", "path", "us-east-1"),
        ("https://[fd00::5]:443", "path", "us-east-1"),
        ("http://[fd00::5]:9000", "path", "us-east-1"),
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////token+with/odd=chars"])
@pytest.mark.parametrize(
    "key", ["mask/1/2/slice_0001.png", "mask/7/g/a b+c~d(e)!.png", "mask/9/g/\u00e9t\u00e9.png"]
)
def test_hand_written_signer_matches_botocore_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, style: str, region: str, token: str | None, key: str
) -> None:
    """server/storage/sigv4.py against botocore's S3 query signer: endpoints with and without default
    ports, path and virtual-host style, session tokens, keys that need quoting, PUT and GET."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if token is None:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    else:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    _freeze_botocore_clock(monkeypatch, dt.datetime(2026, 11, 27, 23, 59, 58))
    storage = S3Storage("pacs-masks", endpoint_url=endpoint, addressing_style=style, region=region)
    try:
        data = b"slice"
        ours_put = storage.presign_put(
            key, size=len(data), content_md5=md5_b64(data), content_type="image/png", ttl_seconds=3600
        )
        theirs_put = _botocore_put_url(storage, key, data, 3600)
        ours_get = storage.presign_get(key, ttl_seconds=60)
        theirs_get = storage._client.generate_presigned_url(
            "get_object", Params={"Bucket": "pacs-masks", "Key": key}, ExpiresIn=60
        )
    finally:
        storage.close()
    assert ours_put.url == theirs_put
    assert ours_get.url == theirs_get


def test_session_token_is_carried(offline_storage: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token/with+chars")
    storage = S3Storage("pacs-masks", endpoint_url="http://127.0.0.1:9", addressing_style="path")
    try:
        signed = storage.presign_get(KEY, ttl_seconds=60)
    finally:
        storage.close()
    assert parse_qs(urlsplit(signed.url).query)["X-Amz-Security-Token"] == ["token/with+chars"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"content_md5": "not-base64!"}, "content_md5"),
        ({"content_md5": base64.b64encode(b"short").decode()}, "content_md5"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": 7 * 24 * 3600 + 1}, "ttl_seconds"),
        ({"size": -1}, "size"),
        ({"content_type": ""}, "content_type"),
        ({"content_type": "image/png\r\nX-Evil: 1"}, "content_type"),
    ],
)
def test_presign_put_rejects_bad_arguments(offline_storage: S3Storage, kwargs: dict, match: str) -> None:
    args = {"size": 3, "content_md5": md5_b64(b"abc"), "content_type": "image/png", "ttl_seconds": 60}
    with pytest.raises(ValueError, match=match):
        offline_storage.presign_put(KEY, **(args | kwargs))


def test_no_credentials_is_a_storage_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    storage = S3Storage("pacs-masks", endpoint_url="http://127.0.0.1:9", addressing_style="path")
    try:
        with pytest.raises(StorageError, match="credentials"):
            storage.presign_get(KEY, ttl_seconds=60)
    finally:
        storage.close()


def test_from_settings_uses_s3_fields(offline_storage: S3Storage) -> None:
    settings = Settings(
        storage="s3",
        s3_bucket="other-bucket",
        s3_endpoint_url="http://127.0.0.1:9/",
        s3_addressing_style="path",
        s3_region="eu-west-1",
    )
    storage = S3Storage.from_settings(settings)
    try:
        signed = storage.presign_get(KEY, ttl_seconds=60)
    finally:
        storage.close()
    assert signed.url.startswith("http://127.0.0.1:9/other-bucket/" + KEY + "?")
    assert "%2Feu-west-1%2Fs3%2F" in signed.url
    assert storage.name == "s3"


def test_delete_prefix_batches_by_1000_and_reports_per_key_errors(offline_storage: S3Storage) -> None:
    keys = [f"mask/9/9/slice_{i:05d}.png" for i in range(1003)]
    with Stubber(offline_storage._client) as stub:
        stub.add_response(
            "list_objects_v2",
            {
                "Contents": [{"Key": k, "Size": 1, "ETag": '"' + "0" * 32 + '"'} for k in keys[:1000]],
                "IsTruncated": True,
                "NextContinuationToken": "t1",
            },
        )
        stub.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": k, "Size": 1} for k in keys[1000:]], "IsTruncated": False},
        )
        stub.add_response(
            "delete_objects",
            {},
            {"Bucket": "pacs-masks", "Delete": {"Objects": [{"Key": k} for k in keys[:1000]], "Quiet": True}},
        )
        stub.add_response(
            "delete_objects",
            {"Errors": [{"Key": keys[1001], "Code": "AccessDenied", "Message": "no"}]},
            {"Bucket": "pacs-masks", "Delete": {"Objects": [{"Key": k} for k in keys[1000:]], "Quiet": True}},
        )
        with pytest.raises(StorageError) as caught:
            offline_storage.delete_prefix("mask/9/9/")
        stub.assert_no_pending_responses()
    message = str(caught.value)
    assert "1 of 1003" in message
    assert keys[1001] in message
    assert "AccessDenied" in message


def test_stat_hashes_the_bytes_when_etag_is_multipart(offline_storage: S3Storage) -> None:
    data = b"x" * 1000
    with Stubber(offline_storage._client) as stub:
        stub.add_response(
            "head_object", {"ContentLength": len(data), "ETag": '"0123456789abcdef0123456789abcdef-2"'}
        )
        stub.add_response(
            "get_object",
            {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data)},
        )
        info = offline_storage.stat(KEY)
    assert info is not None
    assert info.md5_hex == md5_hex(data)
    assert info.size == len(data)


def test_client_errors_become_storage_errors_without_signatures(offline_storage: S3Storage) -> None:
    with Stubber(offline_storage._client) as stub:
        stub.add_client_error("head_object", "InternalError", "boom", http_status_code=500)
        with pytest.raises(StorageError, match=r"HEAD failed for .*InternalError \(HTTP 500\)") as caught:
            offline_storage.stat(KEY)
    assert "Signature" not in str(caught.value)


@pytest.mark.parametrize("token", [None, "session/token+x="])
def test_hand_written_signer_with_operation_parameters_matches_botocore(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    """The listing request's signature (operation parameters before the signature's) equals botocore's."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from server.storage import sigv4

    when = dt.datetime(2026, 11, 27, 8, 0, 1)
    _freeze_botocore_clock(monkeypatch, when)
    prefix = "https://minio.clinic.example:9000/pacs-masks/"
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    params = {
        "list-type": "2",
        "prefix": "mask/7/a b+c/",
        "encoding-type": "url",
        "continuation-token": "x/y+z==",
    }
    query = "&".join(f"{name}={quote(value, safe='-_.~')}" for name, value in params.items())
    request = AWSRequest(method="GET", url=f"{prefix}?{query}")
    S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", secret, token), "s3", "eu-central-1", expires=60).add_auth(
        request
    )

    ours = sigv4.presign(
        "GET", prefix, "", {}, access_key="AKIDEXAMPLE", secret_key=secret, token=token, region="eu-central-1",
        expires=60, now=when, params=params,
    )  # fmt: skip

    assert ours == request.url
