"""``init-storage``: create the bucket, apply CORS and (optionally) lifecycle rules, read both back.

Idempotent: the bucket is created only when HeadBucket says it is missing; our CORS rule and our
lifecycle rules carry fixed IDs and replace only themselves, other rules on the bucket are kept.

What S3-compatible servers really implement differs. Measured against ``rclone serve s3`` v1.75
(``tests/ops/test_init_storage.py`` repeats the measurement on every run):

=====================================  ==================================================================
API                                    rclone serve s3
=====================================  ==================================================================
HeadBucket                             implemented (404 when missing)
CreateBucket                           implemented (a repeat answers 409 BucketAlreadyExists)
PutBucketCors                          not implemented: taken for CreateBucket, 409 BucketAlreadyExists
GetBucketCors                          not implemented: answered with a bucket listing (200, no rules)
PutBucketLifecycleConfiguration        not implemented: taken for CreateBucket, 409 BucketAlreadyExists
GetBucketLifecycleConfiguration        not implemented: answered with a bucket listing (200, no rules)
DeleteBucketCors / DeleteBucketLife..  DANGEROUS: taken for DeleteBucket (an empty bucket is removed)
PutObjectTagging                       DANGEROUS: taken for PutObject (the bytes become the tagging XML)
DeleteObjectTagging                    DANGEROUS: taken for DeleteObject
=====================================  ==================================================================

So a read-back that returns 200 without rules is reported as "not implemented" (real S3 answers 404
``NoSuchCORSConfiguration`` / ``NoSuchLifecycleConfiguration`` when nothing is set), and this module
never calls the Delete* bucket-configuration APIs nor object tagging. Not measured here: MinIO
documents lifecycle support and has long answered ``NotImplemented`` for bucket CORS (it has a
server-wide CORS setting instead); either way the report says what the server answered.

A part the user asked for explicitly (``--cors``, ``--expire-pending-days``, ``--abort-multipart-days``)
makes the command exit non-zero when the server does not implement it or it is not in force after
applying; a part applied by default only warns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from server.jobs.validate import MASK_ROOT
from server.settings import Settings

#: The prefix every object of the server lives under (``mask/{annotation_id}/{group_id}/{filename}``).
MASK_PREFIX = MASK_ROOT
#: Our CORS rule's ID; other rules on the bucket are left alone.
CORS_RULE_ID = "pacs-mask-upload"
#: Methods a browser needs: PUT to the signed upload URL, GET to a signed download URL.
CORS_METHODS = ["PUT", "GET"]
#: Request headers the signed PUT URLs bind and a browser sends explicitly (it sets Content-Length itself);
#: ``If-None-Match: *`` makes the PUT create-only (server.storage.s3).
CORS_ALLOWED_HEADERS = ["content-md5", "content-type", "if-none-match"]
#: Response headers a browser may read: the ETag (the object's MD5) to check an upload landed intact.
CORS_EXPOSE_HEADERS = ["ETag"]
CORS_MAX_AGE_SECONDS = 3000
#: Lifecycle rule IDs.
RULE_EXPIRE_PENDING = "pacs-mask-expire-pending"
RULE_ABORT_MULTIPART = "pacs-mask-abort-multipart"
#: Object tag marking an upload whose group was never completed (see docs/operations.md: the server
#: does not tag uploads yet, so until it does the expiry rule matches nothing).
PENDING_TAG = {"Key": "pacs-mask-state", "Value": "pending"}

_NOT_IMPLEMENTED_CODES = frozenset({"NotImplemented", "501", "MethodNotAllowed", "405"})
# rclone takes PUT ?cors / PUT ?lifecycle for CreateBucket and answers this on an existing bucket.
_MISROUTED_CODES = frozenset({"BucketAlreadyExists", "BucketAlreadyOwnedByYou"})
_NO_CONFIG_CODES = frozenset({"NoSuchCORSConfiguration", "NoSuchLifecycleConfiguration"})

OK, CREATED, EXISTS, APPLIED, SKIPPED, NOT_IMPLEMENTED, FAILED = (
    "ok",
    "created",
    "exists",
    "applied",
    "skipped",
    "not_implemented",
    "failed",
)


def cors_rule(origins: list[str]) -> dict[str, Any]:
    """The CORS rule ``init-storage`` applies for ``origins`` (``deploy/aws/cors.json`` holds the same)."""
    return {
        "ID": CORS_RULE_ID,
        "AllowedOrigins": list(origins),
        "AllowedMethods": list(CORS_METHODS),
        "AllowedHeaders": list(CORS_ALLOWED_HEADERS),
        "ExposeHeaders": list(CORS_EXPOSE_HEADERS),
        "MaxAgeSeconds": CORS_MAX_AGE_SECONDS,
    }


def lifecycle_rules(
    expire_pending_days: int | None, abort_multipart_days: int | None
) -> list[dict[str, Any]]:
    """The lifecycle rules ``init-storage`` applies (``deploy/aws/lifecycle.json`` holds the same)."""
    rules: list[dict[str, Any]] = []
    if expire_pending_days is not None:
        rules.append(
            {
                "ID": RULE_EXPIRE_PENDING,
                "Status": "Enabled",
                "Filter": {"And": {"Prefix": MASK_PREFIX, "Tags": [dict(PENDING_TAG)]}},
                "Expiration": {"Days": expire_pending_days},
            }
        )
    if abort_multipart_days is not None:
        rules.append(
            {
                "ID": RULE_ABORT_MULTIPART,
                "Status": "Enabled",
                "Filter": {"Prefix": MASK_PREFIX},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days},
            }
        )
    return rules


@dataclass(slots=True)
class Step:
    """One part of the setup: which S3 API, what happened, and whether the user asked for it."""

    part: str
    api: str
    status: str
    message: str
    explicit: bool = False

    @property
    def fails_run(self) -> bool:
        """True when this step makes the command exit non-zero."""
        if self.status == FAILED:
            return True
        return self.explicit and self.status == NOT_IMPLEMENTED


@dataclass(slots=True)
class SetupResult:
    """What ``init-storage`` did and what the bucket says is in force."""

    storage: str
    bucket: str | None
    endpoint: str | None
    steps: list[Step] = field(default_factory=list)
    cors_in_force: list[dict[str, Any]] | None = None
    lifecycle_in_force: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        """False when a step failed, or a part asked for explicitly is not implemented or not in force."""
        return not any(step.fails_run for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON form printed by ``init-storage --json``."""
        return {
            "ok": self.ok,
            "storage": self.storage,
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "steps": [asdict(s) | {"fails_run": s.fails_run} for s in self.steps],
            "cors_in_force": self.cors_in_force,
            "lifecycle_in_force": self.lifecycle_in_force,
        }

    def render_text(self) -> str:
        """A readable account of every step and of what is in force."""
        lines = [
            f"Storage: {self.storage}"
            + (f", bucket {self.bucket!r} at {self.endpoint}" if self.bucket else "")
        ]
        for step in self.steps:
            flag = " (asked for: this fails the run)" if step.fails_run else ""
            lines.append(f"  {step.part:10} {step.api:34} {step.status.upper()}{flag}")
            lines.append(f"             {step.message}")
        if self.bucket:
            lines.append("In force now:")
            lines.append(f"  CORS:      {_show(self.cors_in_force)}")
            lines.append(f"  lifecycle: {_show(self.lifecycle_in_force)}")
        lines.append("Result: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def _show(rules: list[dict[str, Any]] | None) -> str:
    if rules is None:
        return "unknown (the server does not report it)"
    if not rules:
        return "none"
    return json.dumps(rules, sort_keys=True)


def _code_status(exc: ClientError) -> tuple[str, int | None]:
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _not_implemented(code: str, status: int | None) -> bool:
    return code in _NOT_IMPLEMENTED_CODES or code in _MISROUTED_CODES or status in (405, 501)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code, status = _code_status(exc)
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        return f"{code} (HTTP {status})" + (f": {message}" if message and message != code else "")
    return type(exc).__name__


class _Unreported(Exception):
    """A Get* call answered 200 without the configuration (the server does not implement it)."""


def _read(client: Any, api: str, bucket: str, key: str) -> list[dict[str, Any]]:
    """Rules read back with ``api``: ``[]`` when none are set; ``_Unreported`` / ClientError otherwise."""
    method = {
        "GetBucketCors": client.get_bucket_cors,
        "GetBucketLifecycleConfiguration": client.get_bucket_lifecycle_configuration,
    }[api]
    try:
        response = method(Bucket=bucket)
    except ClientError as exc:
        if _code_status(exc)[0] in _NO_CONFIG_CODES:
            return []
        raise
    if key not in response:
        raise _Unreported
    return list(response[key])


def _normalise(rule: dict[str, Any]) -> str:
    return json.dumps(rule, sort_keys=True)


class StorageSetup:
    """Runs the setup steps against one bucket through a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, *, region: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.region = region

    def ensure_bucket(self) -> Step:
        """HeadBucket, then CreateBucket when it is missing."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return Step("bucket", "HeadBucket", EXISTS, f"bucket {self.bucket!r} exists", True)
        except ClientError as exc:
            code, status = _code_status(exc)
            if status != 404 and code not in ("404", "NoSuchBucket", "NotFound"):
                return Step(
                    "bucket", "HeadBucket", FAILED, f"cannot check the bucket: {_describe(exc)}", True
                )
        except BotoCoreError as exc:
            return Step("bucket", "HeadBucket", FAILED, f"cannot reach storage: {_describe(exc)}", True)
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code_status(exc)[0] in _MISROUTED_CODES:  # created meanwhile by someone else
                return Step("bucket", "CreateBucket", EXISTS, f"bucket {self.bucket!r} exists", True)
            return Step("bucket", "CreateBucket", FAILED, f"cannot create the bucket: {_describe(exc)}", True)
        except BotoCoreError as exc:
            return Step("bucket", "CreateBucket", FAILED, f"cannot create the bucket: {_describe(exc)}", True)
        return Step("bucket", "CreateBucket", CREATED, f"created bucket {self.bucket!r}", True)

    def read(self, part: str) -> tuple[list[dict[str, Any]] | None, Step]:
        """Read back CORS (``part="cors"``) or lifecycle rules; ``None`` when the server cannot say."""
        api, key = (
            ("GetBucketCors", "CORSRules") if part == "cors" else ("GetBucketLifecycleConfiguration", "Rules")
        )
        try:
            rules = _read(self.client, api, self.bucket, key)
        except _Unreported:
            return None, Step(
                part,
                api,
                NOT_IMPLEMENTED,
                f"the server answered {api} with something that is not a {part} configuration "
                "(rclone serve s3 answers with a bucket listing): it does not implement this API",
            )
        except ClientError as exc:
            code, status = _code_status(exc)
            status_name = NOT_IMPLEMENTED if _not_implemented(code, status) else FAILED
            return None, Step(
                part, api, status_name, f"cannot read the {part} configuration: {_describe(exc)}"
            )
        except BotoCoreError as exc:
            return None, Step(part, api, FAILED, f"cannot read the {part} configuration: {_describe(exc)}")
        summary = f"{len(rules)} rule(s) in force" if rules else "no rules in force"
        return rules, Step(part, api, OK, summary)

    def apply(
        self, part: str, ours: list[dict[str, Any]], *, explicit: bool
    ) -> tuple[list[dict[str, Any]] | None, list[Step]]:
        """Put ``ours`` (replacing earlier rules with the same IDs, keeping the others), then read back."""
        api = "PutBucketCors" if part == "cors" else "PutBucketLifecycleConfiguration"
        steps: list[Step] = []
        current, read_step = self.read(part)
        ids = {rule["ID"] for rule in ours}
        keep = [rule for rule in (current or []) if rule.get("ID") not in ids]
        try:
            if part == "cors":
                self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": keep + ours})
            else:
                self.client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": keep + ours}
                )
        except ClientError as exc:
            code, status = _code_status(exc)
            if _not_implemented(code, status):
                how = (
                    " (it took the request for CreateBucket, as rclone serve s3 does)"
                    if code in _MISROUTED_CODES
                    else ""
                )
                steps.append(
                    Step(
                        part,
                        api,
                        NOT_IMPLEMENTED,
                        f"the server does not implement {api}{how}: {_describe(exc)}",
                        explicit,
                    )
                )
            else:
                steps.append(Step(part, api, FAILED, f"{api} was refused: {_describe(exc)}", explicit))
            return current, [*steps, read_step]
        except BotoCoreError as exc:
            return current, [Step(part, api, FAILED, f"{api} failed: {_describe(exc)}", explicit)]
        rules, read_step = self.read(part)
        read_step.explicit = explicit
        in_force = rules is not None and {_normalise(r) for r in ours} <= {_normalise(r) for r in rules}
        if in_force:
            steps.append(
                Step(part, api, APPLIED, f"applied {len(ours)} rule(s); read back and in force", explicit)
            )
        elif rules is None:
            steps.append(
                Step(
                    part,
                    api,
                    NOT_IMPLEMENTED,
                    f"{api} was accepted but the result cannot be read back",
                    explicit,
                )
            )
        else:
            steps.append(
                Step(
                    part,
                    api,
                    FAILED,
                    f"{api} was accepted but reading back shows other rules: the server ignored them",
                    explicit,
                )
            )
        return rules, [*steps, read_step]


def init_storage(
    settings: Settings,
    *,
    cors: bool | None = None,
    expire_pending_days: int | None = None,
    abort_multipart_days: int | None = None,
    client: Any = None,
) -> SetupResult:
    """Set up the bucket named by the settings.

    ``cors``: ``None`` applies CORS when ``PACS_MASK_CORS_ORIGINS`` is set (a failure only warns),
    ``True`` requires it (fails without origins or when not implemented), ``False`` skips it.
    Lifecycle rules are applied only when a number of days is given, which makes them explicit.
    ``client`` lets tests pass a boto3 client; by default the S3 backend's own client is used.
    """
    wants_lifecycle = expire_pending_days is not None or abort_multipart_days is not None
    if settings.storage != "s3":
        result = SetupResult(storage=settings.storage, bucket=None, endpoint=None)
        explicit = cors is True or wants_lifecycle
        result.steps.append(
            Step(
                "storage",
                "-",
                FAILED if explicit else SKIPPED,
                "storage is the local disk: there is no bucket, CORS or lifecycle to set up (the local "
                "backend's CORS comes from PACS_MASK_CORS_ORIGINS on the server itself)",
                explicit,
            )
        )
        return result
    storage = None
    if client is None:
        from server.storage.s3 import S3Storage

        storage = S3Storage.from_settings(settings)
        client = storage._client
    try:
        region = settings.s3_region or client.meta.region_name
        endpoint = str(client.meta.endpoint_url)
        result = SetupResult(storage="s3", bucket=settings.s3_bucket, endpoint=endpoint)
        setup = StorageSetup(client, settings.s3_bucket, region=region)
        bucket_step = setup.ensure_bucket()
        result.steps.append(bucket_step)
        if bucket_step.status == FAILED:
            return result
        _cors(setup, settings, cors, result)
        if wants_lifecycle:
            rules = lifecycle_rules(expire_pending_days, abort_multipart_days)
            result.lifecycle_in_force, steps = setup.apply("lifecycle", rules, explicit=True)
            result.steps.extend(steps)
        else:
            result.lifecycle_in_force, step = setup.read("lifecycle")
            result.steps.append(step)
        return result
    finally:
        if storage is not None:
            storage.close()


def _cors(setup: StorageSetup, settings: Settings, cors: bool | None, result: SetupResult) -> None:
    origins = list(settings.cors_origins)
    if cors is False or (cors is None and not origins):
        why = "--no-cors given" if cors is False else "PACS_MASK_CORS_ORIGINS is empty"
        result.steps.append(Step("cors", "PutBucketCors", SKIPPED, f"not applied: {why}"))
        result.cors_in_force, step = setup.read("cors")
        result.steps.append(step)
        return
    if not origins:
        result.steps.append(
            Step("cors", "PutBucketCors", FAILED, "--cors needs origins: set PACS_MASK_CORS_ORIGINS", True)
        )
        return
    result.cors_in_force, steps = setup.apply("cors", [cors_rule(origins)], explicit=cors is True)
    result.steps.extend(steps)
