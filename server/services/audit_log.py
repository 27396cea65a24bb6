"""Reading the audit trail (reviewers and admins)."""

from __future__ import annotations

from sqlalchemy import select

from server.context import Call
from server.contract import messages
from server.db.models import AuditLog
from server.services.mask_groups import parse_group_id
from server.services.serialize import audit_out


def list_audit(
    call: Call, *, annotation_id: int | None, group_id: str | None, actor: str | None, limit: int
) -> messages.AuditList:
    """Audit rows matching every given filter, newest first."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if annotation_id is not None:
        query = query.where(AuditLog.annotation_id == annotation_id)
    if group_id:
        query = query.where(AuditLog.group_id == parse_group_id(group_id))
    if actor:
        query = query.where(AuditLog.actor == actor)
    with call.db.session() as session:
        return messages.AuditList(items=[audit_out(r) for r in session.scalars(query)])
