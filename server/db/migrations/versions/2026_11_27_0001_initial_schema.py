"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 03:25:19.326579
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "annotation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("description", sa.String(length=512), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation")),
    )
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_annotation_series_instance_uid"), ["series_instance_uid"], unique=False
        )

    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('uploader', 'reviewer', 'admin')", name=op.f("ck_api_token_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("name", name=op.f("uq_api_token_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Uuid(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_actor"), ["actor"], unique=False)
        batch_op.create_index("ix_audit_log_annotation", ["annotation_id", "at"], unique=False)
        batch_op.create_index("ix_audit_log_group", ["group_id", "at"], unique=False)

    op.create_table(
        "annotation_mask_group",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expected_slices", sa.Integer(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_status", sa.String(length=16), nullable=True),
        sa.Column("review_comment", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=128), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "review_status IS NULL OR review_status IN ('approved', 'rejected')",
            name=op.f("ck_annotation_mask_group_review_status"),
        ),
        sa.CheckConstraint("source IN ('manual', 'ai')", name=op.f("ck_annotation_mask_group_source")),
        sa.CheckConstraint(
            "status IN ('pending', 'complete', 'deleting')", name=op.f("ck_annotation_mask_group_status")
        ),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotation.id"],
            name=op.f("fk_annotation_mask_group_annotation_id_annotation"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_mask_group")),
        sa.UniqueConstraint("annotation_id", "model_name", "version", name="uq_mask_group_model_version"),
    )
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_annotation_mask_group_annotation_id"), ["annotation_id"], unique=False
        )
        batch_op.create_index(
            "ix_annotation_mask_group_status_created", ["status", "created_at"], unique=False
        )

    op.create_table(
        "annotation_mask",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("slice_index", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["annotation_mask_group.id"],
            name=op.f("fk_annotation_mask_group_id_annotation_mask_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_mask")),
        sa.UniqueConstraint("group_id", "filename", name="uq_annotation_mask_group_filename"),
        sa.UniqueConstraint("group_id", "slice_index", name="uq_annotation_mask_group_slice"),
    )


def downgrade() -> None:
    op.drop_table("annotation_mask")
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        batch_op.drop_index("ix_annotation_mask_group_status_created")
        batch_op.drop_index(batch_op.f("ix_annotation_mask_group_annotation_id"))

    op.drop_table("annotation_mask_group")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_group")
        batch_op.drop_index("ix_audit_log_annotation")
        batch_op.drop_index(batch_op.f("ix_audit_log_actor"))

    op.drop_table("audit_log")
    op.drop_table("api_token")
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annotation_series_instance_uid"))

    op.drop_table("annotation")
