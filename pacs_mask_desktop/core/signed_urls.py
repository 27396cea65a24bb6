"""Signed PUT URLs for one group: asked for in batches ahead of the workers, re-issued when they expire.

Slices go straight to storage with the signed URL and exactly the signed headers; storage refuses
corrupted bodies because the URL binds Content-MD5. :class:`UrlBook` signs lazily, in batches, as the
slice sender's workers reach them, and re-issues a URL that expired (see
:mod:`~pacs_mask_desktop.core.storage_answers` for how an expired URL is recognised). With a pixel check
(``prepare(defer_decode=True)``) only slices whose pixels passed are ever signed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from pacs_mask_desktop.core.api_client import ApiClient, ApiError
from pacs_mask_desktop.core.plan import PixelCheck, PlannedSlice
from server.contract import messages
from server.contract.errors import ErrorCode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SignedPut:
    """A URL to PUT one slice to, the headers it was signed with, and when it dies on our clock."""

    url: str
    headers: dict[str, str]
    local_deadline: float


def sign_request(s: PlannedSlice) -> messages.SliceToSign:
    """What the server needs to sign a PUT of ``s``: its name, size, MD5 and content type."""
    return messages.SliceToSign(
        filename=s.filename, size=s.size, content_md5=s.content_md5_b64, content_type=s.content_type
    )


class UrlBook:
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
        self._urls: dict[str, SignedPut] = {}
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

    def get(self, filename: str, *, expired: SignedPut | None = None) -> SignedPut:
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
            if exc.status in (401, 403) or exc.code == ErrorCode.GROUP_NOT_PENDING:
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
        payload = [sign_request(s) for s in batch]
        sent = time.monotonic()
        urls, server_date = self._api.sign_with_date(self._group_id, payload)
        server_now = _server_time(server_date)
        with self._cond:
            for item in urls:
                self._urls[item.filename] = SignedPut(
                    url=item.url,
                    headers=item.headers,
                    local_deadline=_local_deadline(item.expires_at, server_now, sent),
                )
            self._frontier = max(self._frontier, self._position[batch[-1].filename] + 1)


def _server_time(server_date: str | None) -> datetime | None:
    """The server's clock from its ``Date`` header, or ``None`` when it sent none we can read."""
    try:
        return parsedate_to_datetime(server_date) if server_date else None
    except (TypeError, ValueError):
        return None


def _local_deadline(expires_at: datetime, server_now: datetime | None, sent: float) -> float:
    """When the URL expires on our monotonic clock, corrected for skew with the server's clock.

    A one-second safety margin (the Date header has one-second resolution) keeps us from sending a URL
    that dies on the way.
    """
    if server_now is None:
        lifetime = (expires_at - datetime.now(expires_at.tzinfo)).total_seconds()
    else:
        lifetime = (expires_at - server_now).total_seconds()
    return sent + max(0.0, lifetime - 1.0)
