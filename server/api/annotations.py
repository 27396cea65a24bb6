"""``/api/annotations``: the series that masks are drawn on."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import Parameter

from server.api import schemas
from server.context import Call
from server.security import require
from server.services import annotations as svc


class AnnotationController(Controller):
    path = "/api/annotations"
    tags = ["annotations"]  # noqa: RUF012

    @post("/", guards=[require("uploader")], sync_to_thread=True, summary="Create an annotation")
    def create(self, call: Call, data: schemas.AnnotationCreate) -> schemas.AnnotationOut:
        return svc.create_annotation(call, data)

    @get("/", guards=[require("uploader")], sync_to_thread=True, summary="Search annotations")
    def search(
        self,
        call: Call,
        search: Annotated[str | None, Parameter(max_length=200)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 200,
    ) -> schemas.AnnotationList:
        return svc.list_annotations(call, search, limit)

    @get("/{annotation_id:int}", guards=[require("uploader")], sync_to_thread=True, summary="One annotation")
    def read(self, call: Call, annotation_id: int) -> schemas.AnnotationOut:
        return svc.get_annotation(call, annotation_id)
