"""The fine-tuning job records: the intent before a paid job is created, then its id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Timestamps use UTCDateTime's storage type; its conversion to UTC is Python-side only.
    op.create_table(
        "ftp_fine_tuning_jobs",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("dataset_hash", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dagster_run_id", sa.Text),
        sa.CheckConstraint("status IN ('intent', 'created')", name="ck_ftp_fine_tuning_jobs_status"),
    )


def downgrade() -> None:
    op.drop_table("ftp_fine_tuning_jobs")
