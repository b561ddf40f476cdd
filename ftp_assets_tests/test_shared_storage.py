"""Storage that survives a pod: on Kubernetes each run is a pod, and a retry re-executes from the
failed step in a new pod with an empty disk. With ``FTP_STORAGE_URL`` the asset values and the
dataset files live on shared storage, here a real S3-compatible server (moto in server mode), and
the Dagster instance on PostgreSQL, as the Helm chart deploys them.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
import s3fs
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    ReexecutionOptions,
    execute_job,
    in_process_executor,
    reconstructable,
)
from psycopg.conninfo import conninfo_to_dict

from ftp_assets.adapters.mlflow_registry import local_tracking_uri
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.definitions import build_definitions
from ftp_assets.resources import DatasetStorage
from ftp_assets.settings import DeploymentSettings
from ftp_assets_tests.corpus import clean_posts
from ftp_assets_tests.fixtures.s3 import moto_bucket

ROOT = Path(__file__).resolve().parents[1]
HOOK = {"dagster/partition": "hook", "ftp/fine-tune-task": "hook"}
FAST_POLLING = {"resources": {"fine_tuning": {"config": {"poll_initial_seconds": 0.05, "poll_max_seconds": 0.2}}}}


def job_of_the_deployment(name: str):
    """A job of the code location as the environment describes it, executed in-process."""
    defs = Definitions.merge(
        build_definitions(DeploymentSettings.from_environment()), Definitions(executor=in_process_executor)
    )
    return defs.resolve_job_def(name)


def training_cycle():
    return job_of_the_deployment("training_cycle")


def experiment_evaluation():
    return job_of_the_deployment("experiment_evaluation")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[str]:
    with moto_bucket(monkeypatch, "ftp-shared") as bucket:
        yield bucket


def shared_keys(bucket: str, prefix: str) -> list[str]:
    """The objects of the bucket under ``prefix``."""
    s3 = s3fs.S3FileSystem()
    s3.invalidate_cache()
    return s3.find(f"{bucket}/{prefix}")


@pytest.fixture
def production(s3_bucket, pg_database, pg_posts_url, local_openai, tmp_path, monkeypatch) -> dict:
    """A production deployment: posts and the Dagster instance on PostgreSQL, the provider
    (the local service), shared storage on S3; MLflow down at first. The run config."""
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    window_end = datetime.now(UTC)
    db.insert_posts(
        [{**row, "created_at": window_end - timedelta(days=1, minutes=i)} for i, row in enumerate(clean_posts(150))]
    )
    conninfo = conninfo_to_dict(pg_database)
    for name, value in {
        "DAGSTER_PG_HOST": conninfo["host"],
        "DAGSTER_PG_PORT": conninfo.get("port", 5432),
        "DAGSTER_PG_USER": conninfo["user"],
        "DAGSTER_PG_PASSWORD": conninfo.get("password", ""),
        "DAGSTER_PG_DB": conninfo["dbname"],
        "FTP_DEPLOYMENT": "production",
        "FTP_STORAGE_URL": f"s3://{s3_bucket}/ftp",
        "FTP_POSTS_DB_URL": pg_posts_url,
        "OPENAI_API_KEY": local_openai.api_key,
        "OPENAI_BASE_URL": local_openai.base_url,
        # An MLflow server that is down, answering at once instead of after MLflow's own retries.
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{unused_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("FTP_DATASETS_DIR", raising=False)
    return {"ops": {"engaged_posts": {"config": {"window_end": window_end.isoformat()}}}, **FAST_POLLING}


@contextmanager
def pod(folder: Path, monkeypatch) -> Iterator[DagsterInstance]:
    """A new pod: an empty folder for FTP_HOME, DAGSTER_HOME and the working directory, and the
    production instance on the shared PostgreSQL database. Its disk is gone afterwards."""
    dagster_home = folder / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("FTP_HOME", str(folder / "ftp_home"))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.chdir(folder)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance
    monkeypatch.chdir(folder.parent)
    shutil.rmtree(folder)


def test_a_retry_in_a_new_pod_loads_the_dataset_from_shared_storage(
    production, s3_bucket, local_openai, tmp_path, monkeypatch
):
    client = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    job = reconstructable(training_cycle)
    with pod(tmp_path / "first_pod", monkeypatch) as instance:
        first = execute_job(job, instance, run_config=production, tags=HOOK)
        assert not first.success
        (failure,) = [event for event in first.all_events if event.is_step_failure]
        assert failure.step_key == "fine_tuned_model"
        (paid,) = client.fine_tuning.jobs.list().data

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_tracking_uri(tmp_path / "mlflow"))
    second_pod = tmp_path / "second_pod"
    with pod(second_pod, monkeypatch) as instance:
        retried = execute_job(
            job, instance, tags=HOOK, reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance)
        )
        assert retried.success
        assert {e.step_key for e in retried.all_events if e.is_step_start} == {"fine_tuned_model", "ab_experiment"}
        # training_jsonl's value came from S3, and its training file was fetched into this pod.
        fetched = second_pod / "ftp_home" / "datasets" / "hook" / first.run_id / "training.jsonl"
        assert fetched.read_bytes()
        logs = [record.user_message for record in instance.all_logs(retried.run_id)]
        assert any(f"Re-attached to openai fine-tuning job {paid.id}" in message for message in logs)
    assert [j.id for j in client.fine_tuning.jobs.list().data] == [paid.id]
    assert shared_keys(s3_bucket, "ftp/dagster/training_jsonl/")
    assert shared_keys(s3_bucket, f"ftp/datasets/hook/{first.run_id}/")


def test_registered_model_alone_in_a_new_pod_loads_ab_test_result_from_shared_storage(
    production, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_tracking_uri(tmp_path / "mlflow"))
    with pod(tmp_path / "training_pod", monkeypatch) as instance:
        assert execute_job(reconstructable(training_cycle), instance, run_config=production, tags=HOOK).success
    with pod(tmp_path / "evaluation_pod", monkeypatch) as instance:
        # An early look: no outcome has matured, the experiment continues.
        evaluated = execute_job(
            reconstructable(experiment_evaluation),
            instance,
            tags={"dagster/partition": "hook"},
            asset_selection=[AssetKey("ab_test_result")],
        )
        assert evaluated.success
        (result,) = evaluated.asset_materializations_for_node("ab_test_result")
    assert shared_keys(s3_bucket, "ftp/dagster/ab_test_result/hook")

    with pod(tmp_path / "registry_pod", monkeypatch) as instance:
        registered = execute_job(
            reconstructable(experiment_evaluation),
            instance,
            tags={"dagster/partition": "hook"},
            asset_selection=[AssetKey("registered_model")],
        )
        assert registered.success
        (materialization,) = registered.asset_materializations_for_node("registered_model")
        assert result.metadata["decision"].value == "continue"
        assert materialization.metadata["action"].value == "none"  # a "continue" changes no alias
        assert materialization.metadata["experiment_id"].value == result.metadata["experiment_id"].value


def test_datasets_on_a_mounted_volume_are_fetched_by_another_pod(tmp_path):
    """``file://`` (a volume every pod mounts): published once, fetched into the other pod's folder."""
    shared_url = (tmp_path / "volume").as_uri()
    first = DatasetStorage(root=str(tmp_path / "first_pod"), shared_url=shared_url)
    folder = first.folder("hook", "run-1")
    (folder / "training.jsonl").write_bytes(b'{"messages": []}\n')
    shared_folder = first.publish(folder, str(folder / "training.jsonl"), None)
    assert shared_folder == f"{shared_url}/datasets/hook/run-1"
    shutil.rmtree(tmp_path / "first_pod")

    second = DatasetStorage(root=str(tmp_path / "second_pod"), shared_url=shared_url)
    fetched = second.local_file(str(folder / "training.jsonl"), shared_folder)
    assert fetched == str(tmp_path / "second_pod" / "hook" / "run-1" / "training.jsonl")
    assert Path(fetched).read_bytes() == b'{"messages": []}\n'


def test_without_shared_storage_files_and_values_stay_local(tmp_path):
    storage = DatasetStorage(root=str(tmp_path))
    folder = storage.folder("hook", "run-1")
    assert storage.publish(folder, str(folder / "training.jsonl")) == ""
    assert storage.local_file(str(folder / "training.jsonl"), "") == str(folder / "training.jsonl")
    assert "io_manager" not in build_definitions(DeploymentSettings.from_environment()).resources
