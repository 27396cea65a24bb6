"""wider study text: annotation.study_id and accession_number up to 64 characters

Revision ID: 0005_wider_study_text
Revises: 0004_group_seg
Create Date: 2026-11-30 18:25:00

DICOM gives StudyID and AccessionNumber (VR SH) 16 characters, but real PACS send longer ones. They are
optional and descriptive (never used to find or order anything) and are copied into the DICOM SEG, whose
study attributes must equal the source study's: truncating them would make the SEG disagree with its
study, refusing them would block annotating a real series. So the value is kept as it is, up to 64
characters (the LO length); longer is still refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_wider_study_text"
down_revision = "0004_group_seg"
branch_labels = None
depends_on = None

COLUMNS = ("study_id", "accession_number")


def upgrade() -> None:
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.alter_column(
                name, existing_type=sa.String(length=16), type_=sa.String(length=64), existing_nullable=True
            )


def downgrade() -> None:
    # A value longer than 16 characters is cut to 16: the only way back to the narrower column.
    for name in COLUMNS:
        cut = f"UPDATE annotation SET {name} = SUBSTR({name}, 1, 16) WHERE LENGTH({name}) > 16"  # noqa: S608
        op.execute(sa.text(cut))  # (name: one of the constant COLUMNS)
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.alter_column(
                name, existing_type=sa.String(length=64), type_=sa.String(length=16), existing_nullable=True
            )
