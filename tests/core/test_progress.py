"""``ProgressCounter``: the totals the CLI's bar and the desktop upload panel both show."""

from __future__ import annotations

import pytest

from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState
from pacs_mask_desktop.core.progress import ProgressCounter, human_bytes


def _slice(name: str, state: SliceState, size: int = 100, attempt: int = 0) -> SliceEvent:
    return SliceEvent(name, int(name[1:]), state, size, attempt=attempt)


def test_counts_sent_already_stored_failed_and_retried_slices_apart() -> None:
    counter = ProgressCounter()
    events = [
        GroupEvent("opened", "g", "Created group g"),  # group events change no total
        _slice("s0", SliceState.SKIPPED, 50),
        _slice("s1", SliceState.QUEUED),
        _slice("s2", SliceState.QUEUED),
        _slice("s3", SliceState.QUEUED),
        _slice("s1", SliceState.UPLOADING, attempt=1),
        _slice("s1", SliceState.DONE),
        _slice("s2", SliceState.UPLOADING, attempt=1),
        _slice("s2", SliceState.RETRYING, attempt=1),
        _slice("s2", SliceState.UPLOADING, attempt=2),
        _slice("s2", SliceState.DONE),
        _slice("s3", SliceState.FAILED),
        _slice("s1", SliceState.QUEUED),  # a slice seen again (a re-send) is not counted twice in the total
    ]
    for event in events:
        counter.feed(event)
    assert (counter.total, counter.total_bytes) == (4, 350)
    assert (counter.done, counter.skipped, counter.failed, counter.retries) == (2, 1, 1, 1)
    assert counter.finished == 3
    assert counter.bytes_done == 250  # sent now or already stored: what the bar shows
    assert counter.bytes_sent == 200  # sent by this run only: what a transfer rate divides


def test_rates_divide_what_this_run_sent_by_the_elapsed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = ProgressCounter(started=100.0)
    counter.feed(_slice("s0", SliceState.SKIPPED, 1000))
    for n in range(1, 5):
        counter.feed(_slice(f"s{n}", SliceState.DONE, 2048))
    monkeypatch.setattr("pacs_mask_desktop.core.progress.time.monotonic", lambda: 102.0)
    assert counter.elapsed() == 2.0
    assert counter.rate() == 2.0
    assert counter.byte_rate() == 4096.0
    monkeypatch.setattr("pacs_mask_desktop.core.progress.time.monotonic", lambda: 100.0)
    assert counter.rate() > 0  # no division by zero at the very start


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**2, 3 * 1024**3, 5000 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KB",
        "5.0 MB",
        "3.0 GB",
        "5000.0 GB",
    ]
