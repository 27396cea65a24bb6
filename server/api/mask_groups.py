"""``/api/mask-group`` and ``/api/mask``: the seed's paths, exactly as written.

``GET /api/mask-group/{annotation_id}`` and ``DELETE /api/mask-group/{group_id}`` share one path
template; the router needs one parameter type there, so both take a string and the services parse it.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from server.api.deps import CallDep
from server.api.openapi import raises
from server.api.params import SliceIndexQuery, text_query
from server.contract import messages
from server.contract.groups import LARGE_BODY_MAX_BYTES
from server.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PacsFailed,
    StorageUnavailable,
    Unprocessable,
)
from server.security import require
from server.services import compare as compare_svc
from server.services import mask_groups as svc
from server.services import review as review_svc
from server.services import seg as seg_svc
from server.services import seg_send


class MaskGroupController(Controller):
    path = "/api/mask-group"
    tags = ["mask groups"]  # noqa: RUF012

    # ``raises``: the domain errors of each service, for the API document (server/api/openapi.py says
    # which statuses every route gets from its kind).
    @post(
        "/",
        guards=[require("uploader")],
        sync_to_thread=True,
        opt=raises(NotFound, Conflict),
        summary="Create a pending mask group",
    )
    def create(self, call: CallDep, data: JSONBody[messages.GroupCreate]) -> messages.GroupOut:
        return svc.create_group(call, data)

    @post(
        "/{group_id:str}/signed-url",
        guards=[require("uploader")],
        sync_to_thread=True,
        status_code=200,
        opt=raises(Forbidden, Conflict),
        summary="Signed PUT URLs for a batch of slices",
    )
    def sign(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[messages.SignRequest]
    ) -> messages.SignResponse:
        return svc.sign_urls(call, group_id, data)

    @post(
        "/{group_id:str}/complete",
        guards=[require("uploader")],
        sync_to_thread=True,
        request_max_body_size=LARGE_BODY_MAX_BYTES,
        status_code=200,
        opt=raises(Forbidden, Conflict, StorageUnavailable),
        summary="Verify the uploaded slices and register them",
    )
    def complete(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[messages.CompleteRequest]
    ) -> messages.GroupOut:
        return svc.complete_group(call, group_id, data)

    @get(
        "/{annotation_id:str}",
        guards=[require("uploader")],
        sync_to_thread=True,
        opt=raises(Unprocessable),
        summary="Groups of an annotation",
    )
    def list_for_annotation(self, call: CallDep, annotation_id: FromPath[str]) -> messages.GroupList:
        return svc.list_groups(call, annotation_id)

    @get(
        "/{group_id:str}/view",
        guards=[require("uploader")],
        sync_to_thread=True,
        media_type="image/png",
        opt=raises(Conflict, StorageUnavailable),
        summary="Stream one slice",
    )
    def view(
        self,
        call: CallDep,
        group_id: FromPath[str],
        filename: Annotated[str | None, text_query(128)] = None,
        slice_index: SliceIndexQuery = None,
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
        opt=raises(Conflict, Forbidden, Unprocessable),
        summary="Approve or reject a complete group, with per-slice findings",
    )
    def review(
        self, call: CallDep, group_id: FromPath[str], data: JSONBody[messages.ReviewRequest]
    ) -> messages.GroupOut:
        return review_svc.review_group(call, group_id, data)

    @get(
        "/{group_id:str}/compare/{other_id:str}",
        guards=[require("uploader")],
        sync_to_thread=True,
        opt=raises(Conflict, Unprocessable, StorageUnavailable),
        summary="Compare two complete groups of one annotation: Dice, voxels and volumes",
    )
    def compare(self, call: CallDep, group_id: FromPath[str], other_id: FromPath[str]) -> messages.Comparison:
        return compare_svc.compare_groups(call, group_id, other_id)

    @post(
        "/{group_id:str}/seg",
        guards=[require("uploader")],
        sync_to_thread=True,
        status_code=200,
        opt=raises(Conflict, Unprocessable, StorageUnavailable),
        summary="Build the group's DICOM SEG (once) and return its metadata",
    )
    def build_seg(self, call: CallDep, group_id: FromPath[str]) -> messages.SegOut:
        return seg_svc.build_seg(call, group_id)

    @get(
        "/{group_id:str}/seg",
        guards=[require("uploader")],
        sync_to_thread=True,
        media_type="application/dicom",
        opt=raises(Conflict, StorageUnavailable),
        summary="Download the group's DICOM SEG",
    )
    def download_seg(self, call: CallDep, group_id: FromPath[str]) -> Stream:
        seg = seg_svc.open_seg(call, group_id)
        return Stream(
            seg.chunks,
            media_type="application/dicom",
            headers={
                "Content-Length": str(seg.size),
                "ETag": f'"{seg.checksum}"',
                "Content-Disposition": f'attachment; filename="{seg.filename}"',
                "Cache-Control": "private, no-store",
            },
        )

    @post(
        "/{group_id:str}/send",
        guards=[require("uploader")],
        sync_to_thread=True,
        status_code=200,
        opt=raises(Conflict, Unprocessable, StorageUnavailable, PacsFailed),
        summary="Store the group's DICOM SEG in the PACS (STOW-RS), once",
    )
    def send_seg(self, call: CallDep, group_id: FromPath[str]) -> messages.SendOut:
        return seg_send.send_seg(call, group_id)

    @delete(
        "/{group_id:str}",
        guards=[require("admin")],
        sync_to_thread=True,
        status_code=200,
        opt=raises(StorageUnavailable),
        summary="Delete a group",
    )
    def remove(self, call: CallDep, group_id: FromPath[str]) -> Response[messages.DeleteResult]:
        return Response(svc.delete_group(call, group_id))


class MaskController(Controller):
    path = "/api/mask"
    tags = ["mask groups"]  # noqa: RUF012

    @get("/{group_id:str}", guards=[require("uploader")], sync_to_thread=True, summary="Slices of a group")
    def list_slices(self, call: CallDep, group_id: FromPath[str]) -> messages.MaskList:
        compare_svc.ensure_volumes(call, group_id)  # first opening of a complete group: its label volumes
        return svc.list_masks(call, group_id)
