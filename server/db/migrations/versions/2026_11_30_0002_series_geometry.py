"""series geometry: each annotation records its series (size, orientation, patient/study, slices)

Revision ID: 0002_series_geometry
Revises: 0001
Create Date: 2026-11-30 17:10:00

Older annotations keep NULL geometry columns and no instances: they keep working, marked
``has_geometry: false`` in the API.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_series_geometry"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    ("geometry_source", sa.String(length=16)),
    ("rows", sa.Integer()),
    ("columns", sa.Integer()),
    ("slice_count", sa.Integer()),
    ("modality", sa.String(length=16)),
    ("frame_of_reference_uid", sa.String(length=64)),
    ("pixel_spacing", sa.JSON()),
    ("image_orientation_patient", sa.JSON()),
    ("slice_thickness", sa.Float()),
    ("spacing_between_slices", sa.Float()),
    ("patient_name", sa.String(length=256)),
    ("patient_birth_date", sa.String(length=16)),
    ("patient_sex", sa.String(length=16)),
    ("study_date", sa.String(length=16)),
    ("study_time", sa.String(length=16)),
    ("study_id", sa.String(length=16)),
    ("accession_number", sa.String(length=16)),
    ("referring_physician_name", sa.String(length=256)),
)


def upgrade() -> None:
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))

    op.create_table(
        "annotation_instance",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("slice_index", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("position_x", sa.Float(), nullable=True),
        sa.Column("position_y", sa.Float(), nullable=True),
        sa.Column("position_z", sa.Float(), nullable=True),
        sa.Column("frame_number", sa.Integer(), nullable=True),
        sa.CheckConstraint("slice_index >= 0", name=op.f("ck_annotation_instance_slice_index")),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotation.id"],
            name=op.f("fk_annotation_instance_annotation_id_annotation"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_instance")),
        sa.UniqueConstraint("annotation_id", "slice_index", name="uq_annotation_instance_slice"),
    )


def downgrade() -> None:
    op.drop_table("annotation_instance")
    with op.batch_alter_table("annotation", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
