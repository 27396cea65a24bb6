"""``POST /api/admin/validate``: the validation job, run on demand by an admin through the API.

POST because it does real work (it streams and hashes every object in scope); it changes nothing.
A whole-store run reads every byte and can outlast a reverse proxy's timeout: pass ``group_id`` to
check one group, and leave full runs to ``pacs-mask-server validate`` on a schedule.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import post

from server import audit
from server.api.deps import CallDep
from server.api.openapi import raises
from server.api.params import text_query
from server.errors import NotFound, StorageUnavailable
from server.jobs.validate import validate
from server.security import require
from server.services.mask_groups import parse_group_id
from server.storage.base import StorageError


@post(
    "/api/admin/validate",
    guards=[require("admin")],
    sync_to_thread=True,
    status_code=200,
    opt=raises(NotFound, StorageUnavailable),
    tags=["admin"],
    summary="Run the validation job and return its report",
)
def run_validation(call: CallDep, group_id: Annotated[str | None, text_query(64)] = None) -> dict[str, Any]:
    """The report of ``pacs-mask-server validate --json``; ``ok`` is false when something is wrong."""
    gid = parse_group_id(group_id) if group_id else None
    try:
        report = validate(call.db, call.storage, call.settings, group_id=gid, actor=call.actor.name)
    except StorageError as exc:
        raise StorageUnavailable(f"Storage could not be read; nothing was validated: {exc}") from exc
    with call.db.session() as session:
        audit.record(
            session,
            call,
            "job.validate",
            group_id=gid,
            detail={"ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings)},
        )
    return report.to_dict()
