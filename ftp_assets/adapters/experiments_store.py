"""The experiments table (ours; the agent reads it).

The table lives beside the posts, so the agent can read which experiment runs for a task. The
A/B outcomes are read from the posts by :mod:`ftp_assets.adapters.posts_db`.

A planned experiment (revision 0004) also keeps its plan and traffic phases in its row, and each
evaluation of it is a look, recorded in ``ftp_experiment_looks``.

The tables are a contract with the agent's team, so they change only by the Alembic migrations in
``migrations/``; the ``experiments`` and ``experiment_looks`` Tables below are the query models and
must match them (a test compares the migrated schema with them).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from ftp_assets.adapters.posts_db import PostsDatabaseError, UTCDateTime, as_utc
from ftp_assets.domain.experiment_plan import (
    ExperimentPlan,
    LookData,
    Phase,
    phases_from_json,
    phases_to_json,
    ramped_phases,
)
from ftp_assets.domain.routing import Route, route

RUNNING, PROMOTED, REJECTED, SUPERSEDED = "running", "promoted", "rejected", "superseded"
# Closed by a rollback: its control arm was a champion no longer served.
CANCELLED = "cancelled"

# The endpoint of arms recorded before endpoints were (the OpenAI path), and the default.
DEFAULT_ENDPOINT = "openai"

# Shipped inside the package (pyproject.toml's package-data): no alembic.ini to find.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Not Alembic's default alembic_version: the agent's database may keep its own.
VERSION_TABLE = "ftp_alembic_version"
BASELINE_REVISION = "0001"
# The table of the job records (fine_tuning_jobs.py), created by revision 0002.
FINE_TUNING_JOBS_TABLE = "ftp_fine_tuning_jobs"
# The columns the table had when ``create_all`` made it, i.e. what the baseline revision creates.
# Frozen: a table holding them is stamped at the baseline; later columns come by migrations.
BASELINE_COLUMNS = (
    "experiment_id",
    "task",
    "champion_model",
    "challenger_model",
    "challenger_share",
    "started_at",
    "status",
    "registry_version",
    "decided_at",
    "decision",
    "reason",
    "statistics",
)
# PostgreSQL advisory lock taken by init_schema, so runs starting together migrate one at a time.
_MIGRATION_LOCK_KEY = int.from_bytes(b"ftp_migr", "big")
# Alembic's `context` and `op` are process-wide proxies: one migration command at a time per
# process (the code server evaluates sensors, which open the store, in threads).
_alembic_in_use = threading.Lock()

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
    # Where the agent calls each arm's model: a name of the endpoints file (revision 0003).
    sa.Column("champion_endpoint", sa.Text, nullable=False, server_default=DEFAULT_ENDPOINT),
    sa.Column("challenger_endpoint", sa.Text, nullable=False, server_default=DEFAULT_ENDPOINT),
    # Revision 0004. NULL in rows started before plans: they finish under the old always-valid rule.
    sa.Column("plan", sa.Text),  # JSON of the ExperimentPlan
    sa.Column("phases", sa.Text),  # JSON list of the traffic phases, the last one in force
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
# Each evaluation of a planned experiment (revision 0004): what it saw and what it decided, so the
# next look knows the alpha already spent and an audit can replay the decision.
experiment_looks = sa.Table(
    "ftp_experiment_looks",
    _metadata,
    sa.Column(
        "experiment_id",
        sa.Text,
        sa.ForeignKey(experiments.c.experiment_id, name="fk_ftp_experiment_looks_experiment"),
        nullable=False,
    ),
    sa.Column("look_number", sa.Integer, nullable=False),  # 1, 2, ... per experiment
    sa.Column("evaluated_at", UTCDateTime, nullable=False),
    sa.Column("data_until", UTCDateTime),
    sa.Column("challenger_share", sa.Float, nullable=False),  # the share in force at the look
    sa.Column("information", sa.Float),
    sa.Column("information_fraction", sa.Float),
    sa.Column("statistic", sa.Float),
    sa.Column("boundary", sa.Float),  # may be +infinity (no crossing possible at this look)
    sa.Column("alpha_spent", sa.Float),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON of the LookData
    sa.Column("analysis", sa.Text),  # JSON of the analysis summary
    sa.PrimaryKeyConstraint("experiment_id", "look_number", name="pk_ftp_experiment_looks"),
    # A re-run of one evaluation finds its look instead of adding another.
    sa.UniqueConstraint("experiment_id", "evaluated_at", name="uq_ftp_experiment_looks_evaluated_at"),
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
    champion_endpoint: str = DEFAULT_ENDPOINT
    challenger_endpoint: str = DEFAULT_ENDPOINT
    # None for experiments started before plans (revision 0004): the old always-valid rule decides.
    plan: ExperimentPlan | None = None
    phases: tuple[Phase, ...] | None = None

    def route(self, unit_id: str | int) -> Route:
        """The arm, model and endpoint that serve ``unit_id`` (the agent's call, reimplementable
        from ftp_assets/domain/routing.py's docstring)."""
        return route(
            self.experiment_id,
            unit_id,
            self.challenger_share,
            champion=(self.champion_model, self.champion_endpoint),
            challenger=(self.challenger_model, self.challenger_endpoint),
        )


def _experiment(row) -> Experiment:
    values = row._asdict()
    values = {name: values[name] for name in Experiment.__dataclass_fields__}
    values["plan"] = None if values["plan"] is None else ExperimentPlan.from_json(values["plan"])
    values["phases"] = None if values["phases"] is None else phases_from_json(values["phases"])
    return Experiment(**values)


def _experiment_row(experiment: Experiment) -> dict[str, Any]:
    """The experiment as the table's columns: the plan and phases as their JSON."""
    values = {field.name: getattr(experiment, field.name) for field in fields(Experiment)}
    values["plan"] = None if experiment.plan is None else experiment.plan.to_json()
    values["phases"] = None if experiment.phases is None else phases_to_json(experiment.phases)
    return values


@dataclass(frozen=True)
class ExperimentOutcome:
    """An experiment's status and moments, without its plan (the task's history)."""

    experiment_id: str
    status: str
    started_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True)
class LookRecord:
    """One recorded look of a planned experiment (a row of ``ftp_experiment_looks``)."""

    experiment_id: str
    look_number: int
    evaluated_at: datetime
    data_until: datetime | None
    challenger_share: float
    information: float | None
    information_fraction: float | None
    statistic: float | None
    boundary: float | None
    alpha_spent: float | None
    decision: str
    reason: str
    data: LookData
    analysis: dict[str, Any] | None


def _look(row) -> LookRecord:
    values = row._asdict()
    values = {name: values[name] for name in LookRecord.__dataclass_fields__}
    values["data"] = LookData.from_json(values["data"])
    values["analysis"] = None if values["analysis"] is None else json.loads(values["analysis"])
    return LookRecord(**values)


class ExperimentsSchemaError(PostsDatabaseError):
    """An experiments table the migrations cannot take over; the message says what is wrong."""


class ExperimentsLookError(PostsDatabaseError):
    """A look that cannot be recorded (the experiment is not running, or the look is out of order)."""


def migrations_config(
    *, connection: Connection | None = None, dialect_name: str | None = None, output_buffer: TextIO | None = None
) -> Config:
    """Alembic's configuration, built in code; ``migrations/env.py`` migrates on ``connection``
    (online), or renders SQL for ``dialect_name`` into ``output_buffer`` (offline)."""
    config = Config(output_buffer=output_buffer, attributes={"connection": connection, "dialect_name": dialect_name})
    # The option is read through ConfigParser interpolation, where a literal % is written %%.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def _stamp_pre_migration_table(conn: Connection) -> None:
    """A table ``create_all`` made before migrations (no version table yet) is the baseline:
    record it as such, after checking it has the baseline's columns, so its rows stay put."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(experiments.name) or inspector.has_table(VERSION_TABLE):
        return
    present = {column["name"] for column in inspector.get_columns(experiments.name)}
    missing = [name for name in BASELINE_COLUMNS if name not in present]
    if missing:
        raise ExperimentsSchemaError(
            f"The table {experiments.name!r} exists without the migration version table {VERSION_TABLE!r} "
            f"and lacks the baseline's columns {', '.join(missing)}, so it is not one `ftp-assets db init` created; "
            "rename or fix it, then run `ftp-assets db init` again."
        )
    command.stamp(migrations_config(connection=conn), BASELINE_REVISION)


class ExperimentStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def init_schema(self) -> None:
        """Migrate the experiments table to the latest revision, in one transaction; a table
        from before migrations is first stamped at the baseline, never recreated."""
        with _alembic_in_use, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            _stamp_pre_migration_table(conn)
            try:
                command.upgrade(migrations_config(connection=conn), "head")
            except CommandError as error:
                raise ExperimentsSchemaError(
                    f"The experiments table's migrations could not be applied ({error}); a revision this "
                    "code does not know means a newer ftp_assets migrated the table: run that version."
                ) from None

    def schema_sql(self) -> str:
        """The migrations from an empty database to the latest revision as SQL for this
        database's dialect, version table included (Alembic's offline ``--sql`` mode): what
        `ftp-assets db init` would run on a fresh database, for a DBA to review or apply."""
        output = io.StringIO()
        with _alembic_in_use:
            command.upgrade(
                migrations_config(dialect_name=self.engine.dialect.name, output_buffer=output), "head", sql=True
            )
        return output.getvalue()

    def schema_revision(self) -> str | None:
        """The revision the experiments table is at; None before any migration."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        """The latest revision of the migrations this code ships."""
        return ScriptDirectory.from_config(migrations_config()).get_current_head()

    @staticmethod
    def known_revisions() -> set[str]:
        """Every revision of the migrations this code ships."""
        return {script.revision for script in ScriptDirectory.from_config(migrations_config()).walk_revisions()}

    def missing_tables(self) -> list[str]:
        """Our tables (and the migrations' version table) that the database lacks; read only."""
        inspector = sa.inspect(self.engine)
        return [
            name
            for name in (experiments.name, experiment_looks.name, FINE_TUNING_JOBS_TABLE, VERSION_TABLE)
            if not inspector.has_table(name)
        ]

    def running(self, task: str) -> Experiment | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(experiments).where(experiments.c.task == task, experiments.c.status == RUNNING)
            ).first()
        return _experiment(row) if row else None

    def all_running(self) -> list[Experiment]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(experiments).where(experiments.c.status == RUNNING).order_by(experiments.c.task)
            )
        return [_experiment(row) for row in rows]

    def history(self, task: str) -> list[ExperimentOutcome]:
        """The task's experiments, oldest first: what each ended as, and when (the metrics' totals)."""
        columns = (
            experiments.c.experiment_id,
            experiments.c.status,
            experiments.c.started_at,
            experiments.c.decided_at,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*columns)
                .where(experiments.c.task == task)
                .order_by(experiments.c.started_at, experiments.c.experiment_id)
            )
            return [ExperimentOutcome(**row._asdict()) for row in rows]

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
        champion_endpoint: str = DEFAULT_ENDPOINT,
        challenger_endpoint: str = DEFAULT_ENDPOINT,
        plan: ExperimentPlan | None = None,
    ) -> Experiment:
        """Start an experiment, closing the task's running one as superseded in the same
        transaction. Starting the same challenger again returns the running experiment.

        With a ``plan`` the challenger's share must be the plan's initial share, the first phase."""
        if plan is not None and challenger_share != plan.initial_share:
            raise ValueError(
                f"the challenger's share {challenger_share!r} is not the plan's initial share {plan.initial_share!r}"
            )
        current = self.running(task)
        arms = (champion_model, champion_endpoint, challenger_model, challenger_endpoint)
        if current and arms == (
            current.champion_model,
            current.champion_endpoint,
            current.challenger_model,
            current.challenger_endpoint,
        ):
            return current
        started = Experiment(
            experiment_id=f"{task}-{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
            task=task,
            champion_model=champion_model,
            challenger_model=challenger_model,
            challenger_share=challenger_share,
            started_at=as_utc(started_at),
            status=RUNNING,
            registry_version=registry_version,
            champion_endpoint=champion_endpoint,
            challenger_endpoint=challenger_endpoint,
            plan=plan,
            phases=None if plan is None else (Phase(plan.initial_share, as_utc(started_at)),),
        )
        experiment_id = started.experiment_id
        with self.engine.begin() as conn:
            conn.execute(
                experiments.update()
                .where(experiments.c.task == task, experiments.c.status == RUNNING)
                .values(status=SUPERSEDED, decided_at=started_at, reason=f"superseded by {experiment_id}")
            )
            conn.execute(experiments.insert().values(**_experiment_row(started)))
        return started

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

    def cancel_running(self, task: str, *, reason: str, cancelled_at: datetime) -> Experiment | None:
        """Close the task's running experiment as cancelled, in one statement; the experiment
        cancelled, or None when none was running."""
        with self.engine.begin() as conn:
            row = conn.execute(
                experiments.update()
                .where(experiments.c.task == task, experiments.c.status == RUNNING)
                .values(status=CANCELLED, decided_at=cancelled_at, reason=reason)
                .returning(*experiments.c)
            ).first()
        return _experiment(row) if row else None

    def looks(self, experiment_id: str) -> list[LookRecord]:
        """The experiment's recorded looks, first to last."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(experiment_looks)
                .where(experiment_looks.c.experiment_id == experiment_id)
                .order_by(experiment_looks.c.look_number)
            )
            return [_look(row) for row in rows]

    def record_look(
        self,
        experiment_id: str,
        *,
        evaluated_at: datetime,
        data_until: datetime | None,
        challenger_share: float,
        information: float | None,
        information_fraction: float | None,
        statistic: float | None,
        boundary: float | None,
        alpha_spent: float | None,
        decision: str,
        reason: str,
        data: LookData,
        analysis: dict[str, Any] | None,
        ramp_to: float | None = None,
        switch_at: datetime | None = None,
        grace_minutes: float = 60.0,
        after_look: int | None = None,
    ) -> LookRecord:
        """Record the experiment's next look, in one transaction; with ``ramp_to``, also move the
        challenger's share there from ``switch_at`` (default ``evaluated_at``) on (a new phase, see
        ``ramped_phases``).

        A look already recorded at ``evaluated_at`` is returned unchanged, nothing ramped, even once
        the experiment has finished: a re-run of the evaluation that recorded it and then decided.
        Otherwise the experiment must be running and ``evaluated_at`` after its last look
        (:class:`ExperimentsLookError`). ``ramp_to`` equal to the share in force changes nothing.
        ``after_look`` is the number of the last look the analysis saw (0 for none): when another
        evaluation recorded a look since, this one is refused, since its boundary did not count
        that look (:class:`ExperimentsLookError`; evaluate again)."""
        evaluated_at = as_utc(evaluated_at)
        with self.engine.begin() as conn:
            query = sa.select(experiments.c.status, experiments.c.challenger_share, experiments.c.phases).where(
                experiments.c.experiment_id == experiment_id
            )
            if conn.dialect.name == "postgresql":
                # Concurrent evaluations of one experiment take their look numbers one at a time.
                # (SQLite writes one transaction at a time; the primary key guards the rest.)
                query = query.with_for_update()
            experiment = conn.execute(query).first()
            if experiment is None:
                raise ExperimentsLookError(f"no experiment {experiment_id!r} to record a look of")
            recorded = conn.execute(
                sa.select(experiment_looks).where(
                    experiment_looks.c.experiment_id == experiment_id, experiment_looks.c.evaluated_at == evaluated_at
                )
            ).first()
            if recorded is not None:
                return _look(recorded)
            if experiment.status != RUNNING:
                raise ExperimentsLookError(
                    f"the experiment {experiment_id!r} is {experiment.status}, no longer running: "
                    f"no look at {evaluated_at.isoformat()} is recorded"
                )
            last = conn.execute(
                sa.select(experiment_looks.c.look_number, experiment_looks.c.evaluated_at)
                .where(experiment_looks.c.experiment_id == experiment_id)
                .order_by(experiment_looks.c.look_number.desc())
                .limit(1)
            ).first()
            if after_look is not None and (0 if last is None else last.look_number) != after_look:
                raise ExperimentsLookError(
                    f"another evaluation recorded look {last.look_number if last else 0} of {experiment_id!r} "
                    f"after the {after_look} looks this one analyzed; evaluate again"
                )
            if last is not None and not evaluated_at > last.evaluated_at:
                raise ExperimentsLookError(
                    f"a look of {experiment_id!r} at {evaluated_at.isoformat()} is not after its last look, "
                    f"number {last.look_number} at {last.evaluated_at.isoformat()}"
                )
            row = {
                "experiment_id": experiment_id,
                "look_number": 1 if last is None else last.look_number + 1,
                "evaluated_at": evaluated_at,
                "data_until": as_utc(data_until),
                "challenger_share": challenger_share,
                "information": information,
                "information_fraction": information_fraction,
                "statistic": statistic,
                "boundary": boundary,
                "alpha_spent": alpha_spent,
                "decision": decision,
                "reason": reason,
                "data": data.to_json(),
                "analysis": None if analysis is None else json.dumps(analysis, default=str),
            }
            try:
                conn.execute(experiment_looks.insert().values(**row))
            except sa.exc.IntegrityError:
                raise ExperimentsLookError(
                    f"another evaluation of {experiment_id!r} recorded look number {row['look_number']} "
                    "at the same time; evaluate again"
                ) from None
            if ramp_to is not None:
                self._ramp(
                    conn,
                    experiment_id,
                    experiment,
                    share=ramp_to,
                    switch_at=switch_at or evaluated_at,
                    grace=grace_minutes,
                )
            inserted = conn.execute(
                sa.select(experiment_looks).where(
                    experiment_looks.c.experiment_id == experiment_id,
                    experiment_looks.c.look_number == row["look_number"],
                )
            ).one()
        return _look(inserted)

    @staticmethod
    def _ramp(
        conn: Connection, experiment_id: str, experiment: sa.Row, *, share: float, switch_at: datetime, grace: float
    ) -> None:
        """Move the running experiment's share to ``share`` at ``switch_at``: compare-and-set on
        the share and phases read, so a stale or repeated ramp changes nothing."""
        if experiment.phases is None:
            raise ExperimentsLookError(
                f"the experiment {experiment_id!r} started before plans and has no phases: its share cannot ramp"
            )
        phases = phases_from_json(experiment.phases)
        if share == phases[-1].share or experiment.challenger_share != phases[-1].share:
            return
        conn.execute(
            experiments.update()
            .where(
                experiments.c.experiment_id == experiment_id,
                experiments.c.status == RUNNING,
                experiments.c.challenger_share == experiment.challenger_share,
                experiments.c.phases == experiment.phases,
            )
            .values(
                challenger_share=share,
                phases=phases_to_json(ramped_phases(phases, share=share, switch_at=switch_at, grace_minutes=grace)),
            )
        )
