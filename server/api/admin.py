"""``/api/audit`` (reviewers, admins) and ``/api/tokens`` (admins)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import Parameter

from server.api import schemas
from server.context import Call
from server.security import require
from server.services import audit_log, tokens


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]  # noqa: RUF012

    @get("/", guards=[require("reviewer")], sync_to_thread=True, summary="Read the audit log")
    def read(
        self,
        call: Call,
        annotation_id: int | None = None,
        group_id: str | None = None,
        actor: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 500,
    ) -> schemas.AuditList:
        return audit_log.list_audit(call, annotation_id=annotation_id, group_id=group_id, actor=actor, limit=limit)


class TokenController(Controller):
    path = "/api/tokens"
    tags = ["tokens"]  # noqa: RUF012
    guards = [require("admin")]  # noqa: RUF012

    @post("/", sync_to_thread=True, summary="Create an API token (shown once)")
    def create(self, call: Call, data: schemas.TokenCreate) -> schemas.TokenOut:
        return tokens.create_token(call, data)

    @get("/", sync_to_thread=True, summary="List API tokens")
    def read(self, call: Call) -> schemas.TokenList:
        return tokens.list_tokens(call)

    @delete("/{name:str}", sync_to_thread=True, status_code=200, summary="Revoke an API token")
    def revoke(self, call: Call, name: str) -> schemas.TokenOut:
        return tokens.revoke_token(call, name)
