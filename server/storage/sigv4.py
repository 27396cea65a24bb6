"""AWS Signature Version 4 for presigned S3 URLs (query-string auth), and nothing else.

Why not botocore's ``S3SigV4QueryAuth``: in the S3 upload flow the server signs URLs while the client
is already PUTting to storage, on the same two cores, so signing time is taken from the upload. Measured
on the 2-core development machine (``benchmarks/presign_s3.py``, 1000 PUT URLs with Content-MD5, Type
and Length bound): ``generate_presigned_url`` 160-330 ms, botocore's signer applied directly with the
day's key cached 73-270 ms (URL and header canonicalisation through ``AWSRequest`` dominate), this
module a few milliseconds. In ``benchmarks/upload_1000.py`` the S3 flow's PUT phase shortened by about
a third. Everything around the signature stays botocore's: credentials, the endpoint, the bucket's URL
prefix and the signing region (see ``S3Storage._base``). The tests pin this signer to botocore's output
byte for byte (several days, keys that need quoting, session tokens, GET and PUT), and real S3 servers
in the suite accept and refuse what it signs.

Reference: https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=8)
def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key: four chained HMACs that depend only on secret, day, region and service."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


@functools.lru_cache(maxsize=256)
def _encode(value: str) -> str:
    # Cached: apart from the second of the timestamp, the query values repeat for every URL.
    return quote(value, safe="-_.~")


@functools.lru_cache(maxsize=16)
def _host_and_path(prefix: str) -> tuple[str, str]:
    """The canonical ``host`` header and the path of ``prefix``, as botocore derives the host: lower
    case, IPv6 in brackets, no user info, the port only when it is not the scheme's default."""
    parts = urlsplit(prefix)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host, parts.path


def presign(
    method: str,
    prefix: str,
    key: str,
    headers: Mapping[str, str],
    *,
    access_key: str,
    secret_key: str,
    token: str | None,
    region: str,
    expires: int,
    now: dt.datetime,
    params: Mapping[str, str] | None = None,
) -> str:
    """The presigned URL for ``method`` on ``prefix + quoted key``, binding ``headers`` and ``host``.

    ``prefix`` is the bucket's object URL prefix ending in ``/`` (path- or virtual-host style), ``now``
    a naive or aware UTC time; the URL is valid for ``expires`` seconds from it. ``params`` are the
    operation's own query parameters (``list-type`` …), placed before the signature's as botocore does.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    date = stamp[:8]
    scope = f"{date}/{region}/s3/aws4_request"
    host, path = _host_and_path(prefix)
    quoted_key = quote(key, safe="/~")
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed.setdefault("host", host)
    names = sorted(signed)
    signed_headers = ";".join(names)
    auth = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{scope}"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", signed_headers),
    ]
    if token is not None:
        auth.append(("X-Amz-Security-Token", token))
    operation = [(_encode(name), _encode(value)) for name, value in (params or {}).items()]
    encoded = operation + [(_encode(name), _encode(value)) for name, value in auth]
    query = "&".join(f"{name}={value}" for name, value in encoded)
    canonical_request = "\n".join(
        [
            method.upper(),
            path + quoted_key,
            "&".join(f"{name}={value}" for name, value in sorted(encoded)),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            signed_headers,
            UNSIGNED_PAYLOAD,
        ]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()]
    )
    signature = hmac.new(
        signing_key(secret_key, date, region), string_to_sign.encode("utf-8"), hashlib.sha256
    )
    return f"{prefix}{quoted_key}?{query}&X-Amz-Signature={signature.hexdigest()}"
