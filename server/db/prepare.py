"""What every command that opens the database does first: migrate SQLite, check PostgreSQL.

Used by ``pacs-mask-server serve`` and ``create-token`` (``server.cli``) and by the jobs
(``server.jobs.cli``); a failure is printed and ends the process with exit code 3.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite database; refuse to serve a PostgreSQL one that is behind.

    SQLite: a database behind this version's head revision is backed up next to itself first and
    restored if a migration fails (``server.db.backup``); the failure is the last thing this process
    prints, so the desktop app, which shows the tail of its server's output, tells the user.
    A clinic's PostgreSQL is migrated on purpose (``pacs-mask-server migrate``) by whoever runs the
    upgrade, never implicitly by one of several workers starting up.
    """
    from server.db.backup import MigrationFailed, sqlite_file, upgrade_with_backup
    from server.db.migrate import current_revision, head_revision, upgrade

    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        if sqlite_file(url) is None:  # in memory: nothing to keep
            upgrade(url)
            return
        try:
            upgrade_with_backup(url)
        except MigrationFailed as exc:
            print(f"pacs-mask-server: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        return
    current, head = current_revision(url), head_revision()
    if current != head:
        print(
            f"pacs-mask-server: the database is at revision {current or 'none'} but this server needs {head}; "
            "run 'pacs-mask-server migrate' first.",
            file=sys.stderr,
        )
        raise SystemExit(3)
