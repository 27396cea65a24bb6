"""SQLAlchemy models: annotations, mask groups, mask slices, audit log and API tokens.

Table and column names follow the seed's task list (``annotation_mask_group``, ``annotation_mask``).
The models are only for the server; API request/response shapes live in ``server.api.schemas``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
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

    groups: Mapped[list[MaskGroup]] = relationship(back_populates="annotation")


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
    label: Mapped[str | None] = mapped_column(String(256))
    checksum: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[MaskGroup] = relationship(back_populates="masks")


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
