"""The embedded SQLite database holds patient data: its files are readable by their user only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from server.db.migrate import upgrade
from server.db.session import Database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files (the common 022), restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_database_its_wal_and_its_new_folder_are_private(tmp_path: Path, open_umask: None) -> None:
    database = tmp_path / "new-folder" / "masks.sqlite3"
    url = f"sqlite:///{database}"
    upgrade(url)
    db = Database(url)
    try:
        with db.engine.begin() as connection:  # a write leaves the WAL and shared-memory files
            connection.execute(
                text("INSERT INTO audit_log (at, actor, action) VALUES (CURRENT_TIMESTAMP, 'x', 'y')")
            )
        companions = [database.with_name(database.name + end) for end in ("-wal", "-shm")]
        assert all(p.exists() for p in companions)
        assert {mode(p) for p in (database, *companions)} == {0o600}
        assert mode(database.parent) == 0o700
    finally:
        db.close()


def test_a_database_an_older_version_left_readable_is_narrowed(tmp_path: Path, open_umask: None) -> None:
    folder = tmp_path / "existing"
    folder.mkdir(mode=0o755)
    database = folder / "masks.sqlite3"
    upgrade(f"sqlite:///{database}")
    database.chmod(0o644)
    Database(f"sqlite:///{database}").close()
    assert mode(database) == 0o600
    assert mode(folder) == 0o755  # a folder that existed is not the database's to change
