"""Terminating a Dagster run cancels the provider's job: a real run of ``training_cycle``
(``dagster job execute``, steps in their own processes) is interrupted while it polls a job of
the local OpenAI-compatible service, as the UI's "Terminate" or a Ctrl-C would."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets_tests.corpus import WINDOW_END, clean_posts
from ftp_local_openai import running_service

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_interrupting_the_run_cancels_the_fine_tuning_job(tmp_path, monkeypatch):
    posts_url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    db = PostsDatabase(posts_url)
    db.init_schema()
    db.insert_posts(clean_posts(150))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    config = tmp_path / "run.yaml"
    config.write_text(
        f"ops:\n  engaged_posts:\n    config:\n      window_end: '{WINDOW_END.isoformat()}'\n"
        "resources:\n  fine_tuning:\n    config:\n      poll_initial_seconds: 0.2\n"
        "      poll_max_seconds: 0.5\n"
    )
    # Slow training steps: the job is still running when the run is interrupted.
    with running_service(tmp_path / "local_openai", step_seconds=0.5) as service:
        client = openai.OpenAI(base_url=service.base_url, api_key=service.api_key)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "FTP_HOME": str(tmp_path / "home"),
            "FTP_POSTS_DB_URL": posts_url,
            "OPENAI_BASE_URL": service.base_url,
            "OPENAI_API_KEY": service.api_key,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        command = [
            str(Path(sys.executable).with_name("dagster")),
            "job",
            "execute",
            "-m",
            "ftp_assets.definitions",
            "-j",
            "training_cycle",
            "--tags",
            '{"dagster/partition": "hook"}',
            "-c",
            str(config),
        ]
        with open(tmp_path / "run.log", "wb") as log:
            run = subprocess.Popen(
                ["env", "--default-signal=INT,TERM", *command],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            job = _wait_for(
                lambda: next((j for j in client.fine_tuning.jobs.list() if j.status == "running"), None),
                120,
                "the fine-tuning job to run",
            )
            os.killpg(run.pid, signal.SIGINT)  # what Dagster's termination delivers to the run
            run.wait(60)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        status = _wait_for(
            lambda: client.fine_tuning.jobs.retrieve(job.id).status == "cancelled" and "cancelled",
            30,
            "the job to be cancelled",
        )
        assert status == "cancelled"
        assert len(client.fine_tuning.jobs.list().data) == 1
    # The run's own event log says the run failed by interruption and that the job was cancelled.
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.status == DagsterRunStatus.FAILURE
        messages = [entry.user_message for entry in instance.all_logs(record.dagster_run.run_id)]
    assert any(job.id in message and "cancel" in message.lower() for message in messages), "\n".join(messages[-12:])
    assert not any(service.api_key in message for message in messages)
