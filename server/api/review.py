"""``/api/review``: the QA review queue (reviews themselves are ``POST /api/mask-group/{id}/review``)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import QueryParameter

from server.api.deps import CallDep
from server.api.openapi import raises
from server.api.params import IdQuery, text_query
from server.contract import messages
from server.errors import Unprocessable
from server.security import require
from server.services import review as svc
from server.services.review import QUEUE_MAX_LIMIT


class ReviewController(Controller):
    path = "/api/review"
    tags = ["review"]  # noqa: RUF012

    @get(
        "/queue",
        guards=[require("reviewer")],
        sync_to_thread=True,
        opt=raises(Unprocessable),
        summary="Complete groups waiting for review, oldest first",
    )
    def queue(
        self,
        call: CallDep,
        limit: Annotated[int, QueryParameter(ge=1, le=QUEUE_MAX_LIMIT)] = 50,
        cursor: Annotated[str | None, text_query(512)] = None,
        model_name: Annotated[str | None, text_query(128)] = None,
        version: Annotated[str | None, text_query(64)] = None,
        source: Annotated[str | None, QueryParameter(pattern=r"^(manual|ai)$")] = None,
        created_by: Annotated[str | None, text_query(128)] = None,
        annotation_id: IdQuery = None,
    ) -> messages.ReviewQueue:
        return svc.review_queue(
            call,
            limit=limit,
            cursor=cursor,
            model_name=model_name,
            version=version,
            source=source,
            created_by=created_by,
            annotation_id=annotation_id,
        )
