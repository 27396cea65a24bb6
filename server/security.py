"""API tokens, roles and the authentication middleware.

Tokens are 32 random bytes (URL-safe base64) and are stored only as their SHA-256: a fast hash is
right for high-entropy random secrets (no dictionary to attack), and it keeps the per-request lookup to
one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from sqlalchemy import select

from server.db.models import ROLES, ApiToken
from server.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from litestar.handlers.base import BaseRouteHandler

    from server.db.session import Database

ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the token's name and role."""

    name: str
    role: str

    def has(self, role: str) -> bool:
        """True when this actor's role is ``role`` or above (uploader < reviewer < admin)."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def new_token() -> str:
    """A fresh bearer token: 43 URL-safe characters of randomness."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def lookup_actor(db: Database, token: str) -> Actor | None:
    """The actor owning ``token``, or ``None`` when it is unknown or revoked."""
    with db.session() as session:
        row = session.execute(
            select(ApiToken.name, ApiToken.role).where(
                ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
            )
        ).first()
    return Actor(name=row.name, role=row.role) if row else None


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    """Require ``Authorization: Bearer <token>`` on every ``/api`` call."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        metrics = connection.app.state.parts.metrics
        if scheme.lower() != "bearer" or not token.strip():
            metrics.failure("auth")
            raise Unauthorized(
                "This call needs an API token: send 'Authorization: Bearer <token>'.",
                code="missing_token",
            )
        actor = lookup_actor(connection.app.state.parts.db, token.strip())
        if actor is None:
            metrics.failure("auth")
            raise Unauthorized("The API token is unknown or has been revoked.", code="invalid_token")
        return AuthenticationResult(user=actor, auth=None)


def require(role: str):  # type: ignore[no-untyped-def]
    """A Litestar guard allowing ``role`` and the roles above it."""

    def guard(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
        actor: Actor = connection.user
        if not actor.has(role):
            connection.app.state.parts.metrics.failure("auth")
            raise Forbidden(
                f"This call needs the {role} role; the token '{actor.name}' has the {actor.role} role.",
                details={"required_role": role, "role": actor.role},
            )

    return guard
