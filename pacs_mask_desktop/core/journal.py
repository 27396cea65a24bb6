"""The resume journal: which group an upload went to and which slices have landed.

A small SQLite file in the user data dir. Running the same upload again after a crash, a kill or a
power loss reads it to continue the pending group and send only what is missing. WAL mode with
``synchronous=NORMAL`` can lose the last few marks on power loss; that only means those slices are
sent again (storage overwrites with identical bytes), never that one is skipped wrongly.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload (
    group_id TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    source_path TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS upload_identity ON upload (server, annotation_id, model_name, version);
CREATE TABLE IF NOT EXISTS landed (
    group_id TEXT NOT NULL REFERENCES upload (group_id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    md5 TEXT NOT NULL,
    PRIMARY KEY (group_id, filename)
);
"""


_SELECT_ENTRIES = (
    "SELECT u.group_id, u.server, u.annotation_id, u.model_name, u.version, u.status, u.source_path, u.total, "
    "(SELECT COUNT(*) FROM landed l WHERE l.group_id = u.group_id), u.updated_at FROM upload u"
)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One upload the journal knows about."""

    group_id: str
    server: str
    annotation_id: int
    model_name: str
    version: str
    status: str
    source_path: str | None
    total: int
    landed: int
    updated_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Journal:
    """Thread-safe access to the journal file (upload threads mark slices as they land)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the file however the block ended: ``with Journal(path) as journal: ...``."""
        self.close()

    def find(self, server: str, annotation_id: int, model_name: str, version: str) -> JournalEntry | None:
        """The journal's upload for this identity, if any."""
        rows = self._entries(
            "WHERE u.server = ? AND u.annotation_id = ? AND u.model_name = ? AND u.version = ?",
            (server, annotation_id, model_name, version),
        )
        return rows[0] if rows else None

    def unfinished(self, server: str | None = None) -> list[JournalEntry]:
        """Uploads that were started and never completed (what the desktop app offers to resume)."""
        if server is None:
            return self._entries("WHERE u.status = 'pending'", ())
        return self._entries("WHERE u.status = 'pending' AND u.server = ?", (server,))

    def _entries(self, where: str, params: tuple[object, ...]) -> list[JournalEntry]:
        query = _SELECT_ENTRIES + " " + where + " ORDER BY u.updated_at DESC"
        with self._lock:
            return [JournalEntry(*row) for row in self._db.execute(query, params).fetchall()]

    def start(
        self,
        group_id: str,
        *,
        server: str,
        annotation_id: int,
        model_name: str,
        version: str,
        source_path: str | None,
        total: int,
    ) -> None:
        """Record that an upload into ``group_id`` has started (or is being continued)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM upload WHERE server = ? AND annotation_id = ? AND model_name = ? AND version = ? "
                "AND group_id != ?",
                (server, annotation_id, model_name, version, group_id),
            )
            self._db.execute(
                "INSERT INTO upload (group_id, server, annotation_id, model_name, version, status, source_path, "
                "total, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?) "
                "ON CONFLICT (group_id) DO UPDATE SET total = excluded.total, updated_at = excluded.updated_at, "
                "source_path = excluded.source_path",
                (group_id, server, annotation_id, model_name, version, source_path, total, _now()),
            )

    def landed(self, group_id: str) -> dict[str, str]:
        """``filename -> md5`` of every slice known to have landed in storage."""
        with self._lock:
            return dict(self._db.execute("SELECT filename, md5 FROM landed WHERE group_id = ?", (group_id,)))

    def mark_landed(self, group_id: str, filename: str, md5: str) -> None:
        """Record that storage accepted ``filename`` with this MD5."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO landed (group_id, filename, md5) VALUES (?, ?, ?)",
                (group_id, filename, md5),
            )

    def forget_landed(self, group_id: str, filenames: list[str]) -> None:
        """Drop landed marks the server disproved (e.g. objects it could not find at complete)."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM landed WHERE group_id = ? AND filename = ?", [(group_id, f) for f in filenames]
            )

    def mark_complete(self, group_id: str) -> None:
        """The server registered the group: nothing left to resume."""
        with self._lock:
            self._db.execute(
                "UPDATE upload SET status = 'complete', updated_at = ? WHERE group_id = ?", (_now(), group_id)
            )
            self._db.execute("DELETE FROM landed WHERE group_id = ?", (group_id,))

    def forget(self, group_id: str) -> None:
        """Remove an upload entirely (its group was deleted on the server)."""
        with self._lock:
            self._db.execute("DELETE FROM upload WHERE group_id = ?", (group_id,))
