"""The Dagster instance configs load through Dagster's own validation and really work.

`deploy/dagster.yaml` (production) runs on a real PostgreSQL database; the top-level
`dagster.yaml` (local) on Dagster's default storage with nothing but DAGSTER_HOME set. Both must
queue fine-tuning runs one per task, retry failed runs and keep telemetry off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import psycopg
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.execution.retries import auto_reexecution_should_retry_run
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG, WILL_RETRY_TAG
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster_postgres import (
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "dagster.yaml"
PRODUCTION_CONFIG = ROOT / "deploy" / "dagster.yaml"
PG_ENV_VARS = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)
FINE_TUNE_TAG = "ftp/fine-tune-task"


def _instance_in_dagster_home(config: Path) -> DagsterInstance:
    """The instance a deployment gets: the file copied to $DAGSTER_HOME/dagster.yaml."""
    shutil.copy(config, Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml")
    return DagsterInstance.get()


@pytest.fixture
def pg_env(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DAGSTER_PG_* pointing at the throw-away database (trust auth: empty password)."""
    conninfo = conninfo_to_dict(pg_database)
    monkeypatch.setenv("DAGSTER_PG_HOST", str(conninfo["host"]))
    monkeypatch.setenv("DAGSTER_PG_PORT", str(conninfo.get("port", 5432)))
    monkeypatch.setenv("DAGSTER_PG_USER", str(conninfo["user"]))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", str(conninfo.get("password", "")))
    monkeypatch.setenv("DAGSTER_PG_DB", str(conninfo["dbname"]))
    return pg_database


@pytest.fixture
def production_instance(pg_env: str) -> Iterator[DagsterInstance]:
    with _instance_in_dagster_home(PRODUCTION_CONFIG) as instance:
        yield instance


@pytest.fixture
def local_instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    for name in PG_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with _instance_in_dagster_home(LOCAL_CONFIG) as instance:
        yield instance


@pytest.fixture(params=["local", "production"])
def any_instance(request: pytest.FixtureRequest) -> DagsterInstance:
    return request.getfixturevalue(f"{request.param}_instance")


@asset
def config_probe() -> int:
    return 1


@asset
def failing_probe() -> None:
    raise RuntimeError("deliberate failure")


def _queued_run(tags: dict[str, str]) -> DagsterRun:
    # Queued runs must say where their job lives; the dequeue decision never loads it.
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("ftp_assets"), "__repository__"),
        "training_job",
    )
    return DagsterRun(
        job_name="training_job",
        run_id=uuid.uuid4().hex,
        status=DagsterRunStatus.QUEUED,
        tags=tags,
        remote_job_origin=origin,
    )


def test_production_instance_stores_runs_and_events_in_postgres(
    production_instance: DagsterInstance, pg_env: str
) -> None:
    instance = production_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    # A real run writes its run record, its events (the event log NOTIFYs on every write, which
    # fails on psycopg 3) and an asset materialization.
    result = materialize([config_probe], instance=instance)
    assert result.success

    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    materialization = instance.get_latest_materialization_event(AssetKey("config_probe"))
    assert materialization is not None and materialization.run_id == result.run_id

    # ...and all of it landed in the database the env vars name, not somewhere else.
    with psycopg.connect(pg_env) as conn:
        stored = conn.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,)).fetchone()
        (events,) = conn.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (result.run_id,)).fetchone()
    assert stored == ("SUCCESS",)
    assert events > 0


def test_production_instance_reads_connection_from_env(pg_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_HOST"):
        _instance_in_dagster_home(PRODUCTION_CONFIG)


def test_local_instance_needs_only_dagster_home(tmp_path: Path) -> None:
    """In a clean environment (no FTP_*, no DAGSTER_PG_*), a run is stored under DAGSTER_HOME."""
    dagster_home = tmp_path / "clean_dagster_home"
    dagster_home.mkdir()
    shutil.copy(LOCAL_CONFIG, dagster_home / "dagster.yaml")
    script = textwrap.dedent(
        """
        from dagster import DagsterInstance, asset, materialize
        from dagster._core.storage.runs import SqliteRunStorage

        @asset
        def probe() -> int:
            return 1

        with DagsterInstance.get() as instance:
            assert isinstance(instance.run_storage, SqliteRunStorage), instance.run_storage
            result = materialize([probe], instance=instance)
            assert instance.get_run_by_id(result.run_id).is_success
            print(result.run_id)
        """
    )
    env = {"DAGSTER_HOME": str(dagster_home), "PATH": os.environ.get("PATH", "")}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    run_id = completed.stdout.strip().splitlines()[-1]

    # The run is on disk under DAGSTER_HOME: a fresh instance on the same folder reads it back.
    with DagsterInstance.from_config(str(dagster_home)) as reopened:
        run = reopened.get_run_by_id(run_id)
    assert run is not None and run.is_success
    assert (dagster_home / "history" / "runs.db").exists()


def test_fine_tuning_runs_are_limited_to_one_per_task(any_instance: DagsterInstance) -> None:
    """The daemon's own dequeue decision: a running hook fine-tune holds back the next hook one,
    but not the body one, nor runs without the tag."""
    instance = any_instance
    instance.add_run(
        DagsterRun(
            job_name="training_job",
            run_id=uuid.uuid4().hex,
            status=DagsterRunStatus.STARTED,
            tags={FINE_TUNE_TAG: "hook"},
        )
    )
    second_hook = instance.add_run(_queued_run({FINE_TUNE_TAG: "hook"}))
    first_body = instance.add_run(_queued_run({FINE_TUNE_TAG: "body"}))
    second_body = instance.add_run(_queued_run({FINE_TUNE_TAG: "body"}))
    untagged = instance.add_run(_queued_run({}))

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    to_launch = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), fixed_iteration_time=None)

    launched = {run.run_id for run in to_launch}
    assert launched == {first_body.run_id, untagged.run_id}
    assert second_hook.run_id not in launched and second_body.run_id not in launched


def test_failed_runs_are_retried_twice(any_instance: DagsterInstance) -> None:
    instance = any_instance
    result = materialize([failing_probe], instance=instance, raise_on_error=False)
    first = instance.get_run_by_id(result.run_id)
    assert first is not None and first.status == DagsterRunStatus.FAILURE
    # Set by Dagster when the failure is stored, from the instance's run_retries settings.
    assert first.tags.get(WILL_RETRY_TAG) == "true"

    # Dagster counts the retries already in the run group (runs sharing the root-run tag):
    # after the first retry fails there is one more, after the second none.
    def failed_retry_of(parent: DagsterRun) -> DagsterRun:
        return instance.add_run(
            DagsterRun(
                job_name=first.job_name,
                run_id=uuid.uuid4().hex,
                status=DagsterRunStatus.FAILURE,
                root_run_id=first.run_id,
                parent_run_id=parent.run_id,
                tags={ROOT_RUN_ID_TAG: first.run_id, PARENT_RUN_ID_TAG: parent.run_id},
            )
        )

    first_retry = failed_retry_of(first)
    assert auto_reexecution_should_retry_run(instance, first_retry, None)
    second_retry = failed_retry_of(first_retry)
    assert not auto_reexecution_should_retry_run(instance, second_retry, None)


def test_monitoring_on_and_telemetry_off(any_instance: DagsterInstance) -> None:
    instance = any_instance
    assert instance.telemetry_enabled is False
    assert instance.run_monitoring_enabled
    # Stuck STARTING/CANCELING runs are failed within minutes, freeing their concurrency slot.
    assert 0 < instance.run_monitoring_start_timeout_seconds <= 600
    assert 0 < instance.run_monitoring_cancel_timeout_seconds <= 600
    # Fine-tuning legitimately waits hours on the provider: no global runtime ceiling.
    assert instance.run_monitoring_max_runtime_seconds == 0


def test_packaged_local_config_is_the_top_level_one() -> None:
    """`ftp-assets` writes the packaged copy into $FTP_HOME/dagster; it must not drift from the file
    the tests above exercise (and `dagster dev` in the project folder reads)."""
    packaged = files("ftp_assets").joinpath("dagster_local.yaml").read_text()
    assert packaged == LOCAL_CONFIG.read_text()


def test_one_fine_tuning_submission_at_a_time(any_instance: DagsterInstance) -> None:
    """The pool of fine_tuned_model holds one step at a time, with or without the run tag."""
    from ftp_assets.training.assets import fine_tuned_model

    assert fine_tuned_model.op.pool == "fine_tuning"
    assert any_instance.get_concurrency_config().pool_config.default_pool_limit == 1
