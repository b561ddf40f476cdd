"""The experiments table (ours; the agent reads it) and the A/B aggregate over the posts.

The table lives beside the posts, so the agent can read which experiment runs for a task. We
never write to the posts table: the aggregate reads it in a read-only transaction.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ftp_assets.domain.ab_stats import ArmStats
from ftp_assets.posts_db import PostsDatabase, SelectionRule, UTCDateTime, table_ddl

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
    sa.Index("ux_ftp_experiments_running_task", "task", unique=True,
             postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'")),  # fmt: skip
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


@dataclass(frozen=True)
class ArmOutcomes:
    control: ArmStats
    treatment: ArmStats
    data_until: datetime | None  # the newest post included
    excluded_impossible: int  # posts of either arm left out for impossible counts


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

    def start(self, *, task: str, champion_model: str, challenger_model: str, challenger_share: float,
              started_at: datetime, registry_version: str | None) -> Experiment:  # fmt: skip
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
            conn.execute(experiments.insert().values(
                experiment_id=experiment_id, task=task, champion_model=champion_model,
                challenger_model=challenger_model, challenger_share=challenger_share,
                started_at=started_at, status=RUNNING, registry_version=registry_version,
            ))  # fmt: skip
        return self.running(task)

    def finish(self, experiment_id: str, *, decision: str, reason: str, statistics: dict, decided_at: datetime) -> bool:
        """Record a final decision; False when the experiment was no longer running."""
        status = PROMOTED if decision == "promote" else REJECTED
        with self.engine.begin() as conn:
            updated = conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == experiment_id, experiments.c.status == RUNNING)
                .values(status=status, decision=decision, reason=reason, decided_at=decided_at,
                        statistics=json.dumps(statistics, default=str))  # fmt: skip
            ).rowcount
        return bool(updated)


def arm_outcomes(db: PostsDatabase, experiment: Experiment, *, matured_before: datetime,
                 rule: SelectionRule = SelectionRule()) -> ArmOutcomes:  # fmt: skip
    """Both arms' sufficient statistics in one aggregate query: posts written by either model
    since the start and older than the maturity cut-off (the same rule for both arms)."""
    t = db.table.c
    model = _model_column(db, experiment.task)
    possible = db.possible_counts(rule)
    x = sa.cast(t.engagements, sa.Float)
    y = sa.cast(t.impressions, sa.Float)

    def total(value):
        return sa.func.coalesce(sa.func.sum(sa.case((possible, value), else_=0.0)), 0.0)

    query = (
        sa.select(
            model.label("model"),
            sa.func.coalesce(sa.func.sum(sa.case((possible, 1), else_=0)), 0).label("n"),
            total(x).label("sum_x"), total(y).label("sum_y"), total(x * x).label("sum_x2"),
            total(y * y).label("sum_y2"), total(x * y).label("sum_xy"),
            sa.func.max(t.created_at).label("newest"),
            sa.func.coalesce(sa.func.sum(sa.case((possible, 0), else_=1)), 0).label("impossible"),
        )  # fmt: skip
        .where(model.in_([experiment.champion_model, experiment.challenger_model]))
        .where(t.created_at >= experiment.started_at, t.created_at < matured_before)
        .group_by(model)
    )
    with db.read_only() as conn:
        rows = {row.model: row for row in conn.execute(query)}

    def arm(model_id: str) -> ArmStats:
        row = rows.get(model_id)
        if row is None:
            return ArmStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return ArmStats(int(row.n), row.sum_x, row.sum_y, row.sum_x2, row.sum_y2, row.sum_xy)

    newest = [row.newest for row in rows.values() if row.newest is not None]
    return ArmOutcomes(
        control=arm(experiment.champion_model),
        treatment=arm(experiment.challenger_model),
        data_until=max(newest) if newest else None,
        excluded_impossible=sum(int(row.impossible) for row in rows.values()),
    )


def newest_matured_post(db: PostsDatabase, experiment: Experiment, *, matured_before: datetime) -> datetime | None:
    """The cheap question the experiment sensor asks each tick: one index lookup per arm."""
    t = db.table.c
    model = _model_column(db, experiment.task)
    query = sa.select(sa.func.max(t.created_at)).where(
        model.in_([experiment.champion_model, experiment.challenger_model]),
        t.created_at >= experiment.started_at, t.created_at < matured_before,
    )  # fmt: skip
    with db.read_only() as conn:
        return conn.execute(query).scalar()


def _model_column(db: PostsDatabase, task: str) -> sa.Column:
    """The column in which the agent records the model that wrote the task's text."""
    return db.table.c.hook_model if task == "hook" else db.table.c.body_model
