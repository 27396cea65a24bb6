"""Server time to sign 1000 upload URLs in one request, on each storage backend.

For each backend (``local``: the embedded default, URLs to the server's own ``/storage`` route; ``s3``:
a real ``rclone serve s3`` this script starts on a free loopback port) it measures, on the same machine
and in the same run:

- **server time**: ``server.services.mask_groups.sign_urls`` called directly with a real ``Call`` on an
  app built by ``create_app`` (validation of every filename/type/MD5, the group lookup, 1000 presigns,
  the audit row and its commit): what one ``POST /api/mask-group/{id}/signed-url`` costs the server;
- **HTTP request**: the same request end to end against ``pacs-mask-server serve`` running as a
  subprocess (JSON in and out, loopback HTTP, uvicorn), timed by the client;
- **peer**: boto3's ``generate_presigned_url("put_object", ...)`` x1000 on one reused client with the
  same Content-MD5/Content-Type/Content-Length, the way most boto3 users presign.

Targets on a 2-core machine: server time <= 20 ms (local) and <= 150 ms (s3). Medians of ``--repeat``
runs after one warm-up.

Usage: ``python benchmarks/sign_urls.py [--count 1000] [--repeat 9] [--backend local|s3|both]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

try:
    import server  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _processes import find_binary, free_port, stop, wait_http

from server.app import create_app
from server.context import Call
from server.contract import messages
from server.db.migrate import upgrade
from server.security import Actor
from server.services import annotations as annotation_service
from server.services import mask_groups
from server.settings import Settings

TARGET_MS = {"local": 20.0, "s3": 150.0}
BUCKET = "pacs-masks"
REGION = "us-east-1"


@contextlib.contextmanager
def rclone_s3(workdir: Path) -> Iterator[dict[str, str]]:
    """A real ``rclone serve s3`` with bucket ``pacs-masks``; yields the AWS_* and PACS_MASK_S3_* values."""
    root = workdir / "rclone"
    (root / BUCKET).mkdir(parents=True)
    port = free_port()
    key, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    proc = subprocess.Popen(
        [find_binary("rclone"), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}",
         "--config", "", "--log-file", str(workdir / "rclone.log")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/", proc, "rclone serve s3")
        yield {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-config"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PACS_MASK_STORAGE": "s3",
            "PACS_MASK_S3_BUCKET": BUCKET,
            "PACS_MASK_S3_ENDPOINT_URL": endpoint,
            "PACS_MASK_S3_ADDRESSING_STYLE": "path",
            "PACS_MASK_S3_REGION": REGION,
        }
    finally:
        stop(proc)


def slices(count: int) -> list[dict[str, object]]:
    """``count`` slice descriptions as a client would send them (distinct names and digests)."""
    out = []
    for i in range(count):
        digest = hashlib.md5(f"slice {i}".encode(), usedforsecurity=False).digest()
        out.append(
            {
                "filename": f"slice_{i:04d}.png",
                "size": 200_000 + i,
                "content_md5": base64.b64encode(digest).decode("ascii"),
                "content_type": "image/png",
            }
        )
    return out


def median_ms(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) milliseconds over ``repeat`` runs after one warm-up run."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def server_time(env: dict[str, str], data_dir: Path, count: int, repeat: int) -> tuple[float, float]:
    """Time ``mask_groups.sign_urls`` directly on an app built from these settings."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        settings = Settings.from_env(data_dir=data_dir)
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        try:
            call = Call(parts=app.state.parts, actor=Actor("benchmark", "admin"), client_address="127.0.0.1")
            annotation = annotation_service.create_annotation(
                call, messages.AnnotationCreate(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4")
            )
            group = mask_groups.create_group(
                call,
                messages.GroupCreate(
                    annotation_id=annotation.id, model_name="bench", version="1", source="ai"
                ),
            )
            request = messages.SignRequest(slices=[messages.SliceToSign(**s) for s in slices(count)])  # type: ignore[arg-type]

            def run() -> None:
                response = mask_groups.sign_urls(call, group.id, request)
                assert len(response.urls) == count

            return median_ms(run, repeat)
        finally:
            app.state.parts.storage.close()
            app.state.parts.db.close()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def http_time(env: dict[str, str], data_dir: Path, count: int, repeat: int) -> tuple[float, float]:
    """Time the same request end to end against ``pacs-mask-server serve`` in a subprocess."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_MASK_")}
    child_env.update(env)
    child_env.update({"PACS_MASK_DATA_DIR": str(data_dir), "PACS_MASK_LOG_LEVEL": "WARNING"})
    log = (data_dir.parent / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", proc, "pacs-mask-server serve")
        token = (data_dir / "admin.token").read_text(encoding="utf-8").strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
            annotation = api.post(
                "/api/annotations", json={"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4"}
            ).json()
            group = api.post(
                "/api/mask-group",
                json={
                    "annotation_id": annotation["id"],
                    "model_name": "bench",
                    "version": "1",
                    "source": "ai",
                },
            ).json()
            body = {"slices": slices(count)}

            def run() -> None:
                response = api.post(f"/api/mask-group/{group['id']}/signed-url", json=body)
                response.raise_for_status()
                assert len(response.json()["urls"]) == count

            return median_ms(run, repeat)
    finally:
        stop(proc)
        log.close()


def boto3_peer(env: dict[str, str], count: int, repeat: int) -> tuple[float, float]:
    """boto3 ``generate_presigned_url`` x ``count`` on one reused client (the usual way to presign)."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=env.get("PACS_MASK_S3_ENDPOINT_URL", "http://127.0.0.1:9000"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region_name=REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
    )
    items = slices(count)

    def run() -> None:
        for item in items:
            client.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": BUCKET,
                    "Key": f"mask/1/00000000-0000-0000-0000-000000000000/{item['filename']}",
                    "ContentMD5": item["content_md5"],
                    "ContentType": item["content_type"],
                    "ContentLength": item["size"],
                },
                ExpiresIn=900,
            )

    try:
        return median_ms(run, repeat)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    args = parser.parse_args(argv)
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]

    print(f"signing {args.count} PUT URLs in one request; median (best) of {args.repeat} runs; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")  # fmt: skip
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="pacs-mask-bench-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            envs: dict[str, dict[str, str]] = {"local": {"PACS_MASK_STORAGE": "local"}}
            if "s3" in backends:
                envs["s3"] = stack.enter_context(rclone_s3(workdir / "s3"))
            peer = boto3_peer(envs.get("s3", {}), args.count, args.repeat)
            print(f"  peer: boto3 generate_presigned_url x{args.count}, reused client: "
                  f"{peer[0]:7.1f} ms ({peer[1]:.1f})")  # fmt: skip
            for backend in backends:
                env = envs[backend]
                direct = server_time(env, workdir / backend / "in-process", args.count, args.repeat)
                http = http_time(env, workdir / backend / "served", args.count, args.repeat)
                target = TARGET_MS[backend]
                met = direct[0] <= target
                verdicts.append(met)
                print(f"  {backend:<5} server time (sign_urls): {direct[0]:7.1f} ms ({direct[1]:.1f})   "
                      f"target <= {target:.0f} ms: {'met' if met else 'NOT met'}")  # fmt: skip
                print(f"  {backend:<5} HTTP request end to end: {http[0]:7.1f} ms ({http[1]:.1f})   "
                      f"server time {peer[0] / direct[0]:.1f}x faster than the peer")  # fmt: skip
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
