"""signed uploads: the size and MD5 each filename of a group was signed for, and until when

Revision ID: 0003_signed_uploads
Revises: 0002_series_geometry
Create Date: 2026-11-30 17:20:00

A filename's bytes are fixed by its first signature while any URL for them may be valid, so no URL can
ever write other bytes to a group, even on an S3 server that ignores ``If-None-Match: *``. Groups
signed before this revision have no rows; their URLs expire within the configured TTL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_signed_uploads"
down_revision = "0002_series_geometry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "annotation_mask_upload",
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removals", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["annotation_mask_group.id"],
            name=op.f("fk_annotation_mask_upload_group_id_annotation_mask_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "filename", name=op.f("pk_annotation_mask_upload")),
    )


def downgrade() -> None:
    op.drop_table("annotation_mask_upload")
