"""wider slice label: annotation_mask.label up to 1024 characters

Revision ID: 0007_wider_slice_label
Revises: 0006_review_findings
Create Date: 2026-11-30 23:05:00

A slice's ``label`` lists the label values present on it, comma-separated ("1,5,12"). 256 characters
held about 70 three-digit values: a whole-body segmentation (TotalSegmentator's 117 classes, ribs and
vertebrae on one axial slice) could exceed it, and such a group was refused at ``complete`` after every
slice had landed. All 255 values take 911 characters, so 1024 always fits.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_wider_slice_label"
down_revision = "0006_review_findings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_mask", schema=None) as batch_op:
        batch_op.alter_column(
            "label", existing_type=sa.String(length=256), type_=sa.String(length=1024), existing_nullable=True
        )


def downgrade() -> None:
    # A label list longer than 256 characters is cut to 256: the only way back to the narrower column.
    op.execute(sa.text("UPDATE annotation_mask SET label = SUBSTR(label, 1, 256) WHERE LENGTH(label) > 256"))
    with op.batch_alter_table("annotation_mask", schema=None) as batch_op:
        batch_op.alter_column(
            "label", existing_type=sa.String(length=1024), type_=sa.String(length=256), existing_nullable=True
        )
