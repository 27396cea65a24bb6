"""``/api/audit`` (reviewers, admins) and ``/api/tokens`` (admins)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import JSONBody, QueryParameter

from server.api.deps import CallDep
from server.api.openapi import raises
from server.api.params import IdQuery, text_path, text_query
from server.contract import messages
from server.errors import Conflict, NotFound
from server.security import require
from server.services import audit_log, tokens


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]  # noqa: RUF012

    @get(
        "/",
        guards=[require("reviewer")],
        sync_to_thread=True,
        opt=raises(NotFound),
        summary="Read the audit log",
    )
    def read(
        self,
        call: CallDep,
        annotation_id: IdQuery = None,
        group_id: Annotated[str | None, text_query(64)] = None,
        actor: Annotated[str | None, text_query(128)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 500,
    ) -> messages.AuditList:
        return audit_log.list_audit(
            call, annotation_id=annotation_id, group_id=group_id, actor=actor, limit=limit
        )


class TokenController(Controller):
    path = "/api/tokens"
    tags = ["tokens"]  # noqa: RUF012
    guards = [require("admin")]  # noqa: RUF012

    @post("/", sync_to_thread=True, opt=raises(Conflict), summary="Create an API token (shown once)")
    def create(self, call: CallDep, data: JSONBody[messages.TokenCreate]) -> messages.TokenOut:
        return tokens.create_token(call, data)

    @get("/", sync_to_thread=True, summary="List API tokens")
    def read(self, call: CallDep) -> messages.TokenList:
        return tokens.list_tokens(call)

    @delete("/{name:str}", sync_to_thread=True, status_code=200, summary="Revoke an API token")
    def revoke(self, call: CallDep, name: Annotated[str, text_path(128)]) -> messages.TokenOut:
        return tokens.revoke_token(call, name)
