"""Sending a group's slices to storage: a pool of workers, each PUT with its retries, the journal's marks.

- Each worker pulls the next slice, gets a URL from the group's
  :class:`~pacs_mask_desktop.core.signed_urls.UrlBook` and PUTs the file's bytes with exactly the signed
  headers through :class:`~pacs_mask_desktop.core.transport.PutTransport` (libcurl, one kept-alive
  handle per worker thread; why not httpx is measured there).
- What storage answered is read by :mod:`~pacs_mask_desktop.core.storage_answers`: a URL that expired is
  re-issued, not retried blindly; connection errors, timeouts, 5xx and 429 are retried with exponential
  backoff and full jitter (tenacity), a bounded number of times; anything else fails that slice with the
  storage's reason.
- While the server or storage answers nothing at all (refused, reset, timed out), requests keep trying
  past their attempt limit, so a restart is waited out. When nothing has got through for the policy's
  ``give_up_after`` seconds (:class:`~pacs_mask_desktop.core.retry.Outage` clocks: the API client's and
  :attr:`SliceSender.outage` for storage), the sender gives up as a whole: retries stop, no new slice is
  started, and :attr:`SliceSender.gave_up` is set.
- Every slice that landed is marked in the journal at once, so a run after a crash, kill or power loss
  sends only what is missing.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from tenacity import RetryCallState, Retrying, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.events import EventSink, GroupEvent, SliceEvent, SliceState
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.plan import PixelCheck, PlannedSlice
from pacs_mask_desktop.core.retry import Outage
from pacs_mask_desktop.core.signed_urls import SignedPut, UrlBook
from pacs_mask_desktop.core.storage_answers import (
    StorageRefused,
    StorageUnreachable,
    TransientFailure,
    UrlExpired,
    check_put_answer,
)
from pacs_mask_desktop.core.transport import PermanentTransportError, PutTransport, TransportError

log = logging.getLogger(__name__)


class UploadCancelled(Exception):
    """The user (or the caller) cancelled the upload."""


class SliceSender:
    """PUTs the slices of one run in parallel; ``emit`` is called from the worker threads."""

    def __init__(
        self,
        api: ApiClient,
        journal: Journal | None,
        *,
        workers: int,
        max_attempts: int,
        sign_batch: int,
        put_timeout: float,
        emit: EventSink,
        cancel: threading.Event,
    ) -> None:
        self.api = api
        self.journal = journal
        self.workers = workers
        self.max_attempts = max_attempts
        self.sign_batch = sign_batch
        self.put_timeout = put_timeout
        self.cancel = cancel
        self._emit = emit
        self._http = PutTransport(timeout=put_timeout)
        # Two clocks with one budget (core/retry.py): the API client's for its calls, this one for storage,
        # so a server that signs while storage is down still ends the run in time.
        self.outage = Outage(api.outage.policy)
        self.gave_up = False
        """Set when nothing got through for the whole retry budget: the run stops sending."""

    def reset(self) -> None:
        """A new run: no outage so far, not given up."""
        self.gave_up = False
        self.outage.reset()

    def close(self) -> None:
        """Close pooled storage connections."""
        self._http.close()

    def send(
        self, group_id: str, todo: list[PlannedSlice], check: PixelCheck | None = None
    ) -> tuple[dict[str, str], int, int]:
        """PUT ``todo`` into ``group_id``; returns (failed ``filename -> reason``, slices sent, bytes sent).

        With ``check``, a slice is signed and sent only once its pixels passed; one that failed is skipped
        (the caller lists it from the check). Every other failure is that slice's, with its reason.
        """
        book = UrlBook(self.api, group_id, todo, self.sign_batch, check)
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
                if self.exhausted():
                    self.gave_up = True  # ... except that nothing got through for the whole budget
                if isinstance(exc, ApiError):
                    reason = exc.message
                elif isinstance(exc, StorageRefused | TransientFailure | UrlExpired | OSError):
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
                if self.exhausted():  # the server or storage stayed unreachable: stop here
                    self.gave_up = True
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

    def _put_with_retries(self, book: UrlBook, s: PlannedSlice) -> None:
        body = _read(s)
        state: dict[str, SignedPut | None] = {"expired": None}
        # The first attempt runs without the retry machinery: tenacity's bookkeeping cost ~0.25 ms of
        # CPU a slice, a quarter of the client's share on 1000 small PUTs, and most PUTs land at once.
        try:
            self._attempt(book, s, body, 1, state)
            return
        except (TransientFailure, UrlExpired) as exc:
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
            if rs.outcome is not None and isinstance(rs.outcome.exception(), UrlExpired):
                return 0.0
            return min(backoff(rs), max(0.0, self.outage.remaining()))

        def stop(rs: RetryCallState) -> bool:
            if self.exhausted():
                return True
            if rs.attempt_number < self.max_attempts:
                return False
            # Out of attempts, unless storage gives no answer at all anywhere: then wait it out.
            error = rs.outcome.exception() if rs.outcome is not None else None
            return not (isinstance(error, StorageUnreachable) and (self.outage.down or self.api.outage.down))

        backoff = wait_random_exponential(multiplier=0.2, max=10)
        retrying = Retrying(
            retry=retry_if_exception_type((TransientFailure, UrlExpired)),
            stop=stop,
            wait=wait,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if first_failure:
                    raise first_failure.pop()  # attempt 1, made above: tenacity takes it from here
                self._attempt(book, s, body, attempt.retry_state.attempt_number, state)

    def _attempt(
        self, book: UrlBook, s: PlannedSlice, body: bytes, number: int, state: dict[str, SignedPut | None]
    ) -> None:
        """One PUT of ``s`` with a URL that is not known to be expired; raises what ``_put_once`` raises."""
        if self.cancel.is_set():
            raise UploadCancelled
        try:
            signed = book.get(s.filename, expired=state["expired"])
        except ApiError as exc:
            if exc.status == 0:  # the server did not answer the signing call: wait it out like storage
                raise StorageUnreachable(exc.message) from exc
            raise
        self._emit(SliceEvent(s.filename, s.slice_index, SliceState.UPLOADING, s.size, attempt=number))
        try:
            self._put_once(signed, body)
        except TransientFailure:
            self.outage.failed()
            raise
        except UrlExpired:
            state["expired"] = signed
            raise
        self.outage.succeeded()

    def exhausted(self) -> bool:
        """True when the server or storage has answered nothing for the whole retry budget."""
        return self.outage.exhausted() or self.api.outage.exhausted()

    def sleep(self, seconds: float) -> None:
        """Pause ``seconds``; raises :class:`UploadCancelled` at once when the run is cancelled."""
        if self.cancel.wait(seconds):
            raise UploadCancelled

    def _put_once(self, signed: SignedPut, body: bytes) -> None:
        try:
            timeout = self.outage.cap(self.put_timeout)  # within the retry budget during an outage
            status, data = self._http.put(signed.url, body, signed.headers, timeout=timeout)
        except PermanentTransportError as exc:
            raise StorageRefused(str(exc)) from exc
        except TransportError as exc:
            raise StorageUnreachable(str(exc)) from exc
        check_put_answer(status, data)


def _read(s: PlannedSlice) -> bytes:
    with open(s.path, "rb") as handle:
        return handle.read()
