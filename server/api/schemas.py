"""Request and response shapes of the API (msgspec structs, kept apart from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Md5Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class AnnotationCreate(msgspec.Struct, forbid_unknown_fields=True):
    study_instance_uid: Uid
    series_instance_uid: Uid
    patient_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class AnnotationOut(msgspec.Struct):
    id: int
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    description: str | None
    created_by: str
    created_at: datetime
    group_count: int = 0


class AnnotationList(msgspec.Struct):
    items: list[AnnotationOut]


class GroupCreate(msgspec.Struct, forbid_unknown_fields=True):
    annotation_id: int
    model_name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
    source: Literal["manual", "ai"]
    expected_slices: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    params: dict[str, Any] | None = None


class GroupOut(msgspec.Struct):
    id: str
    annotation_id: int
    model_name: str
    version: str
    source: str
    status: str
    expected_slices: int | None
    confidence: float | None
    params: dict[str, Any] | None
    created_by: str
    created_at: datetime
    completed_at: datetime | None
    slice_count: int
    review_status: str | None
    review_comment: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None


class GroupList(msgspec.Struct):
    items: list[GroupOut]


class SliceToSign(msgspec.Struct, forbid_unknown_fields=True):
    filename: str
    size: NonNegative
    content_md5: str
    content_type: str = "image/png"


class SignRequest(msgspec.Struct, forbid_unknown_fields=True):
    slices: Annotated[list[SliceToSign], msgspec.Meta(min_length=1, max_length=5000)]


class SignedUrl(msgspec.Struct):
    filename: str
    key: str
    url: str
    method: str
    headers: dict[str, str]
    expires_at: datetime


class SignResponse(msgspec.Struct):
    urls: list[SignedUrl]


class SliceToComplete(msgspec.Struct, forbid_unknown_fields=True):
    filename: str
    slice_index: NonNegative
    width: Positive
    height: Positive
    checksum: Md5Hex
    label: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    sop_instance_uid: Uid | None = None
    size: NonNegative | None = None


class CompleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    slices: Annotated[list[SliceToComplete], msgspec.Meta(min_length=1, max_length=100_000)]


class MaskOut(msgspec.Struct):
    id: int
    filename: str
    storage_key: str
    slice_index: int
    sop_instance_uid: str | None
    width: int
    height: int
    label: str | None
    checksum: str
    size_bytes: int
    content_type: str
    created_at: datetime


class MaskList(msgspec.Struct):
    group: GroupOut
    items: list[MaskOut]


class ReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    decision: Literal["approved", "rejected"]
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""


class DeleteResult(msgspec.Struct):
    id: str
    deleted_objects: int
    deleted_slices: int


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    action: str
    annotation_id: int | None
    group_id: str | None
    detail: dict[str, Any] | None
    client_address: str | None


class AuditList(msgspec.Struct):
    items: list[AuditOut]


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]
    role: Literal["uploader", "reviewer", "admin"]


class TokenOut(msgspec.Struct):
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    token: str | None = None


class TokenList(msgspec.Struct):
    items: list[TokenOut]


class Health(msgspec.Struct):
    status: Literal["ok", "degraded"]
    database: str
    storage: str
    version: str
