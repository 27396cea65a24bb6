"""``/api/annotations``: the series that masks are drawn on."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from server.api import schemas
from server.api.deps import CallDep
from server.security import require
from server.services import annotations as svc


class AnnotationController(Controller):
    path = "/api/annotations"
    tags = ["annotations"]  # noqa: RUF012

    @post("/", guards=[require("uploader")], sync_to_thread=True, summary="Create an annotation")
    def create(self, call: CallDep, data: JSONBody[schemas.AnnotationCreate]) -> schemas.AnnotationOut:
        return svc.create_annotation(call, data)

    @get("/", guards=[require("uploader")], sync_to_thread=True, summary="Search annotations")
    def search(
        self,
        call: CallDep,
        search: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 200,
    ) -> schemas.AnnotationList:
        return svc.list_annotations(call, search, limit)

    @get("/{annotation_id:int}", guards=[require("uploader")], sync_to_thread=True, summary="One annotation")
    def read(self, call: CallDep, annotation_id: FromPath[int]) -> schemas.AnnotationOut:
        return svc.get_annotation(call, annotation_id)
