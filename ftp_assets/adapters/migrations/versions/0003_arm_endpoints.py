"""Each arm's endpoint: where the agent calls the champion's and the challenger's model.

Rows from before this revision ran on the OpenAI path, so they take the built-in ``openai``
endpoint's name.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A NOT NULL column with a default is added in place by PostgreSQL and SQLite alike.
    op.add_column("ftp_experiments", sa.Column("champion_endpoint", sa.Text, nullable=False, server_default="openai"))
    op.add_column("ftp_experiments", sa.Column("challenger_endpoint", sa.Text, nullable=False, server_default="openai"))


def downgrade() -> None:
    with op.batch_alter_table("ftp_experiments") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("challenger_endpoint")
        batch.drop_column("champion_endpoint")
