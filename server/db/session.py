"""Engine and session factory for SQLite (embedded default) and PostgreSQL (clinic server)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from server.private_files import FILE_MODE, private_folder

log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` with the settings each backend needs to be safe under concurrency.

    SQLite gets WAL (readers never block the writer), enforced foreign keys and a busy timeout so
    concurrent writers wait instead of failing; its file is readable by this user only
    (:func:`private_sqlite_file`).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            private_sqlite_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def private_sqlite_file(database: Path) -> None:
    """Create ``database`` (and a missing parent folder) readable by this user only: 0600 and 0700.

    The embedded database holds patient data (IDs, names, study details), so it must not be readable by
    other users whatever the umask. SQLite gives its ``-wal``/``-shm`` files the database file's mode, so
    creating the file first with 0600 covers them; a file an older version left 0644 is narrowed (with
    its companions). A file owned by someone else (a service account's) is left as it is, with a warning.
    """
    private_folder(database.parent, parents=True)
    os.close(os.open(database, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    if os.name == "nt":
        return  # no such modes on Windows: the user's profile folder keeps the data private
    for path in (
        database,
        *(database.with_name(database.name + end) for end in ("-wal", "-shm", "-journal")),
    ):
        try:
            if path.exists() and stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
                path.chmod(FILE_MODE)
        except PermissionError as exc:
            log.warning("cannot make %s readable by its owner only: %s", path, exc)


class Database:
    """The engine and a session factory, created once per application."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any exception."""
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        """Run a trivial query; raises when the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        """Dispose of pooled connections."""
        self.engine.dispose()


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE run through ``Session.execute`` matched.

    ``Session.execute`` is typed to return a plain :class:`Result`; for those statements it is a
    :class:`CursorResult`, which carries the count. Anything else is a programming error.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"a {type(result).__name__} has no row count: not the result of an UPDATE or DELETE")
    return result.rowcount
