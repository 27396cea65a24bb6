"""The upload engine against a real server (subprocess) and real storage, with a fault proxy in between.

Each fault test ends with the same proof: the group is complete, every slice is registered once with
the MD5 of its file, storage holds exactly those objects with those bytes, and (where the proxy can see
it) no slice was written successfully more than once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import urllib3

from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.paths import journal_path
from pacs_mask_desktop.core.plan import prepare
from pacs_mask_desktop.core.storage_answers import is_expired_answer
from pacs_mask_desktop.core.upload import UploadEngine
from server.storage.local import LocalStorage
from server.storage.s3 import S3Storage
from tests.live_server import LiveServer, Volume, assert_group_matches, copy_masks, md5_hex, s3_environ

# --- expired-URL answers of each backend style ----------------------------------------------------------

# Captured from `rclone serve s3` (v1.7x) for a presigned PUT used after its X-Amz-Expires.
RCLONE_EXPIRED = (
    400,
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>The difference between '
    b"the request time and the server&#39;s time exceeds the maximum allowed.</Message></Error>",
)
# AWS S3's answer to a presigned URL used after its expiry (as documented and seen in the wild).
AWS_EXPIRED = (
    403,
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired'
    b"</Message><X-Amz-Expires>900</X-Amz-Expires><Expires>2026-11-27T03:00:00Z</Expires><ServerTime>"
    b"2026-11-27T03:20:00Z</ServerTime><RequestId>9ZB1HQKQ3X4Y7M2V</RequestId><HostId>abc=</HostId></Error>",
)
# Captured from this project's server (local backend, PUT /storage/...).
LOCAL_EXPIRED = (
    403,
    b'{"error":"expired_url","message":"This signed URL has expired; ask the server for a new one.",'
    b'"details":{"expired_at":1795751782}}',
)

# Answers that must NOT be taken for an expired URL (re-signing cannot fix them).
NOT_EXPIRED = {
    "rclone bad signature": (
        403,
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request '
        b"signature we calculated does not match the signature you provided. Check your key and signing method."
        b"</Message></Error>",
    ),
    "rclone bad digest": (
        400,
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>BadDigest</Code>\n  <Message>BadDigest'
        b"</Message>\n</Error>",
    ),
    "local bad signature": (
        403,
        b'{"error":"signature_mismatch","message":"The signature does not match this request: the URL, method, '
        b'key, size, Content-MD5 and Content-Type must be exactly as signed.","details":{}}',
    ),
    "local bad digest": (
        400,
        b'{"error":"bad_digest","message":"The body\'s MD5 does not match Content-MD5: the data was corrupted on '
        b'the way. Nothing was stored.","details":{"expected":"XUFAKrxLKna5cZ2REBfFkg==","received":"EMi="}}',
    ),
    "slow down": (
        503,
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    ),
    "aws expired token": (
        400,
        b"<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>",
    ),
    "ok": (200, b""),
}


@pytest.mark.parametrize(
    ("status", "body"), [RCLONE_EXPIRED, AWS_EXPIRED, LOCAL_EXPIRED], ids=["rclone", "aws", "local"]
)
def test_expired_answers_of_every_backend_are_recognised(status: int, body: bytes) -> None:
    assert is_expired_answer(status, body)


@pytest.mark.parametrize(("status", "body"), list(NOT_EXPIRED.values()), ids=list(NOT_EXPIRED))
def test_other_refusals_are_not_taken_for_expiry(status: int, body: bytes) -> None:
    assert not is_expired_answer(status, body)


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


@pytest.mark.s3
def test_live_expired_answers_match_the_captured_ones(
    live_server: LiveServer, rclone_s3: Any, rclone_s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ask the real rclone and the real server with expired URLs: the engine recognises both answers."""
    body = b"\x89PNG\r\n\x1a\nexpired"
    md5 = _b64md5(body)
    headers = {"Content-MD5": md5, "Content-Type": "image/png"}
    # rclone: a URL presigned for 1 s, used after it ran out.
    for name, value in s3_environ(rclone_s3).items():
        monkeypatch.setenv(name, value)
    bucket = f"exp-{uuid.uuid4().hex[:16]}"
    rclone_s3_client.create_bucket(Bucket=bucket)
    s3 = S3Storage(
        bucket, endpoint_url=rclone_s3.endpoint_url, addressing_style="path", region=rclone_s3.region
    )
    try:
        signed = s3.presign_put(
            "mask/1/x/a.png", size=len(body), content_md5=md5, content_type="image/png", ttl_seconds=1
        )
    finally:
        s3.close()
    # The local server: a URL signed with its own key that expired ten seconds ago (no waiting needed).
    key = (live_server.data_dir / "signing.key").read_text(encoding="ascii").strip().encode("ascii")
    local = LocalStorage(live_server.data_dir / "unused-root", public_url=live_server.url, signing_key=key)
    object_key = f"mask/1/{uuid.uuid4()}/a.png"
    expires = int(time.time()) - 10
    sig = local.signature(
        "PUT", object_key, expires=expires, size=len(body), content_md5=md5, content_type="image/png"
    )
    local_url = f"{live_server.url}/storage/{object_key}?expires={expires}&size={len(body)}&signature={sig}"

    answer = urllib3.request("PUT", local_url, body=body, headers=headers)
    assert (answer.status, answer.json()["error"]) == (LOCAL_EXPIRED[0], "expired_url")
    assert is_expired_answer(answer.status, answer.data)

    time.sleep(max(0.0, signed.expires_at.timestamp() - time.time()) + 1.2)
    answer = urllib3.request("PUT", signed.url, body=body, headers=signed.headers)
    assert answer.status == RCLONE_EXPIRED[0]
    assert b"<Code>AccessDenied</Code>" in answer.data
    assert is_expired_answer(answer.status, answer.data)


# --- helpers --------------------------------------------------------------------------------------------


def run_engine(
    server: LiveServer,
    folder: Path,
    annotation_id: int,
    *,
    version: str = "1",
    workers: int = 8,
    sign_batch: int = 500,
    max_attempts: int = 6,
) -> tuple[UploadResult, list[SliceEvent | GroupEvent]]:
    """Prepare ``folder`` and upload it with the engine and the test's own journal; returns events too."""
    prepared = prepare(
        folder, annotation_id=annotation_id, model_name="fault-test", version=version, source="ai"
    )
    assert prepared.ok, prepared.problems
    assert prepared.plan is not None
    events: list[SliceEvent | GroupEvent] = []
    journal = Journal(journal_path())
    with server.api() as api:
        engine = UploadEngine(
            api,
            journal,
            workers=workers,
            sign_batch=sign_batch,
            max_attempts=max_attempts,
            on_event=events.append,
        )
        try:
            result = engine.run(prepared.plan, source_path=str(folder))
        finally:
            engine.close()
            journal.close()
    return result, events


def states(events: list[SliceEvent | GroupEvent]) -> Counter[SliceState]:
    return Counter(e.state for e in events if isinstance(e, SliceEvent))


def assert_each_put_once(server: LiveServer, files: list[Path]) -> None:
    """The proxy saw exactly one successful PUT per slice, and none for anything else."""
    assert server.proxy is not None
    ok = server.proxy.stats.ok_puts
    assert len(ok) == len(files)
    assert set(ok.values()) == {1}, {p: n for p, n in ok.items() if n != 1}
    assert sorted(p.rsplit("/", 1)[-1] for p in ok) == sorted(f.name for f in files)


BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]


# --- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", BACKENDS)
def test_dropped_and_refused_puts_are_retried_until_everything_lands(
    storage: str, live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """10 % of PUTs die without an answer and 10 % are answered 503: all land, each exactly once."""
    server = live_server_factory(storage, proxy=True)
    client_env(server)
    files = copy_masks(ct_1000, tmp_path / "masks", 300, 200)
    server.proxy.configure(drop=0.10, fail=0.10, seed=1)
    result, events = run_engine(server, tmp_path / "masks", server.new_annotation())
    assert result.ok, (result.message, result.failed)
    stats = server.proxy.stats
    assert stats.dropped >= 5
    assert stats.failed >= 5
    # Every 503 is an engine retry. A drop may be re-sent by libcurl itself, once, without the engine
    # seeing it: it cannot tell a request dropped on a reused connection from a keep-alive connection
    # the server had closed. Either way each lost PUT is sent again exactly once.
    assert stats.failed <= states(events)[SliceState.RETRYING] <= stats.dropped + stats.failed
    assert stats.puts_total == len(files) + stats.dropped + stats.failed
    assert_each_put_once(server, files)
    assert_group_matches(server, result.group_id, files)  # type: ignore[arg-type]


@pytest.mark.s3
def test_lost_answers_after_the_object_landed_are_resent_without_duplicates(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """The PUT reached storage but its answer was lost: the engine sends it again; one row, one object."""
    server = live_server_factory("s3", proxy=True)
    client_env(server)
    files = copy_masks(ct_1000, tmp_path / "masks", 350, 120)
    server.proxy.configure(drop_after=0.15, seed=2)
    result, events = run_engine(server, tmp_path / "masks", server.new_annotation())
    assert result.ok, (result.message, result.failed)
    stats = server.proxy.stats
    assert stats.dropped_after >= 5
    # The engine retries what libcurl did not already re-send itself (see the test above).
    assert states(events)[SliceState.RETRYING] <= stats.dropped_after
    # Storage accepted those slices twice (same key, same bytes): still one object and one row each.
    assert stats.ok_put_total == len(files) + stats.dropped_after
    assert_group_matches(server, result.group_id, files)  # type: ignore[arg-type]


@pytest.mark.parametrize("storage", BACKENDS)
def test_short_url_ttl_with_a_slow_link_reissues_urls(
    storage: str, live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """URLs live 2 s and the upload takes far longer: expired URLs are re-signed, never retried blindly.

    Every PUT is slowed, and the first attempt of one slice in ten is held 2.5 s before it reaches
    storage, so storage itself answers "expired" (403 ``expired_url`` locally, rclone's 400
    AccessDenied time-skew answer on S3) and the engine must recognise that answer and re-sign.
    """
    server = live_server_factory(storage, proxy=True, ttl=2)
    client_env(server)
    files = copy_masks(ct_1000, tmp_path / "masks", 400, 160)
    server.proxy.configure(delay=0.08, hold_first=2.5, hold_fraction=0.1, seed=3)
    started = time.monotonic()
    result, events = run_engine(server, tmp_path / "masks", server.new_annotation(), workers=8)
    elapsed = time.monotonic() - started
    assert result.ok, (result.message, result.failed)
    assert elapsed > 4.0  # well over the 2 s TTL
    stats = server.proxy.stats
    expired = [a for a in stats.answers if is_expired_answer(a[2], a[3])]
    assert len(expired) >= 0.1 * len(files) - 4, stats.answers[:3]  # at least the held ones (~10 %)
    assert {a[2] for a in expired} == ({403} if storage == "local" else {400})
    assert len(stats.answers) == len(expired), [a[:3] for a in stats.answers if a not in expired]
    # Every expired answer cost exactly one more attempt at that slice, and nothing else did. (Besides
    # the held ones, a URL sent just before its deadline can expire on the slow link: same handling.)
    expired_per_path = Counter(a[1] for a in expired)
    extra = {p: n for p, n in stats.attempts.items() if n != 1 + expired_per_path[p]}
    assert not extra, (
        extra,
        [e for e in events if isinstance(e, SliceEvent) and e.state is SliceState.RETRYING][:5],
    )
    # URLs were issued again: more sign calls than the one batch that would cover 160 slices.
    assert server.sign_calls(result.group_id) >= 3  # type: ignore[arg-type]
    assert states(events)[SliceState.RETRYING] == len(expired)
    assert_each_put_once(server, files)
    assert_group_matches(server, result.group_id, files)  # type: ignore[arg-type]


def test_a_failed_slice_leaves_the_group_pending_and_a_rerun_sends_only_it(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """Retries are bounded: a slice storage keeps refusing fails with the reason; the next run resumes."""
    server = live_server_factory("local", proxy=True)
    client_env(server)
    files = copy_masks(ct_1000, tmp_path / "masks", 500, 40)
    annotation = server.new_annotation()
    server.proxy.configure(fail=1.0, max_faults_per_path=3, seed=4)
    # 3 attempts, all refused (the proxy faults at most 3 attempts per path, then lets them through).
    result, events = run_engine(server, tmp_path / "masks", annotation, max_attempts=3)
    assert result.status == "incomplete"
    assert result.group_id is not None
    assert sorted(result.failed) == sorted(f.name for f in files)
    assert all("503" in reason and "SlowDown" in reason for reason in result.failed.values())
    assert states(events)[SliceState.FAILED] == len(files)
    with server.api() as api:
        assert api.group_with_slices(result.group_id).group.status == "pending"
    server.proxy.configure()  # the link is healthy again
    again, _ = run_engine(server, tmp_path / "masks", annotation)
    assert again.ok
    assert again.group_id == result.group_id
    assert again.uploaded == len(files)
    assert_each_put_once(server, files)
    assert_group_matches(server, again.group_id, files)  # type: ignore[arg-type]


def test_upload_resumes_after_an_objects_missing_answer(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """The journal says a slice landed but storage lost it: complete names it, the engine re-sends it."""
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 600, 30)
    annotation = live_server.new_annotation()
    prepared = prepare(tmp_path / "masks", annotation_id=annotation, model_name="fault-test", version="1")
    assert prepared.plan is not None
    journal = Journal(journal_path())
    with live_server.api() as api:
        group = api.create_group(
            {"annotation_id": annotation, "model_name": "fault-test", "version": "1", "source": "manual"}
        )
        journal.start(
            group.id,
            server=api.base_url,
            annotation_id=annotation,
            model_name="fault-test",
            version="1",
            source_path=None,
            total=len(files),
        )
        # A previous run "landed" the first five... but storage never got them.
        for s in prepared.plan.slices[:5]:
            journal.mark_landed(group.id, s.filename, s.md5_hex)
        engine = UploadEngine(api, journal)
        try:
            result = engine.run(prepared.plan)
        finally:
            engine.close()
    try:
        assert result.ok, result.message
        assert result.group_id == group.id
        assert result.uploaded == len(files)  # 25 at first, then the 5 storage did not have
        assert journal.find(api.base_url, annotation, "fault-test", "1").status == "complete"  # type: ignore[union-attr]
    finally:
        journal.close()
    assert_group_matches(live_server, group.id, files)


def test_a_slice_damaged_in_storage_before_complete_is_sent_again(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """Local storage makes uploads durable at complete; a server that lost power before that can hold
    an empty file. Complete names it (checksum_mismatch) and the engine sends that slice again, once."""
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 600, 12)
    annotation = live_server.new_annotation()
    prepared = prepare(tmp_path / "masks", annotation_id=annotation, model_name="power-cut", version="1")
    assert prepared.plan is not None
    damaged = prepared.plan.slices[3].filename
    truncated: list[str] = []

    def on_event(event: SliceEvent | GroupEvent) -> None:
        if isinstance(event, GroupEvent) and event.kind == "completing" and not truncated:
            (key,) = [k for k in live_server.stored_keys(f"mask/{annotation}/") if k.endswith("/" + damaged)]
            (live_server.data_dir / "objects" / key).write_bytes(b"")  # what ext4 can leave after a power cut
            truncated.append(key)

    with live_server.api() as api:
        engine = UploadEngine(api, on_event=on_event)
        try:
            result = engine.run(prepared.plan)
        finally:
            engine.close()

    assert truncated
    assert result.ok, result.message
    assert result.uploaded == len(files) + 1  # every slice once, the damaged one twice
    assert live_server.object_bytes(truncated[0]) == (tmp_path / "masks" / damaged).read_bytes()
    assert_group_matches(live_server, result.group_id, files)  # type: ignore[arg-type]


def test_same_identity_with_different_slices_is_refused_not_reported_done(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """A completed group is never changed and never silently claimed for other masks (journal or not)."""
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 300, 12)
    annotation = live_server.new_annotation()
    first, _ = run_engine(live_server, tmp_path / "masks", annotation)
    assert first.ok
    repeat, _ = run_engine(live_server, tmp_path / "masks", annotation)
    assert (repeat.status, repeat.group_id, repeat.uploaded, repeat.skipped) == (
        "complete",
        first.group_id,
        0,
        12,
    )
    # Replace one mask with another slice's: same names, other bytes.
    files[3].write_bytes(ct_1000.mask_paths()[450].read_bytes())
    changed, _ = run_engine(live_server, tmp_path / "masks", annotation)
    assert (changed.status, changed.error_code) == ("incomplete", "duplicate_group")
    assert "differ" in changed.message
    journal_path().unlink()  # the same without the journal (another machine)
    for suffix in ("-wal", "-shm"):
        journal_path().with_name(journal_path().name + suffix).unlink(missing_ok=True)
    changed, _ = run_engine(live_server, tmp_path / "masks", annotation)
    assert (changed.status, changed.error_code) == ("incomplete", "duplicate_group")
    assert "differ" in changed.message
    with live_server.api() as api:
        items = api.group_with_slices(first.group_id).items  # type: ignore[arg-type]
        assert len(api.list_groups(annotation)) == 1
    assert {m.checksum for m in items} != {md5_hex(f.read_bytes()) for f in files}


# --- the PUT transport ----------------------------------------------------------------------------------


def test_connections_are_reused_and_a_connection_closed_while_idle_is_replaced() -> None:
    """Keep-alive per worker thread; a server that hung up between PUTs costs a reconnect, not a retry."""
    import socket
    import threading

    from pacs_mask_desktop.core.transport import PutTransport

    accepted: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            accepted.append(n)
            with conn, conn.makefile("rb") as reader:  # both closed: the client sees EOF
                for _request in range(2 if n == 0 else 1):  # the first connection serves two, then hangs up
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    reader.read(length)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = PutTransport(timeout=5)
    url = f"http://127.0.0.1:{port}/bucket/key?X-Amz-Signature=abc"
    try:
        assert pool.put(url, b"one", {"Content-MD5": "x"}) == (200, b"ok")
        assert pool.put(url, b"two", {"Content-MD5": "x"}) == (200, b"ok")
        assert accepted == [0]  # the same connection served both
        time.sleep(0.2)  # the server has hung up by now
        assert pool.put(url, b"three", {"Content-MD5": "x"}) == (200, b"ok")
        assert accepted == [0, 1]
    finally:
        pool.close()
        listener.close()
        thread.join(timeout=5)


@pytest.mark.skipif(
    not hasattr(os, "symlink") or os.name == "nt", reason="symlinks need privileges on Windows"
)
def test_local_storage_routes_refuse_keys_that_escape_the_root_through_a_symlink(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The cheap lexical key check on the event loop is backed by the resolved-path check where files are
    touched: a validly signed URL through a symlink out of the storage root reads and writes nothing."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    group = live_server.data_dir / "objects" / "mask" / "999999"
    group.mkdir(parents=True)
    (group / "evil").symlink_to(outside, target_is_directory=True)
    key = (live_server.data_dir / "signing.key").read_text(encoding="ascii").strip().encode("ascii")
    signer = LocalStorage(tmp_path / "unused-root", public_url=live_server.url, signing_key=key)
    body = b"\x89PNG\r\n\x1a\nescape"
    md5 = _b64md5(body)
    expires = int(time.time()) + 60
    put_key = "mask/999999/evil/written.png"
    sig = signer.signature(
        "PUT", put_key, expires=expires, size=len(body), content_md5=md5, content_type="image/png"
    )
    answer = urllib3.request(
        "PUT",
        f"{live_server.url}/storage/{put_key}?expires={expires}&size={len(body)}&signature={sig}",
        body=body,
        headers={"Content-MD5": md5, "Content-Type": "image/png"},
    )
    assert (answer.status, answer.json()["error"]) == (403, "signature_mismatch")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]
    get_key = "mask/999999/evil/secret.png"
    sig = signer.signature("GET", get_key, expires=expires, size=None, content_md5="", content_type="")
    answer = urllib3.request("GET", f"{live_server.url}/storage/{get_key}?expires={expires}&signature={sig}")
    assert (answer.status, answer.json()["error"]) == (403, "signature_mismatch")


def test_transport_refuses_urls_that_are_not_http(tmp_path: Path) -> None:
    """A signed URL is only ever http(s): libcurl is not allowed to read local files or speak other protocols."""
    from pacs_mask_desktop.core.transport import PermanentTransportError, PutTransport

    secret = tmp_path / "secret.txt"
    secret.write_text("do not send")
    transport = PutTransport(timeout=5)
    try:
        for url in (secret.as_uri(), "ftp://127.0.0.1:9/x", "http://j\u00f6rg.example/x"):
            with pytest.raises(PermanentTransportError) as caught:
                transport.put(url, b"x", {"Content-Type": "image/png"})
            assert "do not send" not in str(caught.value)
    finally:
        transport.close()


def test_transport_trusts_ssl_cert_file_as_well_as_certifi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clinic's private CA named by SSL_CERT_FILE (as Python's ssl honours it) is trusted for PUTs."""
    import certifi

    from pacs_mask_desktop.core import transport

    private = tmp_path / "clinic-ca.pem"
    private.write_bytes(b"-----BEGIN CERTIFICATE-----\nclinic\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(private))
    transport.trusted_certificates.cache_clear()
    try:
        bundle = transport.trusted_certificates()
    finally:
        transport.trusted_certificates.cache_clear()
    assert private.read_bytes() in bundle
    assert Path(certifi.where()).read_bytes() in bundle


def test_storage_that_answers_nothing_for_a_while_is_waited_out_within_the_retry_budget(
    live_server_factory: Any, ct_1000: Volume, tmp_path: Path, client_env: Any
) -> None:
    """A storage restart shorter than the budget (issue 11, defect 5): slices that get no answer at all
    keep trying past their attempt limit instead of failing, and everything lands once storage is back."""
    server = live_server_factory("local", proxy=True)
    assert server.proxy is not None
    client_env(server)
    files = copy_masks(ct_1000, tmp_path / "masks", 700, 12)
    annotation = server.new_annotation()
    server.proxy.configure(drop=1.0, max_faults_per_path=10_000)  # every PUT dies without an answer
    outcome: dict[str, Any] = {}

    def upload() -> None:
        outcome["run"] = run_engine(server, tmp_path / "masks", annotation, workers=4, max_attempts=2)

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a guard, not a measurement
        while server.proxy.stats.dropped < 16 and time.monotonic() < deadline:  # 4 tries for each of 4 slices
            time.sleep(0.05)
        assert server.proxy.stats.dropped >= 16
    finally:
        server.proxy.configure()  # storage is back
        thread.join(timeout=150)
    result, events = outcome["run"]
    assert result.ok, (result.message, result.failed)
    assert (result.uploaded, result.failed) == (len(files), {})
    assert states(events)[SliceState.FAILED] == 0
    assert max(e.attempt for e in events if isinstance(e, SliceEvent)) > 2  # past the attempt limit
    assert result.group_id is not None
    assert_group_matches(server, result.group_id, files)
