"""What a request's service call needs: the app's shared parts and who is calling."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.db.session import Database
from server.metrics import Metrics
from server.security import Actor, TokenCache
from server.settings import Settings
from server.storage.base import Storage


@dataclass(slots=True)
class AppParts:
    """Created once by ``create_app`` and shared by every request."""

    settings: Settings
    db: Database
    storage: Storage
    metrics: Metrics
    tokens: TokenCache = field(default_factory=TokenCache)
    """Valid tokens seen lately (server/security.py: how long a revoked one may still pass)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated call: the shared parts, the actor and the client's address (for the audit log)."""

    parts: AppParts
    actor: Actor
    client_address: str | None

    @property
    def db(self) -> Database:
        return self.parts.db

    @property
    def storage(self) -> Storage:
        return self.parts.storage

    @property
    def settings(self) -> Settings:
        return self.parts.settings

    @property
    def metrics(self) -> Metrics:
        return self.parts.metrics
