"""The experiments table (ours; the agent reads it).

The table lives beside the posts, so the agent can read which experiment runs for a task. The
A/B outcomes are read from the posts by :mod:`ftp_assets.adapters.posts_db`.

The table is a contract with the agent's team, so it changes only by the Alembic migrations in
``migrations/``; the ``experiments`` Table below is the query model and must match them (a test
compares the migrated schema with it).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from ftp_assets.adapters.posts_db import PostsDatabaseError, UTCDateTime, as_utc
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
    champion_endpoint: str = DEFAULT_ENDPOINT
    challenger_endpoint: str = DEFAULT_ENDPOINT

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
    fields = row._asdict()
    return Experiment(**{name: fields[name] for name in Experiment.__dataclass_fields__})


class ExperimentsSchemaError(PostsDatabaseError):
    """An experiments table the migrations cannot take over; the message says what is wrong."""


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
            name for name in (experiments.name, FINE_TUNING_JOBS_TABLE, VERSION_TABLE) if not inspector.has_table(name)
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
    ) -> Experiment:
        """Start an experiment, closing the task's running one as superseded in the same
        transaction. Starting the same challenger again returns the running experiment."""
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
        )
        experiment_id = started.experiment_id
        with self.engine.begin() as conn:
            conn.execute(
                experiments.update()
                .where(experiments.c.task == task, experiments.c.status == RUNNING)
                .values(status=SUPERSEDED, decided_at=started_at, reason=f"superseded by {experiment_id}")
            )
            conn.execute(experiments.insert().values(**asdict(started)))
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
