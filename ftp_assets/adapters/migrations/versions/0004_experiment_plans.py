"""Planned experiments: each experiment's plan and traffic phases, and the record of its looks.

Rows from before this revision keep ``plan`` and ``phases`` NULL: they started before plans
existed and finish under the old always-valid rule.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns are added in place by PostgreSQL and SQLite alike; existing rows read NULL.
    op.add_column("ftp_experiments", sa.Column("plan", sa.Text))  # JSON of the ExperimentPlan
    op.add_column("ftp_experiments", sa.Column("phases", sa.Text))  # JSON list of the phases
    # Timestamps use UTCDateTime's storage type; its conversion to UTC is Python-side only.
    op.create_table(
        "ftp_experiment_looks",
        sa.Column(
            "experiment_id",
            sa.Text,
            sa.ForeignKey("ftp_experiments.experiment_id", name="fk_ftp_experiment_looks_experiment"),
            nullable=False,
        ),
        sa.Column("look_number", sa.Integer, nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_until", sa.DateTime(timezone=True)),
        sa.Column("challenger_share", sa.Float, nullable=False),
        sa.Column("information", sa.Float),
        sa.Column("information_fraction", sa.Float),
        sa.Column("statistic", sa.Float),
        sa.Column("boundary", sa.Float),
        sa.Column("alpha_spent", sa.Float),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("analysis", sa.Text),
        sa.PrimaryKeyConstraint("experiment_id", "look_number", name="pk_ftp_experiment_looks"),
        sa.UniqueConstraint("experiment_id", "evaluated_at", name="uq_ftp_experiment_looks_evaluated_at"),
    )


def downgrade() -> None:
    op.drop_table("ftp_experiment_looks")
    with op.batch_alter_table("ftp_experiments") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("phases")
        batch.drop_column("plan")
