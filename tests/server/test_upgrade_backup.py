"""Upgrading the embedded SQLite database: a backup first, the rows kept, a failed migration undone.

The database is a real file migrated to the first revision with rows in it (what version 1 of the app
left on a workstation); the failing migration is a real Alembic script added to a temporary copy of the
migrations folder, so Alembic, SQLite and the backup API all run for real.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from server import cli
from server.db import migrate
from server.db.backup import MigrationFailed, backup_path, upgrade_with_backup
from server.db.migrate import current_revision, head_revision, upgrade
from server.settings import Settings

FIRST_REVISION = "0001"
BROKEN_REVISION = "9999_broken"
BROKEN_SCRIPT = '''"""a migration that fails half way (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("DELETE FROM annotation")
    raise RuntimeError("boom: this migration is broken on purpose")


def downgrade() -> None:
    pass
'''


def _old_database(folder: Path) -> tuple[str, Path]:
    """A database at the first revision with two annotations and a token, like version 1 left it."""
    path = folder / "pacs-masks.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url, FIRST_REVISION)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO annotation (study_instance_uid, series_instance_uid, patient_id, description, "
            "created_by, created_at) VALUES (?, ?, ?, ?, 'tester', '2026-11-27 10:00:00')",
            [("1.2.3", "1.2.3.1", "P1", "first"), ("1.2.4", "1.2.4.1", "P2", "second")],
        )
    return url, path


def _dump(path: Path) -> list[str]:
    """Every statement that recreates the database: equal dumps mean equal schema and rows."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _annotations(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT series_instance_uid, description FROM annotation ORDER BY id").fetchall()
    finally:
        conn.close()


def test_an_old_database_is_backed_up_then_migrated_with_its_rows(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    url, path = _old_database(tmp_path)
    before = _dump(path)
    head = head_revision()

    with caplog.at_level(logging.INFO, logger="server.db.backup"):
        backup = upgrade_with_backup(url)

    assert backup == backup_path(path, head) == tmp_path / f"pacs-masks.sqlite3.before-{head}.bak"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert _dump(backup) == before, "the backup is the database as it was before the upgrade"
    assert current_revision(f"sqlite:///{backup}") == FIRST_REVISION
    assert current_revision(url) == head
    assert _annotations(path) == [("1.2.3.1", "first"), ("1.2.4.1", "second")]
    messages = [r.getMessage() for r in caplog.records]
    assert any("backed up to" in m and str(backup) in m for m in messages)
    assert any(f"migrated from revision {FIRST_REVISION} to {head}" in m for m in messages)
    assert not list(tmp_path.glob("*.partial"))

    assert upgrade_with_backup(url) is None, "a database at head needs no second backup"


def test_a_new_database_is_created_without_a_backup(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    assert upgrade_with_backup(url) is None
    assert current_revision(url) == head_revision()
    assert list(tmp_path.iterdir()) != []
    assert not list(tmp_path.glob("*.bak"))


@pytest.fixture
def broken_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shipped migrations plus one that fails after changing the schema and deleting rows."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    script = BROKEN_SCRIPT.format(revision=BROKEN_REVISION, down=head_revision())
    (folder / "versions" / f"2099_01_01_{BROKEN_REVISION}.py").write_text(script, encoding="utf-8")
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", folder)
    assert head_revision() == BROKEN_REVISION
    return BROKEN_REVISION


def test_a_failed_migration_restores_the_backup_and_says_so(
    tmp_path: Path,
    broken_migrations: str,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    url, path = _old_database(data)
    before = _dump(path)

    with caplog.at_level(logging.INFO, logger="server.db.backup"), pytest.raises(MigrationFailed) as failure:
        upgrade_with_backup(url)

    backup = backup_path(path, broken_migrations)
    message = str(failure.value)
    assert "restored from the backup" in message
    assert str(backup) in message
    assert "boom" in message
    assert _dump(path) == _dump(backup) == before, "the database is exactly as it was before the upgrade"
    assert current_revision(url) == FIRST_REVISION
    assert any(
        r.levelno == logging.ERROR and "restoring the backup" in r.getMessage() for r in caplog.records
    )


def test_the_server_stops_with_the_message_when_a_migration_fails(
    tmp_path: Path,
    broken_migrations: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve`` (through prepare_database) exits 3 and prints the message last, for the desktop to show."""
    monkeypatch.delenv("PACS_MASK_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _url, path = _old_database(data)
    before = _dump(path)

    with pytest.raises(SystemExit) as stopped:
        cli.prepare_database(Settings(data_dir=data))

    assert stopped.value.code == 3
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("pacs-mask-server: Updating the database")
    assert "restored from the backup" in last_line
    assert _dump(path) == before


def test_a_newer_database_is_left_alone_and_the_desktop_is_told(tmp_path: Path) -> None:
    """An older app started on a newer app's database: the real embedded server child stops at start,
    and the error the desktop shows (EmbeddedServerError) carries the server's sentence."""
    from pacs_mask_desktop.core.embedded import EmbeddedServer, EmbeddedServerError

    data = tmp_path / "data"
    data.mkdir()
    _url, path = _old_database(data)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '2099_from_the_future'")
    before = _dump(path)

    server = EmbeddedServer(data, log_path=tmp_path / "server.log", startup_timeout=60)
    with pytest.raises(EmbeddedServerError) as failure:
        server.start()

    message = str(failure.value)
    assert "stopped during start-up (exit code 3)" in message
    assert "written by a newer version of the app (revision 2099_from_the_future)" in message
    assert "Nothing was changed" in message
    assert not server.running()
    assert _dump(path) == before
    assert not list(data.glob("*.bak"))
