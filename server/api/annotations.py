"""``/api/annotations``: the series that masks are drawn on."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import JSONBody, QueryParameter

from server.api.deps import CallDep
from server.api.openapi import raises
from server.api.params import IdPath, text_query
from server.contract import messages
from server.contract.groups import LARGE_BODY_MAX_BYTES
from server.errors import PacsFailed
from server.security import require
from server.services import annotations as svc
from server.services import pacs_annotations


class AnnotationController(Controller):
    path = "/api/annotations"
    tags = ["annotations"]  # noqa: RUF012

    @post(
        "/",
        guards=[require("uploader")],
        sync_to_thread=True,
        request_max_body_size=LARGE_BODY_MAX_BYTES,  # a series of up to MAX_SERIES_INSTANCES slices
        summary="Create an annotation",
    )
    def create(self, call: CallDep, data: JSONBody[messages.AnnotationCreate]) -> messages.AnnotationOut:
        return svc.create_annotation(call, data)

    @post(
        "/from-pacs",
        guards=[require("uploader")],
        sync_to_thread=True,
        opt=raises(PacsFailed),
        summary="Create an annotation from a PACS series (the server reads its headers over DICOMweb)",
    )
    def create_from_pacs(
        self, call: CallDep, data: JSONBody[messages.AnnotationFromPacs]
    ) -> messages.AnnotationOut:
        return pacs_annotations.create_from_pacs(call, data)

    @get("/", guards=[require("uploader")], sync_to_thread=True, summary="Search annotations")
    def search(
        self,
        call: CallDep,
        search: Annotated[str | None, text_query(200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 200,
    ) -> messages.AnnotationList:
        return svc.list_annotations(call, search, limit)

    @get("/{annotation_id:int}", guards=[require("uploader")], sync_to_thread=True, summary="One annotation")
    def read(self, call: CallDep, annotation_id: IdPath) -> messages.AnnotationOut:
        return svc.get_annotation(call, annotation_id)

    @get(
        "/{annotation_id:int}/series",
        guards=[require("uploader")],
        sync_to_thread=True,
        summary="The annotation's series geometry (slice 0 = first position along the slice normal)",
    )
    def series(self, call: CallDep, annotation_id: IdPath) -> messages.SeriesGeometry:
        return svc.get_series(call, annotation_id)
