"""API users and tokens: create, list, revoke; plus the embedded default's local admin token."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server import audit
from server.context import Call
from server.contract import messages
from server.contract.errors import ErrorCode
from server.db.models import ApiToken, utcnow
from server.db.session import Database
from server.errors import Conflict, NotFound
from server.private_files import FILE_MODE, private_folder
from server.security import hash_token, lookup_actor, new_token
from server.services.serialize import utc

LOCAL_ADMIN_NAME = "local-admin"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def issue_token(db: Database, name: str, role: str) -> str:
    """Create a user ``name`` with ``role`` and return its token (shown once, stored hashed)."""
    token = new_token()
    try:
        with db.session() as session:
            session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    except IntegrityError:
        raise Conflict(f"A token named '{name}' already exists.", code=ErrorCode.DUPLICATE_TOKEN) from None
    return token


def create_token(call: Call, data: messages.TokenCreate) -> messages.TokenOut:
    """API: create a token; audited (the token itself is never logged)."""
    token = issue_token(call.db, data.name, data.role)
    with call.db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == data.name))
        assert row is not None
        audit.record(session, call, "token.create", detail={"name": data.name, "role": data.role})
        return messages.TokenOut(
            name=row.name,
            role=row.role,
            created_at=utc(row.created_at),
            revoked_at=None,
            token=token,
        )


def list_tokens(call: Call) -> messages.TokenList:
    """API: every token's name, role and state (never the token)."""
    with call.db.session() as session:
        rows = session.scalars(select(ApiToken).order_by(ApiToken.name)).all()
        return messages.TokenList(
            items=[
                messages.TokenOut(
                    name=r.name,
                    role=r.role,
                    created_at=utc(r.created_at),
                    revoked_at=utc(r.revoked_at),
                )
                for r in rows
            ]
        )


def revoke_token(call: Call, name: str) -> messages.TokenOut:
    """API: revoke a token by name; audited."""
    with call.db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise NotFound(f"There is no token named '{name}'.", code=ErrorCode.TOKEN_NOT_FOUND)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        audit.record(session, call, "token.revoke", detail={"name": name})
        session.flush()
        out = messages.TokenOut(
            name=row.name,
            role=row.role,
            created_at=utc(row.created_at),
            revoked_at=utc(row.revoked_at),
        )
    # After the commit, so no request can cache the token again from the old row: here at once, on
    # other worker processes within auth_cache_seconds (server/security.py).
    call.parts.tokens.forget(name)
    return out


def ensure_local_admin_token(db: Database, data_dir: Path) -> Path:
    """Make sure ``data_dir/admin.token`` holds a working admin token for the desktop app.

    Used by the embedded default only. The file is created with owner-only permissions; a token in
    it that the database does not know (e.g. a deleted database) is replaced.
    """
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token and lookup_actor(db, token) is not None:
            return path
    token = new_token()
    with db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == LOCAL_ADMIN_NAME))
        if row is None:
            session.add(ApiToken(name=LOCAL_ADMIN_NAME, role="admin", token_hash=hash_token(token)))
        else:
            row.token_hash = hash_token(token)
            row.revoked_at = None
    private_folder(data_dir, parents=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)
    return path
