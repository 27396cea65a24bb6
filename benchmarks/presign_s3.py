"""Presign N S3 PUT URLs (Content-MD5/Type/Length bound) with S3Storage vs boto3's own presigner.

Presigning is local CPU work (no request is sent), so no server is needed. All contenders run in the
same process on the same inputs; the numbers are only meaningful relative to each other:

- ``S3Storage.presign_put``: the project's SigV4 query signer (``server/storage/sigv4.py``), whose
  output the tests pin byte for byte to botocore's;
- ``S3SigV4QueryAuth``: botocore's signer applied directly to an ``AWSRequest``;
- ``generate_presigned_url`` on one reused client: the peer every boto3 user starts from.

Usage: ``python benchmarks/presign_s3.py [--count 1000] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

try:
    from server.storage.s3 import S3Storage
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from server.storage.s3 import S3Storage

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "pacs-masks"


def _timeit(run: Callable[[], None], repeat: int) -> tuple[float, float]:
    """(best, median) wall time in milliseconds over ``repeat`` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print best/median milliseconds to presign ``--count`` PUT URLs for each contender."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    # Dummy credentials: nothing is sent anywhere.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    storage = S3Storage(BUCKET, endpoint_url=ENDPOINT, addressing_style="path", region="us-east-1")
    client = storage._client  # the same configured client, reused for every URL
    keys = [f"mask/12345/67890/slice_{i:04d}.png" for i in range(args.count)]
    md5 = base64.b64encode(hashlib.md5(b"slice", usedforsecurity=False).digest()).decode("ascii")
    size = 262_144

    def ours() -> None:
        for key in keys:
            storage.presign_put(key, size=size, content_md5=md5, content_type="image/png", ttl_seconds=900)

    def query_auth() -> None:
        credentials = storage._frozen_credentials()
        for key in keys:
            request = AWSRequest(
                method="PUT",
                url=f"{ENDPOINT}/{BUCKET}/{quote(key, safe='/~')}",
                headers={"Content-MD5": md5, "Content-Type": "image/png", "Content-Length": str(size)},
            )
            S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=900).add_auth(request)
            _ = request.url

    def boto3_presign() -> None:
        for key in keys:
            client.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": BUCKET,
                    "Key": key,
                    "ContentMD5": md5,
                    "ContentType": "image/png",
                    "ContentLength": size,
                },
                ExpiresIn=900,
            )

    contenders = [
        ("S3Storage.presign_put (sigv4.py)", ours),
        ("botocore S3SigV4QueryAuth", query_auth),
        ("generate_presigned_url, reused client", boto3_presign),
    ]
    print(f"presigning {args.count} PUT URLs, best/median of {args.repeat} runs")
    results = {}
    for label, run in contenders:
        best, median = _timeit(run, args.repeat)
        results[label] = median
        print(f"  {label:<40} best {best:7.1f} ms   median {median:7.1f} ms")
    peer = results["generate_presigned_url, reused client"]
    print(f"  S3Storage is {peer / results[contenders[0][0]]:.1f}x faster than generate_presigned_url")
    storage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
