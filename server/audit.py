"""The audit trail: one row per mutation and per view, written in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from server.context import Call
from server.db.models import AuditLog


def record(
    session: Session,
    call: Call,
    action: str,
    *,
    annotation_id: int | None = None,
    group_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an audit row to ``session``; it commits or rolls back with the change it describes."""
    session.add(
        AuditLog(
            actor=call.actor.name,
            action=action,
            annotation_id=annotation_id,
            group_id=group_id,
            detail=detail,
            client_address=call.client_address,
        )
    )
