"""The code location under Dagster's own processes, loaded from ``workspace.yaml``.

* ``dagster-daemon`` on a PostgreSQL-backed instance (``deploy/dagster.yaml``): the hook
  data-threshold sensor, started with ``dagster sensor start``, skips while too few qualifying
  posts have matured, then launches a training run once more posts mature; that run succeeds
  against the local OpenAI-compatible service, and the sensor counts afresh from it.
* ``dagster-webserver``: its GraphQL API lists the schedule (with the cron set in the
  environment) and the sensors.

Both are slow (a minute or so: processes loading the code, a run of several steps), and run in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import openai
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from psycopg.conninfo import conninfo_to_dict

from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets_tests.corpus import clean_posts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENSOR = "hook_data_threshold_sensor"
THRESHOLD = 150
STOP_TIMEOUT_SECONDS = 30
T = TypeVar("T")


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A Dagster process in a session of its own, stopped with SIGTERM as STACK.md advises
    (``env --default-signal`` undoes an ignored SIGINT/SIGTERM inherited from the caller). It must
    stop by itself, children included (code servers, run workers), within the timeout."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["env", "--default-signal=INT,TERM", *command],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            leftovers = _group_alive(process.pid)
            if process.poll() is None or leftovers:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert not leftovers, f"{command[0]} left processes behind after SIGTERM"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, log: Path, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}. Last lines of {log.name}:\n{tail}")


@pytest.fixture
def dagster_env(tmp_path, monkeypatch) -> dict[str, str]:
    """The environment of the Dagster processes (and of this test, so it reads the same instance)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dict(os.environ)


# --- the daemon ----------------------------------------------------------------------------


def sensor_ticks(instance: DagsterInstance) -> list:
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == SENSOR]
    return list(instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id)) if states else []


def finished_training(instance: DagsterInstance):
    runs = instance.get_runs(RunsFilter(job_name="training_cycle"))
    return runs if runs and all(run.is_finished for run in runs) else None


def failure_messages(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(e.message for e in instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.is_failure)


def test_daemon_sensor_launches_a_training_that_succeeds(
    dagster_env, pg_database, pg_posts_url, local_openai, tmp_path, monkeypatch
):
    # One throw-away database holds both the instance's tables and the agent's posts.
    shutil.copy(ROOT / "deploy" / "dagster.yaml", Path(dagster_env["DAGSTER_HOME"]) / "dagster.yaml")
    server = conninfo_to_dict(pg_database)
    settings = {
        "DAGSTER_PG_HOST": server["host"],
        "DAGSTER_PG_PORT": str(server.get("port", 5432)),
        "DAGSTER_PG_USER": server["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": server["dbname"],
        "FTP_POSTS_DB_URL": pg_posts_url,
        "OPENAI_API_KEY": local_openai.api_key,
        "OPENAI_BASE_URL": local_openai.base_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "FTP_DATASETS_DIR": str(tmp_path / "datasets"),
        "FTP_TRAINING_NEW_POSTS_THRESHOLD": str(THRESHOLD),
        "FTP_TRAINING_SENSOR_INTERVAL_SECONDS": "5",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    env = {**dagster_env, **settings}

    posts = PostsDatabase(pg_posts_url)
    posts.init_schema()
    now = datetime.now(UTC)
    # 100 posts have matured (older than the default 24-hour maturity): below the threshold.
    posts.insert_posts(
        [{**row, "created_at": now - timedelta(hours=30, minutes=i)} for i, row in enumerate(clean_posts(100))]
    )

    log = tmp_path / "daemon.log"
    start = subprocess.run(
        [str(BIN / "dagster"), "sensor", "start", SENSOR, "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    with DagsterInstance.get() as instance:
        with running([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, log) as daemon:
            skipped = wait_for(
                "a skipped tick",
                lambda: [t for t in sensor_ticks(instance) if t.status == TickStatus.SKIPPED],
                timeout=60,
                log=log,
            )
            assert f"100/{THRESHOLD} new qualifying posts" in skipped[0].skip_reason
            assert not instance.get_runs(RunsFilter(job_name="training_cycle"))

            # 60 more posts, published just under a day ago: they mature within seconds.
            published = datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=2)
            posts.insert_posts([{**row, "created_at": published} for row in clean_posts(60, first_id=5_000)])
            (run,) = wait_for(
                "the sensor's training run to finish",
                lambda: finished_training(instance),
                # A process per step (the daemon's default executor) on a shared two-core machine.
                timeout=300,
                log=log,
                interval=2,
            )
            assert run.status == DagsterRunStatus.SUCCESS, failure_messages(instance, run.run_id)
            # The training is the sensor's new baseline: the posts it read no longer count.
            wait_for(
                "a tick counting from the training on",
                lambda: [
                    t for t in sensor_ticks(instance) if (t.skip_reason or "").startswith(f"hook: 0/{THRESHOLD} ")
                ],
                timeout=60,
                log=log,
            )
            assert daemon.poll() is None

        assert run.tags["dagster/sensor_name"] == SENSOR and run.tags["ftp/fine-tune-task"] == "hook"
        assert run.tags["dagster/partition"] == "hook"
        (materialization,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("fine_tuned_model"), asset_partitions=["hook"]), limit=5
        ).records
        assert materialization.run_id == run.run_id
    client = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    (job,) = client.fine_tuning.jobs.list().data
    assert job.status == "succeeded" and job.metadata["ftp_task"] == "hook"


# --- the webserver -------------------------------------------------------------------------

LISTING = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    location { name }
    schedules { name cronSchedule executionTimezone pipelineName }
    sensors { name minIntervalSeconds targets { pipelineName } }
} } } }
"""


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with direct.open(request, timeout=10) as response:
        return json.load(response)


def test_webserver_lists_the_schedule_and_sensors(dagster_env, tmp_path):
    shutil.copy(ROOT / "dagster.yaml", Path(dagster_env["DAGSTER_HOME"]) / "dagster.yaml")
    env = {**dagster_env, "FTP_TRAINING_CRON": "0 3 * * 1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "webserver.log"

    def repositories():
        try:
            return graphql(url, LISTING)["data"]["repositoriesOrError"]["nodes"]
        except OSError:
            return None

    command = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(command, env, log):
        (repository,) = wait_for("the code location in GraphQL", repositories, timeout=90, log=log)

    assert repository["location"]["name"] == "ftp_assets"
    (schedule,) = repository["schedules"]
    assert schedule == {
        "name": "weekly_training",
        "cronSchedule": "0 3 * * 1",
        "executionTimezone": "UTC",
        "pipelineName": "training_cycle",
    }
    sensors = {
        s["name"]: (s["targets"][0]["pipelineName"] if s["targets"] else None, s["minIntervalSeconds"])
        for s in repository["sensors"]
    }
    assert sensors == {
        "hook_data_threshold_sensor": ("training_cycle", 300),
        "body_data_threshold_sensor": ("training_cycle", 300),
        "experiment_evaluation_sensor": ("experiment_evaluation", 3600),
        # They launch no run: one watches the others fail, one refreshes the metrics.
        "run_failure_alerts": (None, 30),
        "metrics_refresh": (None, 300),
    }
