"""API tokens, roles and the authentication middleware.

Tokens are 32 random bytes (URL-safe base64) and are stored only as their SHA-256: a fast hash is
right for high-entropy random secrets (no dictionary to attack), and it keeps the lookup to one indexed
query.

The authentication hook runs on the event loop, so it never queries the database there: a token it has
not seen lately is looked up in a worker thread, and a found token is remembered for
``PACS_MASK_AUTH_CACHE_SECONDS`` (default 5 s, at most ``AUTH_CACHE_SIZE`` tokens; 0 turns the cache
off). A revoked token therefore stops working at once on the worker process that revoked it and within
that many seconds on every other worker. Unknown tokens are never remembered: a token created a moment
ago works at once. Before, every API call waited on one database round-trip on the event loop;
measured with ``benchmarks/server_load.py`` (2 workers, PostgreSQL; README, "Measurements"): cheap
authenticated reads went from a median of 127 to 223 requests/s, their p50 from 65 to 38 ms.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
from cachetools import TTLCache
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from sqlalchemy import select

from server.contract.errors import ErrorCode
from server.db.models import ROLES, ApiToken
from server.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from litestar.handlers.base import BaseRouteHandler

    from server.db.session import Database

ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
AUTH_CACHE_SIZE = 4096
"""Most tokens remembered at once (the least recently used go first); a clinic has a few dozen."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: the token's name and role."""

    name: str
    role: str

    def has(self, role: str) -> bool:
        """True when this actor's role is ``role`` or above (uploader < reviewer < admin)."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def new_token() -> str:
    """A fresh bearer token: 43 URL-safe characters of randomness, never starting with ``-``.

    Tokens are typed and pasted on command lines (``pacs-mask --token …``), where a value starting with
    ``-`` reads as an option ("argument --token: expected one argument"); one token in 64 would.
    """
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def lookup_actor(db: Database, token: str) -> Actor | None:
    """The actor owning ``token``, or ``None`` when it is unknown or revoked (one query, blocking)."""
    return _lookup_hash(db, hash_token(token))


def _lookup_hash(db: Database, token_hash: str) -> Actor | None:
    with db.session() as session:
        row = session.execute(
            select(ApiToken.name, ApiToken.role).where(
                ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
            )
        ).first()
    return Actor(name=row.name, role=row.role) if row else None


class TokenCache:
    """Valid tokens seen lately: token hash -> actor, each kept at most ``ttl`` seconds.

    Bounded in time (``ttl``) and size (``maxsize``, least recently used evicted). Only found tokens
    are kept. Thread-safe: the event loop reads and fills it, a revoking request (in a worker thread)
    drops entries.
    """

    def __init__(
        self, ttl: float = 5.0, maxsize: int = AUTH_CACHE_SIZE, timer: Callable[[], float] | None = None
    ) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: TTLCache[str, Actor] | None = None
        if ttl > 0:
            self._entries = TTLCache(maxsize, ttl, timer) if timer else TTLCache(maxsize, ttl)

    def get(self, token_hash: str) -> Actor | None:
        """The remembered actor of ``token_hash``, or ``None`` when unknown here or expired."""
        if self._entries is None:
            return None
        with self._lock:
            return self._entries.get(token_hash)

    def put(self, token_hash: str, actor: Actor) -> None:
        """Remember a token just found valid in the database."""
        if self._entries is not None:
            with self._lock:
                self._entries[token_hash] = actor

    def forget(self, name: str) -> None:
        """Drop every remembered token of the user ``name`` (it was revoked in this process)."""
        if self._entries is not None:
            with self._lock:
                for key in [k for k, actor in self._entries.items() if actor.name == name]:
                    self._entries.pop(key, None)

    def __len__(self) -> int:
        if self._entries is None:
            return 0
        with self._lock:
            return len(self._entries)


async def authenticate(db: Database, cache: TokenCache, token: str) -> Actor | None:
    """The actor owning ``token``: from ``cache``, else looked up in a worker thread (never on the loop)."""
    token_hash = hash_token(token)
    actor = cache.get(token_hash)
    if actor is None:
        actor = await anyio.to_thread.run_sync(_lookup_hash, db, token_hash)
        if actor is not None:
            cache.put(token_hash, actor)
    return actor


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
                code=ErrorCode.MISSING_TOKEN,
            )
        parts = connection.app.state.parts
        actor = await authenticate(parts.db, parts.tokens, token.strip())
        if actor is None:
            metrics.failure("auth")
            raise Unauthorized("The API token is unknown or has been revoked.", code=ErrorCode.INVALID_TOKEN)
        return AuthenticationResult(user=actor, auth=None)


@dataclass(frozen=True, slots=True)
class RoleGuard:
    """A Litestar guard allowing ``role`` and the roles above it.

    A class rather than a closure so the API document can tell which routes need a token and which
    can answer 403 (``server/api/openapi.py``).
    """

    role: str

    def __call__(self, connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
        actor: Actor = connection.user
        if not actor.has(self.role):
            connection.app.state.parts.metrics.failure("auth")
            raise Forbidden(
                f"This call needs the {self.role} role; the token '{actor.name}' has the {actor.role} role.",
                details={"required_role": self.role, "role": actor.role},
            )


def require(role: str) -> RoleGuard:
    """A Litestar guard allowing ``role`` and the roles above it (uploader < reviewer < admin)."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")
    return RoleGuard(role)
