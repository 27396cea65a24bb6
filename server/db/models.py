"""SQLAlchemy models: annotations, mask groups, mask slices, reviews, audit log and API tokens.

Table and column names follow the seed's task list (``annotation_mask_group``, ``annotation_mask``).
The models are only for the server; API request/response shapes live in ``server.contract.messages``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

GROUP_SOURCES = ("manual", "ai")
GROUP_STATUSES = ("pending", "complete", "deleting")
REVIEW_DECISIONS = ("approved", "rejected")
ROLES = ("uploader", "reviewer", "admin")


def utcnow() -> datetime:
    """Timezone-aware now in UTC; every timestamp in the database is UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations name constraints predictably."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}  # noqa: RUF012


def table_of(model: type[Base]) -> Table:
    """The Core :class:`Table` of a mapped class, for the Core inserts, updates and deletes the services
    use where ORM objects were measured slower. ``__table__`` is typed as any ``FromClause``; every
    model here maps one table, so anything else is a programming error."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to one table")
    return table


class Annotation(Base):
    """An annotation of one DICOM series in the PACS; mask groups hang off it."""

    __tablename__ = "annotation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(512))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The series' geometry (server.geometry); all NULL for annotations created before it was recorded.
    geometry_source: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    slice_count: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    pixel_spacing: Mapped[list[float] | None] = mapped_column(JSON)
    image_orientation_patient: Mapped[list[float] | None] = mapped_column(JSON)
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    spacing_between_slices: Mapped[float | None] = mapped_column(Float)
    patient_name: Mapped[str | None] = mapped_column(String(256))
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(16))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_id: Mapped[str | None] = mapped_column(String(64))  # SH 16 in DICOM; real PACS send longer
    accession_number: Mapped[str | None] = mapped_column(String(64))  # likewise (migration 0005)
    referring_physician_name: Mapped[str | None] = mapped_column(String(256))

    groups: Mapped[list[MaskGroup]] = relationship(back_populates="annotation")
    instances: Mapped[list[AnnotationInstance]] = relationship(
        order_by="AnnotationInstance.slice_index", passive_deletes=True
    )

    @property
    def has_geometry(self) -> bool:
        """True when the series' geometry was recorded (annotations made before issue 9 have none)."""
        return self.rows is not None


class AnnotationInstance(Base):
    """One slice of an annotation's series, at its slice index (0 = first position along the normal)."""

    __tablename__ = "annotation_instance"
    __table_args__ = (
        UniqueConstraint("annotation_id", "slice_index", name="uq_annotation_instance_slice"),
        CheckConstraint("slice_index >= 0", name="slice_index"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotation.id", ondelete="CASCADE"))
    slice_index: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    position_x: Mapped[float | None] = mapped_column(Float)
    position_y: Mapped[float | None] = mapped_column(Float)
    position_z: Mapped[float | None] = mapped_column(Float)
    frame_number: Mapped[int | None] = mapped_column(Integer)


class MaskGroup(Base):
    """One upload of masks for an annotation: a model/version (or a manual edit) and its slices."""

    __tablename__ = "annotation_mask_group"
    __table_args__ = (
        UniqueConstraint("annotation_id", "model_name", "version", name="uq_mask_group_model_version"),
        CheckConstraint("source IN ('manual', 'ai')", name="source"),
        CheckConstraint("status IN ('pending', 'complete', 'deleting')", name="status"),
        CheckConstraint(
            "review_status IS NULL OR review_status IN ('approved', 'rejected')", name="review_status"
        ),
        Index("ix_annotation_mask_group_status_created", "status", "created_at"),
        Index("ix_annotation_mask_group_status_completed", "status", "completed_at", "id"),  # review queue
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotation.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    expected_slices: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    review_status: Mapped[str | None] = mapped_column(String(16))
    review_comment: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    # The label table given at create (``{"1": {"name", "category", "type", "color"}}``); NULL = defaults.
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The DICOM SEG built from the complete group (server.services.seg): built once, then only read.
    seg_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    seg_series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    seg_storage_key: Mapped[str | None] = mapped_column(String(512))
    seg_size: Mapped[int | None] = mapped_column(BigInteger)
    seg_checksum: Mapped[str | None] = mapped_column(String(32))
    seg_created_at: Mapped[datetime | None] = mapped_column()
    seg_segments: Mapped[int | None] = mapped_column(Integer)
    seg_frames: Mapped[int | None] = mapped_column(Integer)
    # Where and when the SEG was stored in the PACS (STOW-RS), and the last failure to send it.
    sent_at: Mapped[datetime | None] = mapped_column()
    sent_to: Mapped[str | None] = mapped_column(String(512))
    send_error: Mapped[str | None] = mapped_column(String(1024))
    # Per label value ("1"): {"voxels", "volume_ml", "first_slice", "last_slice"}; NULL until computed
    # (server.services.compare, on first demand: a complete group never changes, so neither do these).
    volumes: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    annotation: Mapped[Annotation] = relationship(back_populates="groups")
    masks: Mapped[list[Mask]] = relationship(
        back_populates="group", order_by="Mask.slice_index", passive_deletes=True
    )


class Mask(Base):
    """One mask slice stored in object storage under ``storage_key``."""

    __tablename__ = "annotation_mask"
    __table_args__ = (
        UniqueConstraint("group_id", "filename", name="uq_annotation_mask_group_filename"),
        UniqueConstraint("group_id", "slice_index", name="uq_annotation_mask_group_slice"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    group_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("annotation_mask_group.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(128))
    storage_key: Mapped[str] = mapped_column(String(512))
    slice_index: Mapped[int] = mapped_column(Integer)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(1024))  # contract.messages.SLICE_LABEL_MAX
    checksum: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[MaskGroup] = relationship(back_populates="masks")


class SignedUpload(Base):
    """What one filename of a group was signed for: its size and MD5, and until when a URL is valid.

    The first signature fixes the bytes: while any URL for them may still be used, a signature for
    other bytes is refused, and ``complete`` refuses a group whose filenames were signed for other
    bytes than stored. Storage checks Content-MD5, so no URL can write anything else, even on a
    server that ignores the create-only ``If-None-Match: *`` (``rclone serve s3``).
    """

    __tablename__ = "annotation_mask_upload"

    group_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("annotation_mask_group.id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(String(128), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column()
    # Bumped when ``complete`` removes a stored object that differs from these bytes: a complete that
    # checked the objects before sees the change and refuses instead of registering a removed object.
    removals: Mapped[int] = mapped_column(Integer, default=0)


class Review(Base):
    """One QA decision on a group; every review is kept (the group's ``review_*`` columns hold the last)."""

    __tablename__ = "annotation_mask_review"
    __table_args__ = (
        CheckConstraint("decision IN ('approved', 'rejected')", name="decision"),
        Index("ix_annotation_mask_review_group", "group_id", "reviewed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    group_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("annotation_mask_group.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # True when an admin approved a group they uploaded themselves, saying so explicitly.
    override_four_eyes: Mapped[bool] = mapped_column(Boolean, default=False)


class Finding(Base):
    """A reviewer's remark on one slice of a group (``label`` ``None``: the whole slice), part of a review."""

    __tablename__ = "annotation_mask_finding"
    __table_args__ = (
        CheckConstraint("slice_index >= 0", name="slice_index"),
        CheckConstraint("label IS NULL OR (label >= 1 AND label <= 255)", name="label"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    review_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("annotation_mask_review.id", ondelete="CASCADE"),
        index=True,
    )
    slice_index: Mapped[int] = mapped_column(Integer)
    label: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text)


class Comparison(Base):
    """The cached per-slice comparison of two complete groups (``group_a`` < ``group_b`` as text).

    ``slices``: ``{"12": {"1": [voxels_a, voxels_b, overlap]}}`` for every slice where either has a mask.
    """

    __tablename__ = "annotation_mask_comparison"

    group_a: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("annotation_mask_group.id", ondelete="CASCADE"), primary_key=True
    )
    group_b: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("annotation_mask_group.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    slices: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    """Who did what, when, to which annotation and group. Rows outlive the groups they name."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_annotation", "annotation_id", "at"),
        Index("ix_audit_log_group", "group_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64))
    annotation_id: Mapped[int | None] = mapped_column(Integer)
    group_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    client_address: Mapped[str | None] = mapped_column(String(64))


class ApiToken(Base):
    """An API user: a name, a role and the SHA-256 of its bearer token (the token itself is never stored)."""

    __tablename__ = "api_token"
    __table_args__ = (CheckConstraint("role IN ('uploader', 'reviewer', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
