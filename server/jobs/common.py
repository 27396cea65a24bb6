"""What the jobs share: the app parts built from settings, and the actor they act as in the audit log."""

from __future__ import annotations

from server.context import AppParts, Call
from server.db.session import Database
from server.metrics import Metrics
from server.security import Actor
from server.settings import Settings


def open_parts(settings: Settings) -> AppParts:
    """Database and storage for a job run outside the server (the CLI); close with :func:`close_parts`."""
    from server.storage import create_storage
    from server.storage.signing_key import DEFAULT_PUBLIC_URL, load_signing_key

    db = Database(settings.resolved_database_url)
    try:
        storage = create_storage(
            settings,
            public_url=settings.public_url or DEFAULT_PUBLIC_URL,
            signing_key=load_signing_key(settings),
        )
    except BaseException:
        db.close()
        raise
    return AppParts(settings=settings, db=db, storage=storage, metrics=Metrics())


def close_parts(parts: AppParts) -> None:
    """Release the storage client and the database pool."""
    parts.storage.close()
    parts.db.close()


def job_call(parts: AppParts, job: str) -> Call:
    """A call made by a job: the audit log names the actor ``job:<job>`` (an admin)."""
    return Call(parts=parts, actor=Actor(name=f"job:{job}", role="admin"), client_address=None)
