"""The experiments table evolves by Alembic migrations, on PostgreSQL and SQLite alike: fresh
databases, databases that already use Alembic for something else, and tables made before
migrations, whose rows must survive."""

import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command

from ftp_assets.adapters.experiments_store import (
    BASELINE_COLUMNS,
    BASELINE_REVISION,
    VERSION_TABLE,
    ExperimentsSchemaError,
    ExperimentStore,
    experiment_looks,
    experiments,
    migrations_config,
)
from ftp_assets.adapters.fine_tuning_jobs import fine_tuning_jobs
from ftp_assets.adapters.posts_db import UTCDateTime
from ftp_assets.cli import main

RUNNING_ROW = {
    "experiment_id": "hook-20260101T000000Z-0a1b2c3d",
    "task": "hook",
    "champion_model": "ft:hook:champion",
    "challenger_model": "ft:hook:challenger",
    "challenger_share": 0.2,
    "started_at": datetime(2026, 1, 1, tzinfo=UTC),
    "status": "running",
    "registry_version": "7",
    "decided_at": None,
    "decision": None,
    "reason": None,
    "statistics": None,
}
FINISHED_ROW = RUNNING_ROW | {
    "experiment_id": "hook-20251201T000000Z-4e5f6a7b",
    "started_at": datetime(2025, 12, 1, tzinfo=UTC),
    "status": "promoted",
    "registry_version": "6",
    "decided_at": datetime(2025, 12, 8, 12, 30, tzinfo=UTC),
    "decision": "promote",
    "reason": "the challenger's engagement rate is higher",
    "statistics": '{"p_value": 0.01}',
}


def pre_migration_table(*, without: tuple[str, ...] = ()) -> sa.Table:
    """The table as ``create_all`` made it before migrations: frozen here, so that the query
    model can move on while this stays the schema that existing databases hold."""
    columns = [
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
        sa.Column("statistics", sa.Text),
    ]
    return sa.Table(
        "ftp_experiments",
        sa.MetaData(),
        *[column for column in columns if column.name not in without],
        sa.CheckConstraint("challenger_share > 0 AND challenger_share < 1", name="ck_ftp_experiments_share"),
        sa.Index(
            "ux_ftp_experiments_running_task",
            "task",
            unique=True,
            postgresql_where=sa.text("status = 'running'"),
            sqlite_where=sa.text("status = 'running'"),
        ),
    )


@pytest.fixture
def engine(posts_url):
    engine = sa.create_engine(posts_url)
    yield engine
    engine.dispose()


def table_names(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def versions(engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.column("version_num")).select_from(sa.table(VERSION_TABLE))).scalars().all()


def test_a_fresh_database_is_migrated_to_head_under_our_own_version_table(engine):
    store = ExperimentStore(engine)
    assert store.schema_revision() is None
    store.init_schema()
    assert {"ftp_experiments", "ftp_experiment_looks", "ftp_fine_tuning_jobs", VERSION_TABLE} <= table_names(engine)
    assert "alembic_version" not in table_names(engine)
    assert store.schema_revision() == ExperimentStore.head_revision() == "0004"
    assert store.missing_tables() == []


def test_init_schema_twice_changes_nothing(engine):
    store = ExperimentStore(engine)
    store.init_schema()
    with engine.begin() as conn:
        conn.execute(experiments.insert().values(**RUNNING_ROW))
    store.init_schema()
    assert versions(engine) == [ExperimentStore.head_revision()]
    assert store.running("hook").experiment_id == RUNNING_ROW["experiment_id"]


def test_concurrent_init_schema_in_one_process_migrates_once(engine):
    """Sensors open the store in the code server's threads, and Alembic's proxies are global."""
    errors = []

    def init_schema():
        try:
            ExperimentStore(engine).init_schema()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=init_schema) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    assert versions(engine) == [ExperimentStore.head_revision()]


def test_another_projects_alembic_version_is_left_untouched(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('agent_0042')"))
    ExperimentStore(engine).init_schema()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["agent_0042"]
    assert versions(engine) == [ExperimentStore.head_revision()]


def test_a_table_from_before_migrations_is_stamped_and_keeps_its_rows(engine):
    legacy = pre_migration_table()
    legacy.create(engine)
    with engine.begin() as conn:
        conn.execute(legacy.insert(), [RUNNING_ROW, FINISHED_ROW])
    store = ExperimentStore(engine)

    store.init_schema()
    store.init_schema()

    assert store.schema_revision() == ExperimentStore.head_revision()
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(sa.select(legacy).order_by(legacy.c.started_at))]
    assert rows == [FINISHED_ROW, RUNNING_ROW]
    running = store.running("hook")
    assert running.experiment_id == RUNNING_ROW["experiment_id"]
    assert store.get(FINISHED_ROW["experiment_id"]).status == "promoted"
    # Rows from before revision 0003 ran on the OpenAI path: both arms on the openai endpoint.
    assert (running.champion_endpoint, running.challenger_endpoint) == ("openai", "openai")


def test_a_table_from_before_migrations_without_the_baseline_columns_is_refused(engine):
    pre_migration_table(without=("decision", "statistics")).create(engine)
    with pytest.raises(ExperimentsSchemaError, match="lacks the baseline's columns decision, statistics"):
        ExperimentStore(engine).init_schema()
    assert VERSION_TABLE not in table_names(engine)


def test_the_baseline_creates_exactly_the_pre_migration_columns(engine):
    with engine.begin() as conn:
        command.upgrade(migrations_config(connection=conn), BASELINE_REVISION)
    migrated = [column["name"] for column in sa.inspect(engine).get_columns("ftp_experiments")]
    assert migrated == list(BASELINE_COLUMNS) == [column.name for column in pre_migration_table().columns]


@pytest.mark.parametrize("model", [experiments, experiment_looks, fine_tuning_jobs], ids=lambda table: table.name)
def test_the_query_model_matches_the_migrated_schema(engine, model):
    ExperimentStore(engine).init_schema()
    inspector = sa.inspect(engine)

    def shape(name, type_, nullable):
        # Compared by the Python type of what is stored (a TypeDecorator stores its impl's): the
        # reflected type names differ by dialect (FLOAT is reflected as DOUBLE PRECISION).
        stored = type_.impl_instance if isinstance(type_, sa.TypeDecorator) else type_
        return name, stored.python_type, bool(nullable)

    migrated = [
        shape(column["name"], column["type"], column["nullable"]) for column in inspector.get_columns(model.name)
    ]
    assert migrated == [shape(column.name, column.type, column.nullable) for column in model.columns]
    migrated_key = inspector.get_pk_constraint(model.name)["constrained_columns"]
    assert migrated_key == [column.name for column in model.primary_key]

    migrated_indexes = {
        (index["name"], bool(index["unique"]), tuple(index["column_names"]))
        for index in inspector.get_indexes(model.name)
        if "duplicates_constraint" not in index  # PostgreSQL's index behind a unique constraint
    }
    model_indexes = {
        (index.name, index.unique, tuple(column.name for column in index.columns)) for index in model.indexes
    }
    assert migrated_indexes == model_indexes
    migrated_checks = {check["name"] for check in inspector.get_check_constraints(model.name)}
    model_checks = {check.name for check in model.constraints if isinstance(check, sa.CheckConstraint)}
    assert migrated_checks == model_checks
    migrated_uniques = {
        (unique["name"], tuple(unique["column_names"])) for unique in inspector.get_unique_constraints(model.name)
    }
    model_uniques = {
        (unique.name, tuple(column.name for column in unique.columns))
        for unique in model.constraints
        if isinstance(unique, sa.UniqueConstraint)
    }
    assert migrated_uniques == model_uniques
    migrated_keys = {
        (tuple(key["constrained_columns"]), key["referred_table"], tuple(key["referred_columns"]))
        for key in inspector.get_foreign_keys(model.name)
    }
    model_keys = {
        (tuple(key.column_keys), key.referred_table.name, tuple(element.column.name for element in key.elements))
        for key in model.foreign_key_constraints
    }
    assert migrated_keys == model_keys


def test_revision_0004_keeps_the_rows_before_it_without_a_plan_and_downgrades(engine):
    with engine.begin() as conn:
        command.upgrade(migrations_config(connection=conn), "0003")
        conn.execute(experiments.insert(), [RUNNING_ROW, FINISHED_ROW | {"challenger_endpoint": "self_hosted"}])
    columns_0003 = [experiments.c[name] for name in (*BASELINE_COLUMNS, "champion_endpoint", "challenger_endpoint")]

    def rows_0003() -> list[dict]:
        with engine.connect() as conn:
            return [row._asdict() for row in conn.execute(sa.select(*columns_0003).order_by(experiments.c.started_at))]

    before = rows_0003()
    store = ExperimentStore(engine)
    store.init_schema()

    assert store.schema_revision() == "0004" and rows_0003() == before
    for experiment_id in (RUNNING_ROW["experiment_id"], FINISHED_ROW["experiment_id"]):
        experiment = store.get(experiment_id)
        assert experiment.plan is None and experiment.phases is None
    assert store.looks(RUNNING_ROW["experiment_id"]) == []

    with engine.begin() as conn:
        command.downgrade(migrations_config(connection=conn), "0003")
    assert store.schema_revision() == "0003" and rows_0003() == before
    assert "ftp_experiment_looks" not in table_names(engine)
    assert {"plan", "phases"}.isdisjoint(column["name"] for column in sa.inspect(engine).get_columns("ftp_experiments"))
    # The copy SQLite made of the table kept the index partial: one running row per task, many others.
    with engine.begin() as conn:
        conn.execute(experiments.insert().values(**FINISHED_ROW | {"experiment_id": "hook-another-finished"}))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(experiments.insert().values(**RUNNING_ROW | {"experiment_id": "hook-second-running"}))


def test_the_running_index_allows_one_running_experiment_per_task(engine):
    store = ExperimentStore(engine)
    store.init_schema()
    with engine.begin() as conn:
        conn.execute(experiments.insert(), [RUNNING_ROW, FINISHED_ROW])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(experiments.insert().values(**RUNNING_ROW | {"experiment_id": "hook-second-running"}))


def test_the_printed_sql_builds_the_schema_at_head(engine):
    """`ftp-assets db init --print-sql` is for a DBA to apply by hand; the product then finds it current."""
    store = ExperimentStore(engine)
    script = store.schema_sql()
    assert "CREATE TABLE ftp_experiments" in script and "ux_ftp_experiments_running_task" in script
    assert "CREATE TABLE ftp_fine_tuning_jobs" in script and "CREATE TABLE ftp_experiment_looks" in script
    # The script brings its own BEGIN/COMMIT where the dialect has transactional DDL: run it as is.
    if engine.dialect.name == "sqlite":
        with closing(sqlite3.connect(engine.url.database)) as conn:
            conn.executescript(script)
    else:
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(script)
    assert store.schema_revision() == ExperimentStore.head_revision()
    assert "alembic_version" not in table_names(engine)


def test_db_init_says_the_migration_revision(posts_url, monkeypatch, capsys):
    monkeypatch.setenv("FTP_POSTS_DB_URL", posts_url)
    assert main(["db", "init"]) == 0
    assert f"experiments table at migration {ExperimentStore.head_revision()}" in capsys.readouterr().out
