"""group labels and DICOM SEG: each group's label table, its SEG once built, and where it was sent

Revision ID: 0004_group_seg
Revises: 0003_signed_uploads
Create Date: 2026-11-30 17:45:00

``labels`` is the label table given at create (NULL: the default names, codes and colours). The ``seg_*``
columns record the DICOM Segmentation built from a complete group (built once, stored under the group's
prefix); ``sent_*`` where and when it was stored in the PACS, ``send_error`` the last failure to send.
Older groups keep NULLs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_group_seg"
down_revision = "0003_signed_uploads"
branch_labels = None
depends_on = None

COLUMNS = (
    ("labels", sa.JSON()),
    ("seg_sop_instance_uid", sa.String(length=64)),
    ("seg_series_instance_uid", sa.String(length=64)),
    ("seg_storage_key", sa.String(length=512)),
    ("seg_size", sa.BigInteger()),
    ("seg_checksum", sa.String(length=32)),
    ("seg_created_at", sa.DateTime(timezone=True)),
    ("seg_segments", sa.Integer()),
    ("seg_frames", sa.Integer()),
    ("sent_at", sa.DateTime(timezone=True)),
    ("sent_to", sa.String(length=512)),
    ("send_error", sa.String(length=1024)),
)


def upgrade() -> None:
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
