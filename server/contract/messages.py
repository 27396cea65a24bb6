"""Request and response bodies of the API (msgspec structs, kept apart from the ORM models).

The one definition of the JSON on the wire: the server's routes (``server/api/``) read and answer
these structs, its services build them, and the desktop client's ``pacs_mask_desktop.core.api_client``
decodes the answers into them and builds its requests from them.
Request structs forbid unknown fields (a typo is a 400, not silently dropped); response structs accept
them, so an older client keeps working against a newer server that added a field.

Every bound here matches the database column the value lands in, so a value the database could not
hold is refused with a 422 before any query runs: integers of ``Integer`` columns are 0..2**31-1
(:data:`server.contract.naming.INT32_MAX`), text fits its ``String(n)`` and is :func:`safe_text` (no control
characters: PostgreSQL cannot store NUL at all). Query and path parameters use the same definitions
(``server/api/params.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from server.contract.groups import MAX_SLICES, MODEL_NAME_MAX, VERSION_MAX, Source
from server.contract.naming import INT32_MAX, PNG_CONTENT_TYPE

INT64_MAX = 2**63 - 1
"""The largest value of a ``BigInteger`` column (sizes in bytes)."""
SAFE_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$(?!\n)"
"""One line of text with no control character (C0 or DEL). ``(?!\n)``: Python's ``$`` also matches
before a final line feed (msgspec validates with Python's ``re``; JSON Schema's ``$`` does not)."""
SAFE_MULTILINE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Like :data:`SAFE_TEXT_PATTERN`, but tab, line feed and carriage return are allowed (free text)."""

DICOM_TEXT_PATTERN = r"^[^\x00-\x1f\x7f\\]*$(?!\n)"
"""Like :data:`SAFE_TEXT_PATTERN`, and no backslash: text copied into a DICOM SEG (segment labels, code
values and meanings), where ``\\`` separates the values of a multi-valued element and would make it invalid."""


def dicom_text(max_length: int, *, min_length: int = 0) -> msgspec.Meta:
    """:func:`safe_text` for a value written into a DICOM object: no backslash either."""
    return msgspec.Meta(min_length=min_length, max_length=max_length, pattern=DICOM_TEXT_PATTERN)


def safe_text(max_length: int, *, min_length: int = 0, multiline: bool = False) -> msgspec.Meta:
    """The constraints of a text value stored in a ``String(max_length)`` (or ``Text``) column.

    The one definition of "text the server can store": at most ``max_length`` characters and no
    control characters (PostgreSQL cannot store NUL; none of the others belongs in a name, label or
    filter). ``multiline`` allows tab and line breaks, for free-text comments and descriptions.
    Use as ``Annotated[str, safe_text(64)]``.
    """
    return msgspec.Meta(
        min_length=min_length,
        max_length=max_length,
        pattern=SAFE_MULTILINE_PATTERN if multiline else SAFE_TEXT_PATTERN,
    )


SLICE_LABEL_MAX = 1024
"""Longest ``label`` of a slice at complete. Clients write the label values present, comma-separated: all
255 of them take 911 characters ("1,2,…,255"); a whole-body model (TotalSegmentator has 117 classes) can
put dozens on one slice. 256 refused a slice with about 70 three-digit labels after every byte had landed."""

Uid = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[0-9.]+$")]
Md5Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
Id = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
"""An id of an ``Integer`` primary key (annotations)."""
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
ByteCount = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]


class ErrorBody(msgspec.Struct):
    """Every error answer of the API (``server.errors``): a code to act on, a sentence, and details."""

    error: str
    message: str
    details: dict[str, Any]


class AnnotationCreate(msgspec.Struct, forbid_unknown_fields=True):
    study_instance_uid: Uid
    series_instance_uid: Uid
    patient_id: Annotated[str, safe_text(64)] | None = None
    description: Annotated[str, safe_text(512, multiline=True)] | None = None
    series: SeriesGeometry | None = None
    """The series' geometry read by the client from a folder; its UIDs must be the two above."""


class AnnotationOut(msgspec.Struct):
    id: int
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    description: str | None
    created_by: str
    created_at: datetime
    group_count: int = 0
    has_geometry: bool = False
    rows: int | None = None
    columns: int | None = None
    slice_count: int | None = None
    modality: str | None = None


class AnnotationList(msgspec.Struct):
    items: list[AnnotationOut]


class CodedConcept(msgspec.Struct, forbid_unknown_fields=True):
    """A coded term (DICOM Code Sequence item): e.g. SNOMED CT ``{"code": "10200004", "scheme": "SCT",
    "meaning": "Liver"}``. Bounds: CodeValue up to 64 (long SNOMED codes), designator SH 16, meaning LO 64."""

    code: Annotated[str, dicom_text(64, min_length=1)]
    scheme: Annotated[str, dicom_text(16, min_length=1)]
    meaning: Annotated[str, dicom_text(64, min_length=1)]


ColorByte = Annotated[int, msgspec.Meta(ge=0, le=255)]
LabelNumber = Annotated[str, msgspec.Meta(pattern=r"^(?:[1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$")]
"""A mask label value 1..255, as a JSON object key (``"1"``)."""


class LabelInfo(msgspec.Struct, forbid_unknown_fields=True):
    """What one label value of a group's masks is: the SEG segment's label, category, type and colour."""

    name: Annotated[str, dicom_text(64, min_length=1)]
    category: CodedConcept | None = None
    type: CodedConcept | None = None
    color: Annotated[list[ColorByte], msgspec.Meta(min_length=3, max_length=3)] | None = None
    """RGB 0..255."""


Labels = Annotated[dict[LabelNumber, LabelInfo], msgspec.Meta(min_length=1, max_length=255)]


class GroupCreate(msgspec.Struct, forbid_unknown_fields=True):
    annotation_id: Id
    model_name: Annotated[str, safe_text(MODEL_NAME_MAX, min_length=1)]
    version: Annotated[str, safe_text(VERSION_MAX, min_length=1)]
    source: Source
    expected_slices: Annotated[int, msgspec.Meta(ge=1, le=MAX_SLICES)] | None = None
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    params: dict[str, Any] | None = None
    labels: Labels | None = None
    """Names, codes and colours of the label values, for DICOM SEG; absent: "Label N", Tissue, a palette."""


class SegOut(msgspec.Struct):
    """The DICOM SEG built from a complete group (``POST /api/mask-group/{id}/seg``)."""

    sop_instance_uid: str
    series_instance_uid: str
    size: int
    checksum: str
    """MD5 (hex) of the stored file."""
    created_at: datetime
    segments: int
    frames: int


class SendOut(msgspec.Struct):
    """Where the SEG was stored (``POST /api/mask-group/{id}/send``)."""

    sop_instance_uid: str
    sent_at: datetime
    pacs_url: str
    retract_from_pacs: str | None = None
    """Set when the group was rejected while (or after) its SEG was sent: it is in the PACS, retract it there."""


class LabelVolume(msgspec.Struct):
    """One label value of a complete group: its voxels, volume and the slices it spans."""

    voxels: int
    volume_ml: float | None
    """voxels x row spacing x column spacing x slice spacing / 1000; ``None`` without stored geometry."""
    first_slice: int
    last_slice: int


class FindingOut(msgspec.Struct):
    slice_index: int
    label: int | None
    """``None``: the finding is about the whole slice."""
    comment: str


class ReviewOut(msgspec.Struct):
    """One review in a group's history."""

    decision: str
    comment: str | None
    reviewed_by: str
    reviewed_at: datetime
    override_four_eyes: bool
    """An admin approved a group they uploaded themselves, saying so explicitly."""
    findings: list[FindingOut]


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
    labels: dict[str, LabelInfo] | None = None
    seg: SegOut | None = None
    sent_at: datetime | None = None
    sent_to: str | None = None
    send_error: str | None = None
    """The last failure to send the SEG to the PACS (cleared by a successful send)."""
    retract_from_pacs: str | None = None
    """Set when the group is rejected but its SEG was already sent: it is in the PACS, retract it there."""
    volumes: dict[str, LabelVolume] | None = None
    """Per label value (``"1"``), once computed (``None`` until then; see ``server.services.compare``)."""
    findings: list[FindingOut] = msgspec.field(default_factory=list)
    """The findings of the current review."""
    reviews: list[ReviewOut] = msgspec.field(default_factory=list)
    """Every review of the group, oldest first."""


class GroupList(msgspec.Struct):
    items: list[GroupOut]


class QueueItem(GroupOut):
    """A group waiting for review, with what a reviewer needs to pick it: the annotation's patient."""

    patient_id: str | None = None
    patient_name: str | None = None
    annotation_description: str | None = None


class ReviewQueue(msgspec.Struct):
    items: list[QueueItem]
    next_cursor: str | None
    """Pass back as ``cursor`` for the next page; ``None`` on the last page."""


class LabelComparison(msgspec.Struct):
    """Two groups compared on one label value (or, in ``totals``, on all labels together)."""

    dice: float | None
    """2|A∩B| / (|A| + |B|); ``None`` when both are empty."""
    voxels_a: int
    voxels_b: int
    volume_a_ml: float | None
    volume_b_ml: float | None
    volume_diff_ml: float | None
    """b − a."""


class SliceLabelComparison(msgspec.Struct):
    dice: float | None
    voxels_a: int
    voxels_b: int


class SliceComparison(msgspec.Struct):
    slice_index: int
    dice: float | None
    labels: dict[str, SliceLabelComparison]


class Comparison(msgspec.Struct):
    """``GET /api/mask-group/{a}/compare/{b}``: per label, in total and per slice where either has a mask."""

    a: str
    b: str
    labels: dict[str, LabelComparison]
    totals: LabelComparison
    slices: list[SliceComparison]


class SliceToSign(msgspec.Struct, forbid_unknown_fields=True):
    # filename, content_md5 and content_type are checked by the service (every bad slice listed at once,
    # before anything else happens): server.contract.naming's rules are stricter than safe_text.
    filename: str
    size: ByteCount
    content_md5: str
    content_type: str = PNG_CONTENT_TYPE
    slice_index: NonNegative | None = None
    """Optional: the slice this file is for; refused before signing when outside the series."""


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
    filename: str  # checked by server.contract.naming's rules before anything else (invalid_slices)
    slice_index: NonNegative
    width: Positive
    height: Positive
    checksum: Md5Hex
    label: Annotated[str, safe_text(SLICE_LABEL_MAX)] | None = None
    sop_instance_uid: Uid | None = None
    size: ByteCount | None = None


class CompleteRequest(msgspec.Struct, forbid_unknown_fields=True):
    slices: Annotated[list[SliceToComplete], msgspec.Meta(min_length=1, max_length=MAX_SLICES)]


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


MAX_FINDINGS = 1000
"""Findings in one review."""


class FindingIn(msgspec.Struct, forbid_unknown_fields=True):
    """A reviewer's remark on one slice; the slice and label are checked against the group by the service."""

    slice_index: NonNegative
    label: Annotated[int, msgspec.Meta(ge=1, le=255)] | None = None
    """A label value 1..255, or ``None`` for the whole slice."""
    comment: Annotated[str, safe_text(2000, multiline=True)] = ""


Decision = Literal["approved", "rejected"]
"""A reviewer's decision on a complete group."""


class ReviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    decision: Decision
    comment: Annotated[str, safe_text(4000, multiline=True)] = ""
    findings: Annotated[list[FindingIn], msgspec.Meta(max_length=MAX_FINDINGS)] = msgspec.field(
        default_factory=list
    )
    override_four_eyes: bool = False
    """An admin approving a group they uploaded themselves must say so (audited)."""


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


# --- Series geometry (issue 9). Bounds match the columns of ``annotation`` / ``annotation_instance``. ---

DicomShortText = Annotated[str, safe_text(16)]
"""DA, TM, SH and CS values (DICOM allows 8-16 characters; 16 leaves room for legacy dates)."""
DicomStudyText = Annotated[str, safe_text(64)]
"""StudyID and AccessionNumber: SH (16) in DICOM, but real PACS send longer. Optional and descriptive, and
copied into the SEG (whose study attributes must match the study's), so kept whole up to 64 characters
rather than truncated or refused (columns widened by migration 0005)."""
DicomLongText = Annotated[str, safe_text(64)]
"""LO values (PatientID)."""
PersonName = Annotated[str, safe_text(256)]
"""PN values: up to three component groups of 64 characters."""
Millimetres = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]
Spacing = Annotated[float, msgspec.Meta(gt=0.0, le=1e4)]
Cosine = Annotated[float, msgspec.Meta(ge=-1.0001, le=1.0001)]
Orientation = Annotated[list[Cosine], msgspec.Meta(min_length=6, max_length=6)]
Position = Annotated[list[Millimetres], msgspec.Meta(min_length=3, max_length=3)]
ImageSide = Annotated[int, msgspec.Meta(ge=1, le=65535)]
MAX_SERIES_INSTANCES = 100_000


class SeriesInstance(msgspec.Struct, forbid_unknown_fields=True):
    """One slice of a series: an instance, or one frame (1-based ``frame_number``) of a multi-frame one.

    ``image_orientation_patient``, ``rows`` and ``columns`` are optional per-slice checks a client may
    send so the server can refuse mixed planes and sizes; they are not stored (the series has one).
    """

    slice_index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SERIES_INSTANCES)]
    sop_instance_uid: Uid
    sop_class_uid: Uid | None = None
    instance_number: Annotated[int, msgspec.Meta(ge=-(2**31), lt=2**31)] | None = None
    image_position_patient: Position | None = None
    frame_number: Annotated[int, msgspec.Meta(ge=1, le=MAX_SERIES_INSTANCES)] | None = None
    image_orientation_patient: Orientation | None = None
    rows: ImageSide | None = None
    columns: ImageSide | None = None


class SeriesGeometry(msgspec.Struct, forbid_unknown_fields=True):
    """What an annotation knows of its series: size, orientation, slices in order, patient/study.

    Slice index 0 is the first position along the slice normal (row cosines x column cosines).
    """

    series_instance_uid: Uid
    study_instance_uid: Uid
    rows: ImageSide
    columns: ImageSide
    instances: Annotated[list[SeriesInstance], msgspec.Meta(min_length=1, max_length=MAX_SERIES_INSTANCES)]
    source: Literal["pacs", "folder"] = "folder"
    frame_of_reference_uid: Uid | None = None
    modality: DicomShortText | None = None
    pixel_spacing: Annotated[list[Spacing], msgspec.Meta(min_length=2, max_length=2)] | None = None
    image_orientation_patient: Orientation | None = None
    slice_thickness: Annotated[float, msgspec.Meta(ge=0.0, le=1e4)] | None = None
    spacing_between_slices: Annotated[float, msgspec.Meta(ge=-1e4, le=1e4)] | None = None
    patient_id: DicomLongText | None = None
    patient_name: PersonName | None = None
    patient_birth_date: DicomShortText | None = None
    patient_sex: DicomShortText | None = None
    study_date: DicomShortText | None = None
    study_time: DicomShortText | None = None
    study_id: DicomStudyText | None = None
    accession_number: DicomStudyText | None = None
    referring_physician_name: PersonName | None = None


# --- DICOMweb (issue 9): the PACS as a source. ---


class AnnotationFromPacs(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /api/annotations/from-pacs``: the server reads the series' headers from its PACS itself."""

    series_instance_uid: Uid
    study_instance_uid: Uid | None = None
    description: Annotated[str, safe_text(512, multiline=True)] | None = None


class ClientConfig(msgspec.Struct):
    """``GET /api/config``: what a client needs to know about this server (never a secret)."""

    dicomweb_url: str | None
    version: str
    send_unreviewed: bool = False
    """``PACS_MASK_SEND_UNREVIEWED``: groups may be sent to the PACS before they are approved."""
    user: str = ""
    """The caller's token name (who the server records as uploader and reviewer)."""
    role: str = ""
    """The caller's role: the desktop offers the four-eyes override only to an admin."""
