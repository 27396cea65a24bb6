"""review history, per-slice findings, label volumes and cached comparisons (issue 14)

Revision ID: 0006_review_findings
Revises: 0005_wider_study_text
Create Date: 2026-11-30 19:45:00

``annotation_mask_review`` keeps every review of a group (the group's ``review_*`` columns stay the
current decision); ``annotation_mask_finding`` the per-slice findings of a review (``label`` NULL: the
whole slice). Groups reviewed before this revision get one history row copied from their columns.
``volumes`` on the group is its per-label voxel count, volume in mL and slice extent, computed on first
demand (NULL until then). ``annotation_mask_comparison`` caches the per-slice, per-label voxel counts and
overlaps of a pair of groups (groups are immutable once complete, so it never goes stale).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_review_findings"
down_revision = "0005_wider_study_text"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        batch_op.add_column(sa.Column("volumes", sa.JSON(), nullable=True))
        batch_op.create_index(
            "ix_annotation_mask_group_status_completed", ["status", "completed_at", "id"], unique=False
        )

    op.create_table(
        "annotation_mask_review",
        sa.Column("id", _ID, nullable=False),
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=128), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("override_four_eyes", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "decision IN ('approved', 'rejected')", name=op.f("ck_annotation_mask_review_decision")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["annotation_mask_group.id"],
            name=op.f("fk_annotation_mask_review_group_id_annotation_mask_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_mask_review")),
    )
    op.create_index("ix_annotation_mask_review_group", "annotation_mask_review", ["group_id", "reviewed_at"])

    op.create_table(
        "annotation_mask_finding",
        sa.Column("id", _ID, nullable=False),
        sa.Column("review_id", _ID, nullable=False),
        sa.Column("slice_index", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.CheckConstraint("slice_index >= 0", name=op.f("ck_annotation_mask_finding_slice_index")),
        sa.CheckConstraint(
            "label IS NULL OR (label >= 1 AND label <= 255)", name=op.f("ck_annotation_mask_finding_label")
        ),
        sa.ForeignKeyConstraint(
            ["review_id"],
            ["annotation_mask_review.id"],
            name=op.f("fk_annotation_mask_finding_review_id_annotation_mask_review"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_mask_finding")),
    )
    op.create_index(
        "ix_annotation_mask_finding_review_id", "annotation_mask_finding", ["review_id"], unique=False
    )

    op.create_table(
        "annotation_mask_comparison",
        sa.Column("group_a", sa.Uuid(), nullable=False),
        sa.Column("group_b", sa.Uuid(), nullable=False),
        sa.Column("slices", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_a"],
            ["annotation_mask_group.id"],
            name=op.f("fk_annotation_mask_comparison_group_a_annotation_mask_group"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_b"],
            ["annotation_mask_group.id"],
            name=op.f("fk_annotation_mask_comparison_group_b_annotation_mask_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_a", "group_b", name=op.f("pk_annotation_mask_comparison")),
    )
    op.create_index(
        "ix_annotation_mask_comparison_group_b", "annotation_mask_comparison", ["group_b"], unique=False
    )

    # The current decision of groups reviewed before this revision becomes their first history row.
    op.execute(
        "INSERT INTO annotation_mask_review "
        "(group_id, decision, comment, reviewed_by, reviewed_at, override_four_eyes) "
        "SELECT id, review_status, review_comment, COALESCE(reviewed_by, 'unknown'), "
        "COALESCE(reviewed_at, completed_at, created_at), false "
        "FROM annotation_mask_group WHERE review_status IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_annotation_mask_comparison_group_b", table_name="annotation_mask_comparison")
    op.drop_table("annotation_mask_comparison")
    op.drop_index("ix_annotation_mask_finding_review_id", table_name="annotation_mask_finding")
    op.drop_table("annotation_mask_finding")
    op.drop_index("ix_annotation_mask_review_group", table_name="annotation_mask_review")
    op.drop_table("annotation_mask_review")
    with op.batch_alter_table("annotation_mask_group", schema=None) as batch_op:
        batch_op.drop_index("ix_annotation_mask_group_status_completed")
        batch_op.drop_column("volumes")
