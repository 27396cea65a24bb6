"""How long the client keeps trying while the server or storage does not answer, and when it gives up.

Every request is retried with backoff a bounded number of times; on its own that bounds one request,
not an upload: 1000 slices each retried six times against a server that died took 15 minutes to end.
So an :class:`Outage` clock runs for the API client (shared by all its calls) and one for the upload
engine's PUTs. A clock starts at the first request that gets no usable answer (no connection, a
timeout, 5xx, 429) and stops at the next one that gets through. While the server or storage answers
nothing at all, the engine's requests keep trying past their attempt limit, so a restart is waited
out. Once a clock has run for :attr:`RetryPolicy.give_up_after` seconds, retries stop, no new slice
is started and the upload ends as incomplete; the journal keeps what landed, so the same
command sends only what is missing when the server is back. Requests made during an outage have
their timeouts cut to what is left of the budget, so a dead server (connections refused or reset)
ends the run within the budget plus about a second. A request already in flight when the network
silently stopped carrying packets can still wait out its own timeout first (an API answer 60 s, a PUT
120 s without a byte moving).

:class:`RetryPolicy` is the one setting: the CLI's ``--give-up-after``, the watch worker, the Python API
(``upload_inference_result(..., policy=...)``) and the desktop app's settings all hand it to
:class:`~pacs_mask_desktop.core.api_client.ApiClient`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

DEFAULT_GIVE_UP_AFTER = 120.0
"""Seconds without any answer before an upload gives up (about 2 minutes: a server restart fits)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep retrying while nothing gets through (seconds, > 0)."""

    give_up_after: float = DEFAULT_GIVE_UP_AFTER

    def __post_init__(self) -> None:
        value = self.give_up_after
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (value > 0 and math.isfinite(value))
        ):
            raise ValueError(f"give_up_after must be a positive number of seconds, not {value!r}")


class Outage:
    """Thread-safe clock of the current outage, shared by every request of one client."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self) -> None:
        """A request got no usable answer: start the clock if it is not running."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def succeeded(self) -> None:
        """A request got through: the server and storage are reachable again."""
        with self._lock:
            self._since = None

    reset = succeeded  # a new upload run starts with the whole budget, whatever the last one met

    @property
    def down(self) -> bool:
        """True while an outage is being timed."""
        return self._since is not None

    def remaining(self) -> float:
        """Seconds left before giving up (the whole budget when nothing is failing)."""
        since = self._since
        if since is None:
            return self.policy.give_up_after
        return self.policy.give_up_after - (time.monotonic() - since)

    def exhausted(self) -> bool:
        """True when nothing has got through for the whole budget: stop retrying."""
        return self.remaining() <= 0

    def cap(self, seconds: float, floor: float = 1.0) -> float:
        """A request's timeout: ``seconds``, cut to what is left of the budget while an outage is timed.

        Never below ``floor``. Once the budget is spent, the next request (a long-lived desktop client's
        next call, a fresh run) is a single probe with the full timeout: a server that came back slow
        must be able to answer it.
        """
        remaining = self.remaining()
        if self._since is None or remaining <= 0:
            return seconds
        return max(floor, min(seconds, remaining))
