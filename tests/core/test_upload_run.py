"""``upload_with_journal``: the one way every caller runs an upload with its resume journal.

Against the real server (subprocess, local storage) used by the engine tests: a cancelled run is
resumed from the journal and sends only what is missing; the journal and the engine's connections are
closed however the run ends.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pacs_mask_desktop.core.events import GroupEvent, SliceEvent, SliceState
from pacs_mask_desktop.core.journal import Journal
from pacs_mask_desktop.core.paths import journal_path
from pacs_mask_desktop.core.plan import UploadPlan, prepare
from pacs_mask_desktop.core.upload import UploadEngine
from pacs_mask_desktop.core.upload_run import upload_with_journal
from tests.live_server import LiveServer, Volume, assert_group_matches, copy_masks


def _plan(folder: Path, annotation: int, *, defer_decode: bool = False) -> UploadPlan:
    prepared = prepare(
        folder, annotation_id=annotation, model_name="runner-test", version="1", defer_decode=defer_decode
    )
    assert prepared.plan is not None, prepared.problems
    return prepared.plan


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every ``Journal.close`` and ``UploadEngine.close`` (the real ones still run)."""
    seen: list[str] = []
    journal_close, engine_close = Journal.close, UploadEngine.close

    def close_journal(self: Journal) -> None:
        seen.append("journal")
        journal_close(self)

    def close_engine(self: UploadEngine) -> None:
        seen.append("engine")
        engine_close(self)

    monkeypatch.setattr(Journal, "close", close_journal)
    monkeypatch.setattr(UploadEngine, "close", close_engine)
    return seen


def test_a_cancelled_run_resumes_from_the_journal_and_sends_only_what_is_missing(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any, closes: list[str]
) -> None:
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 200, 40)
    annotation = live_server.new_annotation()
    cancel = threading.Event()
    done: list[str] = []

    def stop_after_ten(event: SliceEvent | GroupEvent) -> None:
        if isinstance(event, SliceEvent) and event.state is SliceState.DONE:
            done.append(event.filename)
            if len(done) >= 10:
                cancel.set()

    with live_server.api() as api:
        first = upload_with_journal(
            api,
            _plan(tmp_path / "masks", annotation),
            source_path=str(tmp_path / "masks"),
            workers=2,
            on_event=stop_after_ten,
            cancel=cancel,
        )
    assert first.status == "cancelled"
    assert closes == ["engine", "journal"]
    with Journal(journal_path()) as journal:  # the shared journal (core.paths), as the CLI uses it
        (entry,) = journal.unfinished(live_server.url)
        landed = journal.landed(entry.group_id)
    assert entry.source_path == str(tmp_path / "masks")
    assert set(done) <= set(landed)
    assert len(landed) < len(files)

    skipped: list[str] = []
    with live_server.api() as api:
        second = upload_with_journal(
            api,
            _plan(tmp_path / "masks", annotation),
            on_event=lambda e: (
                skipped.append(e.filename)
                if isinstance(e, SliceEvent) and e.state is SliceState.SKIPPED
                else None
            ),
        )
    assert second.ok, second.message
    assert second.group_id == entry.group_id
    assert sorted(skipped) == sorted(landed)
    assert (second.skipped, second.uploaded) == (len(landed), len(files) - len(landed))
    with Journal(journal_path()) as journal:
        assert journal.unfinished() == []
    assert_group_matches(live_server, entry.group_id, files)


def test_an_exception_from_the_event_callback_still_closes_engine_and_journal(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any, closes: list[str]
) -> None:
    client_env(live_server)
    copy_masks(ct_1000, tmp_path / "masks", 300, 4)
    annotation = live_server.new_annotation()

    def explode(event: SliceEvent | GroupEvent) -> None:
        if isinstance(event, GroupEvent) and event.kind == "opened":
            raise RuntimeError("the caller's callback failed")

    with live_server.api() as api, pytest.raises(RuntimeError, match="callback failed"):
        upload_with_journal(api, _plan(tmp_path / "masks", annotation), on_event=explode)
    assert closes == ["engine", "journal"]


def test_a_cancelled_plan_with_a_pixel_check_can_be_run_again_and_completes(
    live_server: LiveServer, ct_1000: Volume, tmp_path: Path, client_env: Any, closes: list[str]
) -> None:
    """The desktop app's Resume runs the same plan again: a pixel check an earlier run stopped before it
    decoded everything is replaced by a fresh one, so the next run decodes, sends and completes."""
    client_env(live_server)
    files = copy_masks(ct_1000, tmp_path / "masks", 400, 6)
    annotation = live_server.new_annotation()
    plan = _plan(tmp_path / "masks", annotation, defer_decode=True)
    assert plan.pixel_check is not None
    plan.pixel_check.start()  # as a run cancelled before any slice was decoded leaves it: stopped
    plan.pixel_check.cancel()
    journal_file = tmp_path / "own-journal.sqlite3"
    cancelled = threading.Event()
    cancelled.set()
    with live_server.api() as api:
        first = upload_with_journal(api, plan, journal_path=journal_file, cancel=cancelled)
        assert (first.status, first.uploaded) == ("cancelled", 0)
        second = upload_with_journal(api, plan, journal_path=journal_file)
    assert second.ok, second.message
    assert second.uploaded == len(files)
    assert closes == ["engine", "journal", "engine", "journal"]
    assert not journal_path().exists()  # an explicit journal_path is used instead of the shared one
    assert_group_matches(live_server, second.group_id, files)  # type: ignore[arg-type]
