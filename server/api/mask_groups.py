"""``/api/mask-group`` and ``/api/mask``: the seed's paths, exactly as written.

``GET /api/mask-group/{annotation_id}`` and ``DELETE /api/mask-group/{group_id}`` share one path
template; the router needs one parameter type there, so both take a string and the services parse it.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from server.api import schemas
from server.api.deps import CallDep
from server.security import require
from server.services import mask_groups as svc


class MaskGroupController(Controller):
    path = "/api/mask-group"
    tags = ["mask groups"]  # noqa: RUF012

    @post("/", guards=[require("uploader")], sync_to_thread=True, summary="Create a pending mask group")
    def create(self, call: CallDep, data: JSONBody[schemas.GroupCreate]) -> schemas.GroupOut:
        return svc.create_group(call, data)

    @post(
        "/{group_id:str}/signed-url",
        guards=[require("uploader")],
        sync_to_thread=True,
        status_code=200,
        summary="Signed PUT URLs for a batch of slices",
    )
    def sign(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[schemas.SignRequest]
    ) -> schemas.SignResponse:
        return svc.sign_urls(call, group_id, data)

    @post(
        "/{group_id:str}/complete",
        guards=[require("uploader")],
        sync_to_thread=True,
        status_code=200,
        summary="Verify the uploaded slices and register them",
    )
    def complete(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[schemas.CompleteRequest]
    ) -> schemas.GroupOut:
        return svc.complete_group(call, group_id, data)

    @get(
        "/{annotation_id:str}",
        guards=[require("uploader")],
        sync_to_thread=True,
        summary="Groups of an annotation",
    )
    def list_for_annotation(self, call: CallDep, annotation_id: FromPath[str]) -> schemas.GroupList:
        return svc.list_groups(call, annotation_id)

    @get(
        "/{group_id:str}/view", guards=[require("uploader")], sync_to_thread=True, summary="Stream one slice"
    )
    def view(
        self,
        call: CallDep,
        group_id: FromPath[str],
        filename: Annotated[str | None, QueryParameter(max_length=128)] = None,
        slice_index: Annotated[int | None, QueryParameter(ge=0)] = None,
    ) -> Stream:
        viewed = svc.view_slice(call, group_id, filename, slice_index)
        return Stream(
            viewed.chunks,
            media_type=viewed.content_type,
            headers={
                "Content-Length": str(viewed.size),
                "ETag": f'"{viewed.checksum}"',
                "Content-Disposition": f'inline; filename="{viewed.filename}"',
                "Cache-Control": "private, max-age=3600, immutable",
            },
        )

    @post(
        "/{group_id:str}/review",
        guards=[require("reviewer")],
        sync_to_thread=True,
        status_code=200,
        summary="Approve or reject a complete group",
    )
    def review(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[schemas.ReviewRequest]
    ) -> schemas.GroupOut:
        return svc.review_group(call, group_id, data)

    @delete(
        "/{group_id:str}",
        guards=[require("admin")],
        sync_to_thread=True,
        status_code=200,
        summary="Delete a group",
    )
    def remove(self, call: CallDep, group_id: FromPath[str]) -> Response[schemas.DeleteResult]:
        return Response(svc.delete_group(call, group_id))


class MaskController(Controller):
    path = "/api/mask"
    tags = ["mask groups"]  # noqa: RUF012

    @get("/{group_id:str}", guards=[require("uploader")], sync_to_thread=True, summary="Slices of a group")
    def list_slices(self, call: CallDep, group_id: FromPath[str]) -> schemas.MaskList:
        return svc.list_masks(call, group_id)
