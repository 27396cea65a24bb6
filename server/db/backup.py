"""Upgrade an embedded SQLite database safely: back it up, migrate, restore the backup if that fails.

A workstation's embedded database holds the only copy of its groups and audit trail. When a newer
version of the app starts on a database that is behind the revisions it ships, the server first copies
the database next to itself with SQLite's online backup API (a consistent snapshot even with the WAL in
use; a plain file copy is not), as ``<db>.before-<head>.bak`` (0600: it is patient data), then runs
the migrations. SQLite runs Alembic's DDL outside a transaction, so a migration that fails half way can
leave a half-changed schema: then the backup is copied back over the database (the same API) and
:class:`MigrationFailed` says so in words the desktop shows the user.

PostgreSQL is never touched here: a clinic's database is migrated on purpose by whoever runs the
upgrade (``pacs-mask-server migrate``, after their own backup), see ``server.db.prepare.prepare_database``.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import make_url

from server.db.migrate import alembic_config, current_revision, head_revision, upgrade
from server.db.session import private_sqlite_file

log = logging.getLogger(__name__)


class MigrationFailed(Exception):
    """The embedded database cannot be brought to this version's schema; the message says why and that
    the data is unchanged (restored from its backup, or never touched)."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for another backend or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def backup_path(database: Path, head: str) -> Path:
    """Where the copy taken before upgrading ``database`` to revision ``head`` is kept (next to it)."""
    return database.with_name(f"{database.name}.before-{head}.bak")


def is_known_revision(revision: str) -> bool:
    """True when ``revision`` is one of the migrations this version ships."""
    try:
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision) is not None
    except CommandError:
        return False


def copy_database(source: Path, target: Path) -> None:
    """Copy the SQLite database ``source`` onto ``target`` with the online backup API.

    ``target`` is readable by this user only (:func:`~server.db.session.private_sqlite_file`); an
    existing one is overwritten in place (the backup API replaces every page of it, and its WAL is reset).
    """
    private_sqlite_file(target)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def upgrade_with_backup(url: str) -> Path | None:
    """Bring the SQLite database at ``url`` to the head revision, backing it up first when it is behind.

    Returns the backup's path, or None when nothing needed one (already at head, or a new database).
    Raises :class:`MigrationFailed` when a migration fails (after restoring the backup), and before
    touching anything when the database is at a revision this version does not know (a downgrade).
    """
    database = sqlite_file(url)
    if database is None:
        raise ValueError(f"not a SQLite database file: {url}")
    current = current_revision(url) if database.exists() else None
    head = head_revision()
    if current == head:
        return None
    if current is None:  # a new (or never migrated) database: nothing to keep
        upgrade(url)
        log.info("created the database %s at revision %s", database, head)
        return None
    if not is_known_revision(current):  # an older version started on a newer version's database
        raise MigrationFailed(
            f"The database {database} was written by a newer version of the app (revision {current}); this "
            f"version knows revisions up to {head}. Nothing was changed. Install the newer version again."
        )
    backup = backup_path(database, head)
    partial = backup.with_name(backup.name + ".partial")
    copy_database(database, partial)
    partial.replace(backup)  # an older backup of the same name is replaced only by a complete one
    log.info(
        "database %s is at revision %s, this version needs %s: backed up to %s before migrating",
        database,
        current,
        head,
        backup,
    )
    try:
        upgrade(url)
    except Exception as exc:
        log.exception("migrating %s from %s to %s failed; restoring the backup", database, current, head)
        copy_database(backup, database)
        raise MigrationFailed(
            f"Updating the database {database} from revision {current} to {head} failed ({exc}). "
            f"It was restored from the backup taken just before ({backup}): no data was lost, but this "
            "version cannot use it. Reinstall the previous version, or send the server log to support."
        ) from exc
    log.info(
        "database %s migrated from revision %s to %s; the backup stays at %s", database, current, head, backup
    )
    return backup
