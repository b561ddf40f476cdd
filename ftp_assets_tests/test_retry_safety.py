"""A retried training never pays for a second fine-tuning job.

The first run of ``training_cycle`` loses MLflow just after its fine-tuning job has succeeded, so
the run fails in ``fine_tuned_model``. Dagster re-executes it from the failure (the strategy of
the instance's run retries, dagster.yaml) once MLflow is back, then re-executes
``fine_tuned_model`` once more on the same dataset. The local OpenAI-compatible service, asked
through the official client, holds one job throughout, also when it drops job metadata as some
OpenAI-compatible APIs do: the retry then finds the job through the job records table.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import openai
import pytest
import sqlalchemy as sa
from dagster import (
    Definitions,
    EnvVar,
    ReexecutionOptions,
    execute_job,
    in_process_executor,
    instance_for_test,
    reconstructable,
)
from dagster_openai import OpenAIResource
from mlflow import MlflowClient

from ftp_assets.adapters.mlflow_registry import local_tracking_uri, model_name
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples, low_duplicate_rate, valid_format
from ftp_assets.experiment.assets import ab_experiment
from ftp_assets.resources import (
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
    ServingEndpoints,
)
from ftp_assets.training.assets import fine_tuned_model
from ftp_assets.training.jobs import training_cycle
from ftp_assets_tests.corpus import clean_posts

# The tags of the hook partition's runs; Dagster's run retries copy them to each retry.
HOOK = {"dagster/partition": "hook", "ftp/fine-tune-task": "hook"}


def training_cycle_from_env():
    """The project's ``training_cycle`` with its resources' settings in environment variables
    (resolved at each run, as a deployment's are), executed in-process."""
    defs = Definitions(
        assets=[engaged_posts, training_jsonl, fine_tuned_model, ab_experiment],
        asset_checks=[enough_examples, valid_format, low_duplicate_rate],
        jobs=[training_cycle],
        executor=in_process_executor,
        resources={
            "posts_db": PostsDatabaseResource(url=EnvVar("FTP_POSTS_DB_URL")),
            "dataset_storage": DatasetStorage(root=EnvVar("FTP_DATASETS_DIR")),
            "openai": OpenAIResource(api_key=EnvVar("OPENAI_API_KEY"), base_url=EnvVar("OPENAI_BASE_URL")),
            "fine_tuning": FineTuningSettings(poll_initial_seconds=0.05, poll_max_seconds=0.2),
            "self_hosted_training": SelfHostedTraining(),
            "mlflow": MlflowResource(tracking_uri=EnvVar("MLFLOW_TRACKING_URI")),
            "experiment_settings": ExperimentSettings(),
            "serving": ServingEndpoints(openai_base_url=EnvVar("OPENAI_BASE_URL")),
            "metrics": MetricsPublisher(),
        },
    )
    return defs.resolve_job_def("training_cycle")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def environment(pg_posts_url, local_openai, tmp_path, monkeypatch):
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    window_end = datetime.now(UTC)
    db.insert_posts(
        [{**row, "created_at": window_end - timedelta(days=1, minutes=i)} for i, row in enumerate(clean_posts(150))]
    )
    monkeypatch.setenv("FTP_POSTS_DB_URL", pg_posts_url)
    monkeypatch.setenv("FTP_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("OPENAI_API_KEY", local_openai.api_key)
    monkeypatch.setenv("OPENAI_BASE_URL", local_openai.base_url)
    # An MLflow server that is down, answering at once instead of after MLflow's own retries.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{unused_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return {"ops": {"engaged_posts": {"config": {"window_end": window_end.isoformat()}}}}


@pytest.mark.parametrize("provider_keeps_metadata", [True, False], ids=["metadata kept", "metadata dropped"])
def test_retried_and_repeated_runs_reattach_to_the_one_paid_job(
    environment, local_openai, tmp_path, monkeypatch, pg_posts_url, provider_keeps_metadata
):
    local_openai.faults.drop_metadata(not provider_keeps_metadata)
    client = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    job = reconstructable(training_cycle_from_env)
    with instance_for_test() as instance:
        first = execute_job(job, instance, run_config=environment, tags=HOOK)
        assert not first.success
        (failure,) = [event for event in first.all_events if event.is_step_failure]
        assert failure.step_key == "fine_tuned_model"
        (paid,) = client.fine_tuning.jobs.list().data
        assert paid.status == "succeeded" and (paid.metadata is not None) == provider_keeps_metadata
        # Recorded beside the posts the moment the create call returned.
        engine = sa.create_engine(pg_posts_url, poolclass=sa.NullPool)
        with engine.connect() as conn:
            recorded = conn.execute(sa.text("SELECT status, job_id, task, dagster_run_id FROM ftp_fine_tuning_jobs"))
            assert recorded.all() == [("created", paid.id, "hook", first.run_id)]

        monkeypatch.setenv("MLFLOW_TRACKING_URI", local_tracking_uri(tmp_path / "mlflow"))
        retried = execute_job(
            job, instance, tags=HOOK, reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance)
        )
        assert retried.success
        assert {e.step_key for e in retried.all_events if e.is_step_start} == {"fine_tuned_model", "ab_experiment"}
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [paid.id]
        (materialization,) = retried.asset_materializations_for_node("fine_tuned_model")
        assert materialization.metadata["job_id"].value == paid.id
        logs = [record.user_message for record in instance.all_logs(retried.run_id)]
        assert any(f"Re-attached to openai fine-tuning job {paid.id}" in message for message in logs)

        # The same dataset trained "again" by hand: still the one job.
        again = execute_job(
            job,
            instance,
            tags=HOOK,
            reexecution_options=ReexecutionOptions(parent_run_id=retried.run_id, step_selection=["fine_tuned_model"]),
        )
        assert again.success
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [paid.id]

    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = mlflow.search_model_versions(f"name = '{model_name('hook')}'")
    assert {version.tags["job_id"] for version in versions} == {paid.id}
