"""The upload engine: create (or continue) a group, sign, PUT in parallel, complete.

Both the desktop app and the headless CLI/worker run uploads through :class:`UploadEngine`.

- Slices go straight to storage with the signed URL and exactly the signed headers; storage refuses
  corrupted bodies because the URL binds Content-MD5.
- URLs are signed lazily, in batches, as workers reach them; a URL that expired (S3's 403 "Request has
  expired", the 400 AccessDenied time-skew answer of rclone and some S3 servers, the local backend's
  ``expired_url``) is re-issued, not retried blindly.
- Connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full jitter
  (tenacity), a bounded number of times. Anything else fails that slice with the storage's reason,
  except 412 (the create-only PUT found the object already stored, e.g. our own re-send whose first
  answer was lost): that counts as sent, and ``complete`` verifies the stored bytes.
- While the server or storage answers nothing at all (refused, reset, timed out), requests keep trying
  past their attempt limit, so a restart is waited out. When nothing has got through for the policy's
  ``give_up_after`` seconds (:class:`~pacs_mask_desktop.core.retry.Outage` clocks: the API client's and
  one for storage), the run gives up as a whole: retries stop, no new slice is started, and the result
  (``error_code`` ``unreachable``) says how to resume.
- The journal records the group and every slice that landed, so a second run after a crash, kill or
  power loss continues the pending group and sends only what is missing. ``complete`` is idempotent
  on the server, so a completed group is never created twice.
- A plan whose pixels are still to be decoded (``prepare(defer_decode=True)``, the CLI) carries a
  :class:`~pacs_mask_desktop.core.plan.PixelCheck`: it decodes ahead of the PUTs, in its own threads;
  a slice is signed and sent only once it has passed, and ``complete`` waits for all of it. A file
  that fails is never signed or sent; the run ends ``incomplete`` with ``error_code`` ``invalid_masks``
  and every such problem in ``problems``; nothing is completed and the group stays pending, so the
  same command, once the files are fixed, resumes it and sends only what is missing.

PUTs go through :class:`~pacs_mask_desktop.core.transport.PutTransport` (libcurl, one kept-alive handle
per worker thread); why not httpx is measured there. httpx stays the API client (a few calls per upload).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState, UploadResult
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.plan import PixelCheck, PlannedSlice, UploadPlan
from pacs_mask_desktop.core.retry import Outage
from pacs_mask_desktop.core.transport import PermanentTransportError, PutTransport, TransportError

log = logging.getLogger(__name__)

EventSink = Callable[[SliceEvent | GroupEvent], None]


class UploadCancelled(Exception):
    """The user (or the caller) cancelled the upload."""


class _Transient(Exception):
    """A failure worth retrying after a pause."""


class _Unreachable(_Transient):
    """No answer at all (refused, reset, timed out). While storage answers nothing, it uses up no attempts:
    the slice waits out the outage (a storage or server restart) until the retry budget is spent."""


class _Expired(Exception):
    """The URL expired: re-sign and try again at once."""


class _Permanent(Exception):
    """Storage refused this slice for a reason retrying cannot fix."""


@dataclass(slots=True)
class _Signed:
    url: str
    headers: dict[str, str]
    local_deadline: float


def is_expired_answer(status: int, body: bytes) -> bool:
    """True when a storage answer means "this signed URL is too old"."""
    text = body[:2048].decode("utf-8", "replace").lower()
    if status == 403 and ("request has expired" in text or "expired_url" in text or "expired" in text):
        return True
    # rclone serve s3 (and some S3 servers) answer 400 AccessDenied for a request outside the time window.
    return status == 400 and "accessdenied" in text and "time" in text


def is_already_stored_answer(status: int) -> bool:
    """True when storage refused a create-only PUT because an object already exists under the key.

    Signed PUTs are create-only (``If-None-Match: *``; the local backend always): S3, MinIO and the
    local backend answer 412 when the key holds an object. That is our own earlier PUT whose answer was
    lost (a timeout, a dropped connection, a crash before the journal recorded it), or other bytes
    stored before. Either way ``complete`` checks size and MD5 of what is stored and names any slice
    that differs, so the slice counts as sent here.
    """
    return status == 412


def _storage_reason(status: int, body: bytes) -> str:
    text = body[:2048].decode("utf-8", "replace")
    for tag in ("<Message>", '"message":"', '"message": "'):
        start = text.find(tag)
        if start != -1:
            start += len(tag)
            end = text.find("<" if tag.startswith("<") else '"', start)
            code_start = text.find("<Code>")
            code = text[code_start + 6 : text.find("</Code>")] + ": " if code_start != -1 else ""
            return f"storage answered {status}: {code}{text[start:end]}"
    return f"storage answered {status}: {text[:200].strip() or 'no details'}"


class _UrlBook:
    """Signed URLs for one group: signed in batches ahead of the workers, re-signed when they expire.

    The first batch is small so PUTs start at once; while workers use a batch, the next one is signed
    in the background (the signing answer of S3 storage took ~0.27 s per 1000 URLs here, time the
    workers would otherwise wait). One signing call runs at a time; a worker whose URL is missing
    waits for it or signs itself, and its error is the one reported.
    """

    FIRST_BATCH = 64
    MIN_CHECKED = 32
    """With a pixel check, how many slices ahead signing waits (at most 50 ms) to see decoded. Measured
    on 1000 slices under heavy load: signing only what had passed made 26 sign calls (3 without the
    check); with this wait 10 to 22."""

    def __init__(
        self,
        api: ApiClient,
        group_id: str,
        order: list[PlannedSlice],
        batch: int,
        check: PixelCheck | None = None,
    ) -> None:
        self._api = api
        self._check = check  # sign only slices whose pixels passed (None: every slice may be signed)
        self._group_id = group_id
        self._order = order
        self._position = {s.filename: i for i, s in enumerate(order)}
        self._batch = batch
        self._urls: dict[str, _Signed] = {}
        self._done: set[str] = set()
        self._frontier = 0  # everything before this position has been signed once
        self._signing = False
        self._prefetcher: threading.Thread | None = None
        self._cond = threading.Condition()
        self._refused: ApiError | None = None  # the server will not sign for this group at all

    def mark_done(self, filename: str) -> None:
        with self._cond:
            self._done.add(filename)
            self._urls.pop(filename, None)

    def get(self, filename: str, *, expired: _Signed | None = None) -> _Signed:
        """A URL for ``filename`` that is not known to be expired."""
        position = self._position[filename]
        if self._refused is not None:
            raise self._refused
        with self._cond:
            while True:
                current = self._urls.get(filename)
                if (
                    current is not None
                    and current is not expired
                    and current.local_deadline > time.monotonic()
                ):
                    self._prefetch_after(position)
                    return current
                if not self._signing:
                    break
                self._cond.wait()
            self._signing = True
        try:
            self._sign_from(position, refresh=current is not None)
        except ApiError as exc:
            # Not this group's creator, the group is no longer pending: asking again for each remaining
            # slice would get the same answer; each fails with this one instead.
            if exc.status in (401, 403) or exc.code == "group_not_pending":
                self._refused = exc
            raise
        finally:
            with self._cond:
                self._signing = False
                self._cond.notify_all()
        with self._cond:
            return self._urls[filename]  # fresh from the server, even if its TTL is shorter than our margin

    def _prefetch_after(self, position: int) -> None:
        """Start signing the next batch in the background when the workers come near the frontier."""
        if (
            self._signing
            or self._frontier >= len(self._order)
            or self._frontier - position > self._batch // 2
        ):
            return
        thread = threading.Thread(
            target=self._prefetch, args=(self._frontier,), name="pacs-sign", daemon=True
        )
        self._signing = True
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: workers sign for themselves
            self._signing = False
            return
        self._prefetcher = thread

    def _prefetch(self, position: int) -> None:
        try:
            self._sign_from(position, refresh=False)
        except Exception:  # a worker reaching these slices signs them itself and reports what goes wrong
            log.debug("signing ahead failed; workers will sign for themselves", exc_info=True)
        finally:
            with self._cond:
                self._signing = False
                self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Wait (a while) for a batch still being signed ahead; one that outlives this fails quietly."""
        thread = self._prefetcher
        if thread is not None:
            thread.join(timeout)

    def _sign_from(self, position: int, *, refresh: bool) -> None:
        """Sign the slice at ``position`` and the next ones that need a URL (called by one thread at a time)."""
        # A refresh signs fewer slices ahead: they would expire again before use with a short TTL.
        if refresh:
            size = max(8, self._batch // 8)
        else:
            size = self._batch if self._frontier else min(self._batch, self.FIRST_BATCH)
        check = self._check
        ready = None if check is None else check.ready
        if check is not None:  # let decoding get a little ahead, so URLs are signed in batches
            ahead = self._order[min(position + self.MIN_CHECKED, len(self._order)) - 1]
            check.wait_for(ahead.filename, timeout=0.05)
        now = time.monotonic()
        with self._cond:
            batch: list[PlannedSlice] = []
            for n in range(position, len(self._order)):
                s = self._order[n]
                if len(batch) >= size:
                    break
                state = True if ready is None else ready(s.filename)
                if state is None:
                    break  # not decoded yet: never sign bytes that may turn out bad
                known = self._urls.get(s.filename)
                if state and (
                    n == position
                    or (s.filename not in self._done and (known is None or known.local_deadline <= now))
                ):
                    batch.append(s)
        if not batch:
            return
        payload = [
            {
                "filename": s.filename,
                "size": s.size,
                "content_md5": s.content_md5_b64,
                "content_type": s.content_type,
            }
            for s in batch
        ]
        sent = time.monotonic()
        urls, server_date = self._api.sign_with_date(self._group_id, payload)
        server_now = _server_time(server_date)
        with self._cond:
            for item in urls:
                self._urls[item["filename"]] = _Signed(
                    url=item["url"],
                    headers=item["headers"],
                    local_deadline=_local_deadline(item, server_now, sent),
                )
            self._frontier = max(self._frontier, self._position[batch[-1].filename] + 1)


def _server_time(server_date: str | None) -> datetime | None:
    """The server's clock from its ``Date`` header, or ``None`` when it sent none we can read."""
    try:
        return parsedate_to_datetime(server_date) if server_date else None
    except (TypeError, ValueError):
        return None


def _local_deadline(item: dict[str, Any], server_now: datetime | None, sent: float) -> float:
    """When the URL expires on our monotonic clock, corrected for skew with the server's clock.

    A one-second safety margin (the Date header has one-second resolution) keeps us from sending a URL
    that dies on the way.
    """
    expires_at = datetime.fromisoformat(item["expires_at"].replace("Z", "+00:00"))
    if server_now is None:
        lifetime = (expires_at - datetime.now(expires_at.tzinfo)).total_seconds()
    else:
        lifetime = (expires_at - server_now).total_seconds()
    return sent + max(0.0, lifetime - 1.0)


class UploadEngine:
    """Runs one plan to a complete group. ``on_event`` is called from worker threads."""

    def __init__(
        self,
        api: ApiClient,
        journal: Journal | None = None,
        *,
        workers: int = 8,
        max_attempts: int = 6,
        sign_batch: int = 500,
        put_timeout: float = 120.0,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.api = api
        self.journal = journal
        self.workers = max(1, workers)
        self.max_attempts = max(1, max_attempts)
        self.sign_batch = max(1, min(sign_batch, 5000))
        self.cancel = cancel or threading.Event()
        self.put_timeout = put_timeout
        self._emit = on_event or (lambda _event: None)
        self._http = PutTransport(timeout=put_timeout)
        # Two clocks with one budget (core/retry.py): the API client's for its calls, this one for storage,
        # so a server that signs while storage is down still ends the run in time.
        self._outage = Outage(api.outage.policy)
        self._gave_up = False

    def close(self) -> None:
        """Close pooled storage connections."""
        self._http.close()

    # --- the whole upload ----------------------------------------------------------------------------

    def run(self, plan: UploadPlan, *, source_path: str | None = None) -> UploadResult:
        """Upload ``plan``; never raises for upload failures, returns how it ended."""
        started = time.monotonic()
        self._gave_up = False
        self._outage.reset()
        self.api.outage.reset()
        if plan.pixel_check is not None:
            plan.pixel_check.start()  # in slice order, as the PUTs go; it needs nothing from the server
        try:
            result = self._run(plan, source_path)
        except UploadCancelled:
            result = UploadResult("cancelled", None, "The upload was cancelled; run it again to resume.")
        except ApiError as exc:
            result = UploadResult("incomplete", None, f"{exc.message}", error_code=exc.code)
        finally:
            if plan.pixel_check is not None:
                plan.pixel_check.cancel()  # a run that ended early does not need the rest decoded
        result.seconds = time.monotonic() - started
        self._emit(
            GroupEvent(
                result.status if result.status != "incomplete" else "failed", result.group_id, result.message
            )
        )
        return result

    def _run(self, plan: UploadPlan, source_path: str | None) -> UploadResult:
        slices = sorted(plan.slices, key=lambda s: s.slice_index)
        group_id, status, known = self._open_group(plan)
        if status == "complete":
            for s in slices:
                self._emit(SliceEvent(s.filename, s.slice_index, SliceState.SKIPPED, s.size))
            return UploadResult(
                "complete",
                group_id,
                "This group was already complete on the server; nothing was sent.",
                skipped=len(slices),
                group=known,
            )
        if self.journal is not None:
            self.journal.start(
                group_id,
                server=self.api.base_url,
                annotation_id=plan.annotation_id,
                model_name=plan.model_name,
                version=plan.version,
                source_path=source_path,
                total=len(slices),
            )
        landed = self.journal.landed(group_id) if self.journal is not None else {}
        todo = [s for s in slices if landed.get(s.filename) != s.md5_hex]
        skipped = len(slices) - len(todo)
        todo_names = {s.filename for s in todo}  # a set: `s in todo` is quadratic over 1000s of slices
        check = plan.pixel_check
        for s in slices:
            state = SliceState.QUEUED if s.filename in todo_names else SliceState.SKIPPED
            self._emit(SliceEvent(s.filename, s.slice_index, state, s.size))

        failed, uploaded, sent_bytes = self._put_all(group_id, todo, check)
        if self.cancel.is_set():
            raise UploadCancelled
        if self._gave_up:
            return self._gave_up_result(
                group_id, len(slices), uploaded=uploaded, skipped=skipped, failed=failed, sent=sent_bytes
            )
        if check is not None:
            problems = check.wait(self.cancel)
            if problems is None:
                raise UploadCancelled
            if problems:
                return UploadResult(
                    "incomplete",
                    group_id,
                    f"{len(problems)} mask(s) failed the pixel check while uploading; nothing was completed "
                    f"and group {group_id} stays pending. Fix the files and run the upload again: it sends "
                    "only what is missing or changed.",
                    uploaded=uploaded,
                    skipped=skipped,
                    failed=failed,
                    bytes_sent=sent_bytes,
                    error_code="invalid_masks",
                    problems=[
                        {"filename": p.filename, "code": p.code, "message": p.message} for p in problems
                    ],
                )
            slices = check.apply(slices)
        if failed:
            return UploadResult(
                "incomplete",
                group_id,
                f"{len(failed)} of {len(slices)} slice(s) failed; the group stays pending. Run the upload again "
                "to send only what is missing.",
                uploaded=uploaded,
                skipped=skipped,
                failed=failed,
                bytes_sent=sent_bytes,
            )
        self._emit(GroupEvent("completing", group_id, f"Registering {len(slices)} slices"))
        try:
            group = self._complete(group_id, slices)
        except ApiError as exc:
            # The slices landed (and are journaled) even though the group could not be registered: say so.
            landed = uploaded + skipped
            return UploadResult(
                "incomplete",
                group_id,
                f"{exc.message} {landed} of {len(slices)} slice(s) have landed and are kept; group "
                f"{group_id} stays pending. Run the upload again to register it without sending them again.",
                uploaded=uploaded,
                skipped=skipped,
                bytes_sent=sent_bytes,
                error_code=exc.code,
            )
        if isinstance(group, UploadResult):
            group.uploaded += uploaded
            group.skipped = skipped
            group.bytes_sent += sent_bytes
            return group
        if self.journal is not None:
            self.journal.mark_complete(group_id)
        return UploadResult(
            "complete",
            group_id,
            f"{len(slices)} slices registered in group {group_id}.",
            uploaded=uploaded,
            skipped=skipped,
            bytes_sent=sent_bytes,
            group=group,
        )

    def _gave_up_result(
        self, group_id: str, total: int, *, uploaded: int, skipped: int, failed: dict[str, str], sent: int
    ) -> UploadResult:
        """The run stopped because nothing got through for the whole retry budget."""
        landed = uploaded + skipped
        return UploadResult(
            "incomplete",
            group_id,
            f"Gave up: the server or storage did not answer for {self._outage.policy.give_up_after:g} s. "
            f"{landed} of {total} slice(s) have landed and are kept in the journal; group {group_id} stays "
            "pending. Run the same upload again when the server is back: it sends only what is missing.",
            uploaded=uploaded,
            skipped=skipped,
            failed=failed,
            bytes_sent=sent,
            not_sent=total - landed - len(failed),
            error_code="unreachable",
        )

    def _open_group(self, plan: UploadPlan) -> tuple[str, str, dict[str, Any] | None]:
        """Continue the journal's pending group, or create one, or adopt the server's on a 409."""
        if self.journal is not None:
            entry = self.journal.find(self.api.base_url, plan.annotation_id, plan.model_name, plan.version)
            if entry is not None:
                try:
                    found = self.api.group_with_slices(entry.group_id)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    self.journal.forget(entry.group_id)
                else:
                    group = found["group"]
                    if group["status"] == "complete" and not _same_slices(found, plan):
                        raise ApiError(
                            409,
                            "duplicate_group",
                            f"Annotation {plan.annotation_id} already has a complete mask group for "
                            f"{plan.model_name} version {plan.version} ({group['id']}). Its slices differ from "
                            "these; use a new version to upload them.",
                            {"group_id": group["id"], "status": "complete"},
                        )
                    if group["status"] in ("pending", "complete"):
                        kind = "resumed" if group["status"] == "pending" else "opened"
                        self._emit(GroupEvent(kind, group["id"], f"Continuing group {group['id']}"))
                        return group["id"], group["status"], group
        fields = {
            "annotation_id": plan.annotation_id,
            "model_name": plan.model_name,
            "version": plan.version,
            "source": plan.source,
        }
        if plan.expected_slices is not None:
            fields["expected_slices"] = plan.expected_slices
        if plan.confidence is not None:
            fields["confidence"] = plan.confidence
        if plan.params:
            fields["params"] = plan.params
        if plan.labels:
            fields["labels"] = plan.labels
        try:
            group = self.api.create_group(fields)
        except ApiError as exc:
            if exc.code != "duplicate_group":
                raise
            return self._adopt_existing(plan, exc)
        self._emit(GroupEvent("opened", group["id"], f"Created group {group['id']}"))
        return group["id"], "pending", group

    def _adopt_existing(self, plan: UploadPlan, exc: ApiError) -> tuple[str, str, dict[str, Any] | None]:
        group_id, status = exc.details["group_id"], exc.details["status"]
        if status == "pending":
            self._emit(GroupEvent("resumed", group_id, f"Continuing pending group {group_id}"))
            return group_id, "pending", None
        if status == "complete":
            found = self.api.group_with_slices(group_id)
            if _same_slices(found, plan):
                return group_id, "complete", found["group"]
        raise ApiError(
            409,
            "duplicate_group",
            f"{exc.message} Its slices differ from these; use a new version to upload them.",
            exc.details,
        )

    # --- PUTs ----------------------------------------------------------------------------------------

    def _put_all(
        self, group_id: str, todo: list[PlannedSlice], check: PixelCheck | None = None
    ) -> tuple[dict[str, str], int, int]:
        book = _UrlBook(self.api, group_id, todo, self.sign_batch, check)
        failed: dict[str, str] = {}
        counts = {"uploaded": 0, "bytes": 0}
        lock = threading.Lock()

        def one(s: PlannedSlice) -> None:
            if self.cancel.is_set():
                return
            if check is not None and not check.wait_for(s.filename, self.cancel):
                return  # not decoded (cancelled), or it failed: never signed nor sent; listed in the result
            try:
                self._put_with_retries(book, s)
            except UploadCancelled:
                return
            except Exception as exc:  # every failure is this slice's, with its reason; none ends the run
                if self._exhausted():
                    self._gave_up = True  # ... except that nothing got through for the whole budget
                if isinstance(exc, ApiError):
                    reason = exc.message
                elif isinstance(exc, _Permanent | _Transient | _Expired | OSError):
                    reason = str(exc)
                else:
                    log.exception("unexpected error uploading %s", s.filename)
                    reason = f"unexpected error ({type(exc).__name__}: {exc}); it has been logged"
                with lock:
                    failed[s.filename] = reason
                self._emit(SliceEvent(s.filename, s.slice_index, SliceState.FAILED, s.size, error=reason))
                return
            book.mark_done(s.filename)
            if self.journal is not None:
                self.journal.mark_landed(group_id, s.filename, s.md5_hex)
            with lock:
                counts["uploaded"] += 1
                counts["bytes"] += s.size
            self._emit(SliceEvent(s.filename, s.slice_index, SliceState.DONE, s.size))

        queue = iter(todo)
        take = threading.Lock()

        def worker() -> None:
            # Each worker pulls the next slice itself: a future per slice cost ~10 % of the client's
            # CPU on 1000 small PUTs (a Condition per future, and a GIL hand-off to collect it).
            while True:
                if self._exhausted():  # the server or storage stayed unreachable: stop here
                    self._gave_up = True
                    return
                with take:
                    s = next(queue, None)
                if s is None:
                    return
                one(s)

        if todo:
            self._emit(GroupEvent("signing", group_id, f"Uploading {len(todo)} slices"))
            try:
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pacs-put") as pool:
                    for running in [pool.submit(worker) for _ in range(min(self.workers, len(todo)))]:
                        running.result()  # re-raises anything unexpected from a worker
            finally:
                book.close()
                self._http.close()  # the pool's threads (and so their keep-alive connections) are done
        return failed, counts["uploaded"], counts["bytes"]

    def _put_with_retries(self, book: _UrlBook, s: PlannedSlice) -> None:
        body = _read(s)
        state: dict[str, _Signed | None] = {"expired": None}
        # The first attempt runs without the retry machinery: tenacity's bookkeeping cost ~0.25 ms of
        # CPU a slice, a quarter of the client's share on 1000 small PUTs, and most PUTs land at once.
        try:
            self._attempt(book, s, body, 1, state)
            return
        except (_Transient, _Expired) as exc:
            first_failure: list[BaseException] = [exc]

        def before_sleep(rs: RetryCallState) -> None:
            error = rs.outcome.exception() if rs.outcome else None
            self._emit(
                SliceEvent(
                    s.filename,
                    s.slice_index,
                    SliceState.RETRYING,
                    s.size,
                    attempt=rs.attempt_number,
                    error=str(error),
                )
            )

        def wait(rs: RetryCallState) -> float:
            if rs.outcome is not None and isinstance(rs.outcome.exception(), _Expired):
                return 0.0
            return min(backoff(rs), max(0.0, self._outage.remaining()))

        def stop(rs: RetryCallState) -> bool:
            if self._exhausted():
                return True
            if rs.attempt_number < self.max_attempts:
                return False
            # Out of attempts, unless storage gives no answer at all anywhere: then wait it out.
            error = rs.outcome.exception() if rs.outcome is not None else None
            return not (isinstance(error, _Unreachable) and (self._outage.down or self.api.outage.down))

        backoff = wait_random_exponential(multiplier=0.2, max=10)
        retrying = Retrying(
            retry=retry_if_exception_type((_Transient, _Expired)),
            stop=stop,
            wait=wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if first_failure:
                    raise first_failure.pop()  # attempt 1, made above: tenacity takes it from here
                self._attempt(book, s, body, attempt.retry_state.attempt_number, state)

    def _attempt(
        self, book: _UrlBook, s: PlannedSlice, body: bytes, number: int, state: dict[str, _Signed | None]
    ) -> None:
        """One PUT of ``s`` with a URL that is not known to be expired; raises what ``_put_once`` raises."""
        if self.cancel.is_set():
            raise UploadCancelled
        try:
            signed = book.get(s.filename, expired=state["expired"])
        except ApiError as exc:
            if exc.status == 0:  # the server did not answer the signing call: wait it out like storage
                raise _Unreachable(exc.message) from exc
            raise
        self._emit(SliceEvent(s.filename, s.slice_index, SliceState.UPLOADING, s.size, attempt=number))
        try:
            self._put_once(signed, body)
        except _Transient:
            self._outage.failed()
            raise
        except _Expired:
            state["expired"] = signed
            raise
        self._outage.succeeded()

    def _waiting_out(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, repeated while the server answers nothing at all, until the budget is spent."""
        while True:
            try:
                return call(*args)
            except ApiError as exc:
                if exc.status != 0 or self._exhausted() or self.cancel.is_set():
                    raise
            self._sleep(min(2.0, max(0.0, self.api.outage.remaining())))

    def _exhausted(self) -> bool:
        """True when the server or storage has answered nothing for the whole retry budget."""
        return self._outage.exhausted() or self.api.outage.exhausted()

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise UploadCancelled

    def _put_once(self, signed: _Signed, body: bytes) -> None:
        try:
            timeout = self._outage.cap(self.put_timeout)  # within the retry budget during an outage
            status, data = self._http.put(signed.url, body, signed.headers, timeout=timeout)
        except PermanentTransportError as exc:
            raise _Permanent(str(exc)) from exc
        except TransportError as exc:
            raise _Unreachable(str(exc)) from exc
        if 200 <= status < 300 or is_already_stored_answer(status):
            return
        if is_expired_answer(status, data):
            raise _Expired("the signed URL expired")
        if status >= 500 or status in (408, 429):
            raise _Transient(_storage_reason(status, data))
        raise _Permanent(_storage_reason(status, data))

    # --- complete ------------------------------------------------------------------------------------

    def _complete(self, group_id: str, slices: list[PlannedSlice]) -> dict[str, Any] | UploadResult:
        payload = [_complete_item(s) for s in slices]
        try:
            return self._waiting_out(self.api.complete, group_id, payload)
        except ApiError as exc:
            if exc.code not in ("objects_missing", "checksum_mismatch"):
                raise
            mismatched = {str(item.get("filename")) for item in exc.details.get("mismatched", [])}
            missing = set(exc.details.get("missing", [])) | mismatched
        # The journal said these landed, but storage lacks them or holds other bytes (a server that lost
        # power before complete made them durable, a damaged disk): send our bytes again, once. Their
        # MD5 is bound in the new URLs, so a file changed since planning is refused, not stored.
        if self.journal is not None:
            self.journal.forget_landed(group_id, sorted(missing))
        again = [s for s in slices if s.filename in missing]
        failed, uploaded, sent = self._put_all(group_id, again)
        if failed or self._gave_up:
            return UploadResult(
                "incomplete",
                group_id,
                f"{len(again) - uploaded} slice(s) could not be re-sent.",
                uploaded=uploaded,
                failed=failed,
                bytes_sent=sent,
                error_code="unreachable" if self._gave_up else None,
            )
        try:
            group = self._waiting_out(self.api.complete, group_id, payload)
        except ApiError as exc:
            return UploadResult(
                "incomplete",
                group_id,
                f"{exc.message} The re-sent slices landed; run the upload again to register the group.",
                uploaded=uploaded,
                bytes_sent=sent,
                error_code=exc.code,
            )
        if self.journal is not None:
            self.journal.mark_complete(group_id)
        return UploadResult(
            "complete",
            group_id,
            f"{len(slices)} slices registered in group {group_id}.",
            uploaded=uploaded,
            bytes_sent=sent,
            group=group,
        )


def _same_slices(found: dict[str, Any], plan: UploadPlan) -> bool:
    """True when a stored group (``GET /api/mask/{id}``) holds exactly the plan's files and checksums."""
    stored = {(m["filename"], m["checksum"]) for m in found["items"]}
    return stored == {(s.filename, s.md5_hex) for s in plan.slices}


def _read(s: PlannedSlice) -> bytes:
    with open(s.path, "rb") as handle:
        return handle.read()


def _complete_item(s: PlannedSlice) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": s.filename,
        "slice_index": s.slice_index,
        "width": s.width,
        "height": s.height,
        "checksum": s.md5_hex,
        "size": s.size,
    }
    if s.labels:
        item["label"] = ",".join(str(label) for label in s.labels)
    if s.sop_instance_uid:
        item["sop_instance_uid"] = s.sop_instance_uid
    return item
