"""``init-storage`` and the ``deploy/aws`` policy files.

Which bucket APIs ``rclone serve s3`` implements is measured here on every run (the table in
``server/jobs/storage_setup.py`` and docs/operations.md says the same): HeadBucket and CreateBucket
work; PutBucketCors and PutBucketLifecycleConfiguration are taken for CreateBucket (409
BucketAlreadyExists); GetBucketCors and GetBucketLifecycleConfiguration are answered with a bucket
listing. So the CORS and lifecycle parts are tested against **moto**, because rclone lacks those
APIs; moto implements them (it checks no signatures, which these tests do not need).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from server.cli import main
from server.jobs.storage_setup import (
    CORS_ALLOWED_HEADERS,
    CORS_METHODS,
    RULE_ABORT_MULTIPART,
    RULE_EXPIRE_PENDING,
    cors_rule,
    init_storage,
    lifecycle_rules,
)
from server.jobs.validate import MASK_ROOT
from server.settings import Settings
from tests.s3_server import RcloneS3, use_rclone_credentials

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "deploy" / "aws"
BUCKET = Settings.model_fields["s3_bucket"].default
TTL = Settings.model_fields["url_ttl_seconds"].default
ORIGINS = ["https://viewer.example-clinic.org", "https://qa.example-clinic.org"]


def load(name: str) -> Any:
    return json.loads((AWS / name).read_text(encoding="utf-8"))


# --- what rclone serve s3 implements (measured) ------------------------------------------------------


def _call(fn: Any, **kwargs: Any) -> tuple[int, str, dict[str, Any]]:
    try:
        response = fn(**kwargs)
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"], {}
    return response["ResponseMetadata"]["HTTPStatusCode"], "", response


@pytest.mark.s3
def test_rclone_bucket_api_support_is_as_documented(rclone_s3: RcloneS3) -> None:
    client = rclone_s3.client()
    bucket = f"measure-{uuid.uuid4().hex[:12]}"
    cors = {"CORSRules": [cors_rule(ORIGINS)]}
    lifecycle = {"Rules": lifecycle_rules(7, 2)}
    try:
        assert _call(client.head_bucket, Bucket=bucket)[0] == 404
        assert _call(client.create_bucket, Bucket=bucket)[0] == 200  # CreateBucket: implemented
        assert _call(client.head_bucket, Bucket=bucket)[0] == 200
        assert _call(client.create_bucket, Bucket=bucket)[:2] == (409, "BucketAlreadyExists")
        # PutBucketCors / PutBucketLifecycleConfiguration: taken for CreateBucket.
        assert _call(client.put_bucket_cors, Bucket=bucket, CORSConfiguration=cors)[:2] == (
            409,
            "BucketAlreadyExists",
        )
        assert _call(
            client.put_bucket_lifecycle_configuration, Bucket=bucket, LifecycleConfiguration=lifecycle
        )[:2] == (409, "BucketAlreadyExists")
        # GetBucketCors / GetBucketLifecycleConfiguration: a listing comes back, no configuration in it.
        status, _code, response = _call(client.get_bucket_cors, Bucket=bucket)
        assert (status, "CORSRules" in response) == (200, False)
        status, _code, response = _call(client.get_bucket_lifecycle_configuration, Bucket=bucket)
        assert (status, "Rules" in response) == (200, False)
        # Why init-storage never calls these: object tagging rewrites or deletes the object, and
        # DeleteBucketCors deletes the (empty) bucket.
        client.put_object(Bucket=bucket, Key="mask/t.png", Body=b"12345")
        client.put_object_tagging(
            Bucket=bucket,
            Key="mask/t.png",
            Tagging={"TagSet": [{"Key": "pacs-mask-state", "Value": "pending"}]},
        )
        assert client.head_object(Bucket=bucket, Key="mask/t.png")["ContentLength"] != 5
        client.delete_object_tagging(Bucket=bucket, Key="mask/t.png")
        assert _call(client.head_object, Bucket=bucket, Key="mask/t.png")[0] == 404
        client.delete_bucket_cors(Bucket=bucket)
        assert _call(client.head_bucket, Bucket=bucket)[0] == 404
    finally:
        client.close()
        shutil.rmtree(rclone_s3.root / bucket, ignore_errors=True)


@pytest.fixture
def rclone_settings(rclone_s3: RcloneS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings (and environment, for the CLI) naming a bucket on rclone that does not exist yet."""
    use_rclone_credentials(monkeypatch, rclone_s3)
    bucket = f"init-{uuid.uuid4().hex[:12]}"
    env = {
        "PACS_MASK_STORAGE": "s3",
        "PACS_MASK_S3_BUCKET": bucket,
        "PACS_MASK_S3_ENDPOINT_URL": rclone_s3.endpoint_url,
        "PACS_MASK_S3_ADDRESSING_STYLE": "path",
        "PACS_MASK_S3_REGION": rclone_s3.region,
        "PACS_MASK_CORS_ORIGINS": ",".join(ORIGINS),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield Settings.from_env()
    shutil.rmtree(rclone_s3.root / bucket, ignore_errors=True)


@pytest.mark.s3
def test_init_storage_on_rclone_creates_the_bucket_and_says_what_it_lacks(
    rclone_settings: Settings, rclone_s3: RcloneS3, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["init-storage", "--json"]) == 0  # CORS applied by default: not implemented only warns
    first = json.loads(capsys.readouterr().out)
    steps = {(s["part"], s["api"]): s for s in first["steps"]}
    assert steps["bucket", "CreateBucket"]["status"] == "created"
    assert steps["cors", "PutBucketCors"]["status"] == "not_implemented"
    assert "CreateBucket" in steps["cors", "PutBucketCors"]["message"]
    assert steps["lifecycle", "GetBucketLifecycleConfiguration"]["status"] == "not_implemented"
    assert first["cors_in_force"] is None
    assert (rclone_s3.root / rclone_settings.s3_bucket).is_dir()

    assert main(["init-storage"]) == 0  # idempotent
    text = capsys.readouterr().out
    assert "HeadBucket" in text
    assert "EXISTS" in text
    assert "does not implement PutBucketCors" in text

    assert main(["init-storage", "--cors"]) == 1  # asked for explicitly: fails
    assert "asked for" in capsys.readouterr().out
    assert main(["init-storage", "--no-cors", "--abort-multipart-days", "2"]) == 1
    out = capsys.readouterr().out
    assert "PutBucketLifecycleConfiguration" in out
    assert "NOT_IMPLEMENTED" in out
    assert (rclone_s3.root / rclone_settings.s3_bucket).is_dir(), "the bucket must survive every run"


# --- CORS and lifecycle (moto: rclone lacks these APIs) ----------------------------------------------


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """moto's in-process S3 with fake credentials and no developer AWS configuration."""
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with moto.mock_aws():
        yield


def moto_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "storage": "s3",
        "s3_bucket": BUCKET,
        "s3_region": "eu-central-1",
        "cors_origins": ORIGINS,
    }
    return Settings(**(values | overrides))


def test_init_storage_applies_cors_and_lifecycle_and_reads_them_back(moto_s3: None) -> None:
    settings = moto_settings()
    result = init_storage(settings, cors=True, expire_pending_days=7, abort_multipart_days=2)
    assert result.ok, result.render_text()
    statuses = {(s.part, s.api): s.status for s in result.steps}
    assert statuses["bucket", "CreateBucket"] == "created"
    assert statuses["cors", "PutBucketCors"] == "applied"
    assert statuses["lifecycle", "PutBucketLifecycleConfiguration"] == "applied"
    # What is in force is exactly what deploy/aws holds (with these origins and days).
    cors_file = load("cors.json")["CORSRules"][0]
    assert result.cors_in_force == [cors_file | {"AllowedOrigins": ORIGINS}]
    assert result.lifecycle_in_force == load("lifecycle.json")["Rules"]
    assert "In force now" in result.render_text()

    import boto3

    client = boto3.client("s3", region_name="eu-central-1")
    assert client.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == "eu-central-1"
    # Someone else's lifecycle rule on the same bucket survives a re-run; ours are not duplicated.
    foreign = {
        "ID": "keep-me",
        "Status": "Enabled",
        "Filter": {"Prefix": "other/"},
        "Expiration": {"Days": 30},
    }
    client.put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [*result.lifecycle_in_force, foreign]}
    )
    again = init_storage(settings, cors=None, expire_pending_days=7, abort_multipart_days=2)
    assert again.ok
    assert {(s.part, s.api): s.status for s in again.steps}["bucket", "HeadBucket"] == "exists"
    ids = [rule["ID"] for rule in again.lifecycle_in_force or []]
    assert sorted(ids) == sorted(["keep-me", RULE_EXPIRE_PENDING, RULE_ABORT_MULTIPART])
    assert len(again.cors_in_force or []) == 1


def test_init_storage_without_origins_or_lifecycle_reads_back_only(moto_s3: None) -> None:
    result = init_storage(moto_settings(cors_origins=[]))
    assert result.ok
    statuses = {(s.part, s.api): s.status for s in result.steps}
    assert statuses["cors", "PutBucketCors"] == "skipped"
    assert statuses["cors", "GetBucketCors"] == "ok"
    assert result.cors_in_force == []
    assert result.lifecycle_in_force == []
    assert not init_storage(moto_settings(cors_origins=[]), cors=True).ok  # --cors without origins


def test_init_storage_on_local_storage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = init_storage(Settings(data_dir=tmp_path))
    assert result.ok
    assert "local disk" in result.render_text()
    assert not init_storage(Settings(data_dir=tmp_path), cors=True).ok


# --- deploy/aws ----------------------------------------------------------------------------------------


def test_deploy_aws_files_are_valid_and_use_the_bucket_and_prefix() -> None:
    files = sorted(AWS.glob("*.json"))
    assert {f.name for f in files} >= {
        "iam-policy.json",
        "bucket-policy.json",
        "cors.json",
        "lifecycle.json",
        "init-storage-policy.json",
    }
    for path in files:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        for arn in re.findall(r"arn:aws:s3:::([A-Za-z0-9.\-]+)", text):
            assert arn == BUCKET, f"{path.name} names bucket {arn!r}, not {BUCKET!r}"

    iam = load("iam-policy.json")
    objects, listing = iam["Statement"]
    assert objects["Effect"] == "Allow"
    assert sorted(objects["Action"]) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert objects["Resource"] == f"arn:aws:s3:::{BUCKET}/{MASK_ROOT}*"
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Resource"] == f"arn:aws:s3:::{BUCKET}"
    prefixes = listing["Condition"]["StringLike"]["s3:prefix"]
    assert all(p.startswith(MASK_ROOT) for p in prefixes)
    assert len(iam["Statement"]) == 2, "the server's role gets nothing else"

    bucket_policy = {s["Sid"]: s for s in load("bucket-policy.json")["Statement"]}
    assert all(s["Effect"] == "Deny" for s in bucket_policy.values())
    sigv4 = next(s for s in bucket_policy.values() if "s3:signatureversion" in json.dumps(s))
    assert sigv4["Condition"]["StringNotEquals"]["s3:signatureversion"] == "AWS4-HMAC-SHA256"
    age = next(s for s in bucket_policy.values() if "s3:signatureAge" in json.dumps(s))
    max_age_ms = int(age["Condition"]["NumericGreaterThan"]["s3:signatureAge"])
    assert max_age_ms == TTL * 1000, "the signature age limit must equal the default URL TTL"
    for statement in bucket_policy.values():
        assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]


def test_deploy_cors_and_lifecycle_are_what_init_storage_applies() -> None:
    cors = load("cors.json")["CORSRules"]
    assert len(cors) == 1
    assert cors == [cors_rule(cors[0]["AllowedOrigins"])]
    assert cors[0]["AllowedMethods"] == CORS_METHODS
    assert {"content-md5", "content-type"} <= set(CORS_ALLOWED_HEADERS)
    assert cors[0]["ExposeHeaders"] == ["ETag"]
    rules = load("lifecycle.json")["Rules"]
    expire = next(r for r in rules if r["ID"] == RULE_EXPIRE_PENDING)
    abort = next(r for r in rules if r["ID"] == RULE_ABORT_MULTIPART)
    assert rules == lifecycle_rules(
        expire["Expiration"]["Days"], abort["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
    )
    assert expire["Filter"]["And"]["Prefix"] == MASK_ROOT
    assert abort["Filter"]["Prefix"] == MASK_ROOT
