"""Baseline: the experiments table exactly as ``create_all`` made it before migrations.

Databases that already hold that table are stamped at this revision rather than migrated
(``ExperimentStore.init_schema``), so this must stay what ``create_all`` produced.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Timestamps use UTCDateTime's storage type; its conversion to UTC is Python-side only.
    op.create_table(
        "ftp_experiments",
        sa.Column("experiment_id", sa.Text, primary_key=True),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("champion_model", sa.Text, nullable=False),
        sa.Column("challenger_model", sa.Text, nullable=False),
        sa.Column("challenger_share", sa.Float, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("registry_version", sa.Text),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("decision", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("statistics", sa.Text),
        sa.CheckConstraint("challenger_share > 0 AND challenger_share < 1", name="ck_ftp_experiments_share"),
    )
    # At most one running experiment per task: the agent must never see two.
    op.create_index(
        "ux_ftp_experiments_running_task",
        "ftp_experiments",
        ["task"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ux_ftp_experiments_running_task", table_name="ftp_experiments")
    op.drop_table("ftp_experiments")
