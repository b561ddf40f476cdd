"""The experiments table (ours; the agent reads it).

The table lives beside the posts, so the agent can read which experiment runs for a task. The
A/B outcomes are read from the posts by :mod:`ftp_assets.adapters.posts_db`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ftp_assets.adapters.posts_db import UTCDateTime, table_ddl

RUNNING, PROMOTED, REJECTED, SUPERSEDED = "running", "promoted", "rejected", "superseded"

_metadata = sa.MetaData()
experiments = sa.Table(
    "ftp_experiments",
    _metadata,
    sa.Column("experiment_id", sa.Text, primary_key=True),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("champion_model", sa.Text, nullable=False),
    sa.Column("challenger_model", sa.Text, nullable=False),
    sa.Column("challenger_share", sa.Float, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("registry_version", sa.Text),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("decision", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("statistics", sa.Text),  # JSON of the deciding analysis
    sa.CheckConstraint("challenger_share > 0 AND challenger_share < 1", name="ck_ftp_experiments_share"),
    # At most one running experiment per task: the agent must never see two.
    sa.Index(
        "ux_ftp_experiments_running_task",
        "task",
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    ),
)


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    task: str
    champion_model: str
    challenger_model: str
    challenger_share: float
    started_at: datetime
    status: str
    registry_version: str | None
    decision: str | None = None
    reason: str | None = None


def _experiment(row) -> Experiment:
    fields = row._asdict()
    return Experiment(**{name: fields[name] for name in Experiment.__dataclass_fields__})


class ExperimentStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def init_schema(self) -> None:
        _metadata.create_all(self.engine, checkfirst=True)

    def schema_sql(self) -> str:
        return table_ddl(experiments, self.engine)

    def running(self, task: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(experiments).where(experiments.c.task == task, experiments.c.status == RUNNING)
            ).first()
        return _experiment(row) if row else None

    def get(self, experiment_id: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == experiment_id)).first()
        return _experiment(row) if row else None

    def start(
        self,
        *,
        task: str,
        champion_model: str,
        challenger_model: str,
        challenger_share: float,
        started_at: datetime,
        registry_version: str | None,
    ) -> Experiment:
        """Start an experiment, closing the task's running one as superseded in the same
        transaction. Starting the same challenger again returns the running experiment."""
        current = self.running(task)
        if current and current.challenger_model == challenger_model and current.champion_model == champion_model:
            return current
        experiment_id = f"{task}-{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        with self.engine.begin() as conn:
            conn.execute(
                experiments.update()
                .where(experiments.c.task == task, experiments.c.status == RUNNING)
                .values(status=SUPERSEDED, decided_at=started_at, reason=f"superseded by {experiment_id}")
            )
            conn.execute(
                experiments.insert().values(
                    experiment_id=experiment_id,
                    task=task,
                    champion_model=champion_model,
                    challenger_model=challenger_model,
                    challenger_share=challenger_share,
                    started_at=started_at,
                    status=RUNNING,
                    registry_version=registry_version,
                )
            )
        return self.running(task)

    def finish(self, experiment_id: str, *, decision: str, reason: str, statistics: dict, decided_at: datetime) -> bool:
        """Record a final decision; False when the experiment was no longer running."""
        status = PROMOTED if decision == "promote" else REJECTED
        with self.engine.begin() as conn:
            updated = conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id, experiments.c.status == RUNNING)
                .values(
                    status=status,
                    decision=decision,
                    reason=reason,
                    decided_at=decided_at,
                    statistics=json.dumps(statistics, default=str),
                )
            ).rowcount
        return bool(updated)
