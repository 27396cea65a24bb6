"""The resume journal: one upload per identity, landed slices, forget, complete, and thread safety."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from pacs_mask_desktop.core.journal import Journal

SERVER = "http://127.0.0.1:8765"


@pytest.fixture
def journal(tmp_path: Path):
    j = Journal(tmp_path / "nested" / "journal.sqlite3")
    yield j
    j.close()


def start(
    journal: Journal, group_id: str, *, version: str = "1", total: int = 3, server: str = SERVER
) -> None:
    journal.start(
        group_id,
        server=server,
        annotation_id=7,
        model_name="unet",
        version=version,
        source_path="/masks",
        total=total,
    )


def test_start_creates_the_folder_and_finds_the_upload_by_identity(journal: Journal, tmp_path: Path) -> None:
    assert (tmp_path / "nested" / "journal.sqlite3").is_file()
    assert journal.find(SERVER, 7, "unet", "1") is None
    start(journal, "g1")
    entry = journal.find(SERVER, 7, "unet", "1")
    assert entry is not None
    assert (entry.group_id, entry.status, entry.total, entry.landed, entry.source_path) == (
        "g1",
        "pending",
        3,
        0,
        "/masks",
    )
    # Another server, version or model is another upload.
    assert journal.find("http://other:1", 7, "unet", "1") is None
    assert journal.find(SERVER, 7, "unet", "2") is None
    assert journal.find(SERVER, 7, "other", "1") is None


def test_landed_marks_are_per_group_and_counted(journal: Journal) -> None:
    start(journal, "g1")
    start(journal, "g2", version="2")
    journal.mark_landed("g1", "a.png", "md5a")
    journal.mark_landed("g1", "b.png", "md5b")
    journal.mark_landed("g2", "a.png", "other")
    assert journal.landed("g1") == {"a.png": "md5a", "b.png": "md5b"}
    assert journal.landed("g2") == {"a.png": "other"}
    assert journal.find(SERVER, 7, "unet", "1").landed == 2  # type: ignore[union-attr]
    # Landing again (a re-sent slice) replaces the mark instead of failing or duplicating it.
    journal.mark_landed("g1", "a.png", "md5a2")
    assert journal.landed("g1") == {"a.png": "md5a2", "b.png": "md5b"}


def test_restarting_an_upload_keeps_its_marks(journal: Journal) -> None:
    start(journal, "g1", total=3)
    journal.mark_landed("g1", "a.png", "md5a")
    start(journal, "g1", total=4)  # the same group continued (e.g. after a crash)
    entry = journal.find(SERVER, 7, "unet", "1")
    assert entry is not None
    assert (entry.total, entry.landed) == (4, 1)
    assert journal.landed("g1") == {"a.png": "md5a"}


def test_a_new_group_for_the_same_identity_replaces_the_old_entry(journal: Journal) -> None:
    start(journal, "old")
    journal.mark_landed("old", "a.png", "md5a")
    start(journal, "new")  # the old group was deleted on the server and a new one created
    entry = journal.find(SERVER, 7, "unet", "1")
    assert entry is not None
    assert entry.group_id == "new"
    assert journal.landed("old") == {}  # its marks went with it (ON DELETE CASCADE)


def test_forget_landed_drops_only_the_named_marks(journal: Journal) -> None:
    start(journal, "g1")
    for name in ("a.png", "b.png", "c.png"):
        journal.mark_landed("g1", name, "md5")
    journal.forget_landed("g1", ["a.png", "c.png", "never-there.png"])
    assert journal.landed("g1") == {"b.png": "md5"}


def test_complete_clears_marks_and_leaves_the_unfinished_list(journal: Journal) -> None:
    start(journal, "g1")
    start(journal, "g2", version="2")
    journal.mark_landed("g1", "a.png", "md5a")
    assert {e.group_id for e in journal.unfinished()} == {"g1", "g2"}
    journal.mark_complete("g1")
    entry = journal.find(SERVER, 7, "unet", "1")
    assert entry is not None
    assert (entry.status, entry.landed) == ("complete", 0)
    assert journal.landed("g1") == {}
    assert [e.group_id for e in journal.unfinished()] == ["g2"]
    assert [e.group_id for e in journal.unfinished(SERVER)] == ["g2"]
    assert journal.unfinished("http://other:1") == []


def test_forget_removes_the_upload_and_its_marks(journal: Journal) -> None:
    start(journal, "g1")
    journal.mark_landed("g1", "a.png", "md5a")
    journal.forget("g1")
    assert journal.find(SERVER, 7, "unet", "1") is None
    assert journal.landed("g1") == {}
    journal.forget("g1")  # repeatable


def test_marks_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    first = Journal(path)
    start(first, "g1")
    first.mark_landed("g1", "a.png", "md5a")
    first.close()
    second = Journal(path)
    try:
        assert second.landed("g1") == {"a.png": "md5a"}
        assert second.find(SERVER, 7, "unet", "1").group_id == "g1"  # type: ignore[union-attr]
    finally:
        second.close()


def test_marks_written_by_one_connection_are_seen_by_another_at_once(tmp_path: Path) -> None:
    """A killed process's committed marks are on disk: nothing waits for a clean close (WAL)."""
    path = tmp_path / "journal.sqlite3"
    writer = Journal(path)
    start(writer, "g1")
    writer.mark_landed("g1", "a.png", "md5a")
    reader = sqlite3.connect(path)
    try:
        assert reader.execute("SELECT filename, md5 FROM landed").fetchall() == [("a.png", "md5a")]
    finally:
        reader.close()
        writer.close()


def test_many_threads_marking_at_once_lose_nothing(journal: Journal) -> None:
    """Upload workers mark slices concurrently while others read: every mark lands, nothing raises."""
    start(journal, "g1", total=1600)
    errors: list[BaseException] = []
    barrier = threading.Barrier(9)

    def mark(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(200):
                journal.mark_landed("g1", f"w{worker}_{i:04d}.png", f"md5-{worker}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            barrier.wait()
            for _ in range(100):
                journal.landed("g1")
                journal.find(SERVER, 7, "unet", "1")
                journal.unfinished()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=mark, args=(w,)) for w in range(8)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    landed = journal.landed("g1")
    assert len(landed) == 1600
    assert landed["w3_0042.png"] == "md5-3-42"
    assert journal.find(SERVER, 7, "unet", "1").landed == 1600  # type: ignore[union-attr]
