"""The self-hosted provider end to end on real parts: the LoRA trainer (``ftp_trainer``) run as a
subprocess through Dagster Pipes by ``fine_tuned_model``, on a tiny base it builds under FTP_HOME,
an MLflow tracking server, PostgreSQL posts and the experiments table; then the same command a
user types (``dagster asset materialize``), re-run, and terminated."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx2
import openai
import pytest
from dagster import build_asset_context, instance_for_test, materialize
from dagster_openai import OpenAIResource
from upath import UPath

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore
from ftp_assets.adapters.mlflow_registry import model_name
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.adapters.providers.base import FineTuneRequest, FineTuningFailed
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.doctor import run_checks
from ftp_assets.experiment.assets import ab_experiment, registered_model
from ftp_assets.resources import (
    TINY_BASE_NAME,
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
    ServingEndpoints,
)
from ftp_assets.settings import DeploymentSettings
from ftp_assets.steps.data_path import TrainingDataset
from ftp_assets.steps.experiment import AbTestResult
from ftp_assets.training.assets import fine_tuned_model
from ftp_assets.training.self_hosted import SelfHostedTrainer, job_id_for
from ftp_assets_tests.corpus import WINDOW_END
from ftp_demo.posts import generate_demo_posts
from ftp_serving.server import running_server

ROOT = Path(__file__).resolve().parents[1]
WINDOW = {"ops": {"engaged_posts": {"config": {"window_end": WINDOW_END.isoformat()}}}}
# Small enough for two CPU cores in seconds; two epochs so that learning shows on the held-out file.
HYPERPARAMETERS = {"epochs": 2, "lora_rank": 8, "lora_alpha": 16, "batch_size": 8, "max_seq_length": 256}


def _training_log_lines(instance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id) if "train loss" in entry.user_message]


def self_hosted_setup(posts_url: str, mlflow_uri: str, tmp_path: Path) -> tuple[PostsDatabase, dict]:
    """Demo posts in PostgreSQL and the resources of a self-hosted deployment on the real parts."""
    db = PostsDatabase(posts_url)
    db.init_schema()
    db.insert_posts(generate_demo_posts(1_500, seed=3, end=WINDOW_END))
    resources = {
        "posts_db": PostsDatabaseResource(url=posts_url),
        "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
        # Not called: the provider is the self-hosted trainer; an unreachable URL proves it.
        "openai": OpenAIResource(api_key="sk-unused", base_url="http://127.0.0.1:9/v1"),
        "fine_tuning": FineTuningSettings(provider="self_hosted"),
        "self_hosted_training": SelfHostedTraining(**HYPERPARAMETERS),
        "mlflow": MlflowResource(tracking_uri=mlflow_uri),
        "experiment_settings": ExperimentSettings(),
        "metrics": MetricsPublisher(),
    }
    return db, resources


def test_self_hosted_training_registers_the_adapter_and_a_rerun_trains_nothing(
    pg_posts_url, mlflow_server, mlflow_client, tmp_path, isolated_ftp_home
):
    db, resources = self_hosted_setup(pg_posts_url, mlflow_server, tmp_path)
    assets = [engaged_posts, training_jsonl, fine_tuned_model]
    with instance_for_test() as instance:
        first = materialize(assets, partition_key="hook", run_config=WINDOW, resources=resources, instance=instance)
        model = first.output_for_node("fine_tuned_model")
        dataset = first.output_for_node("training_jsonl")

        # The losses reached the run's log while the trainer ran, through Pipes.
        streamed = _training_log_lines(instance, first.run_id)
        assert streamed and all("step" in line for line in streamed)

        # Learning happened: lower validation loss on the held-out file than before training.
        metadata = first.asset_materializations_for_node("fine_tuned_model")[0].metadata
        assert metadata["provider"].value == "self_hosted"
        assert metadata["final_valid_loss"].value < float(metadata["initial_valid_loss"].value)
        assert metadata["trained_tokens"].value > 0

        # The registry's version holds the adapter and its manifest, and says what it needs.
        version = mlflow_client.get_model_version_by_alias(model_name("hook"), "challenger")
        assert str(version.version) == model.registry_version and model.provider == "self_hosted"
        assert version.tags["provider"] == "self_hosted"
        # The tiny base by its name, so the job's key does not depend on where FTP_HOME is.
        assert version.tags["base_model"] == "ftp-tiny-chat-base"
        assert (isolated_ftp_home / "models" / "tiny-chat-base" / "config.json").exists()
        assert version.tags["provider_model_id"] == model.model_id == f"threads-hook-{model.job_id}"
        assert version.source.endswith("/provider_model")
        downloaded = Path(mlflow_client.download_artifacts(version.run_id, "provider_model", str(tmp_path / "dl")))
        manifest = json.loads((downloaded / "manifest.json").read_text())
        weights = (downloaded / "adapter" / "adapter_model.safetensors").read_bytes()
        assert manifest["job_id"] == model.job_id and manifest["dataset_hash"] == dataset.dataset_hash
        assert hashlib.sha256(weights).hexdigest() == manifest["adapter_sha256"] == version.tags["adapter_sha256"]
        assert (downloaded / "adapter" / "tokenizer.json").exists()
        assert manifest["hyperparameters"]["lora_rank"] == 8

        # One durable record for the key, with the job id derived from it.
        record = FineTuningJobStore(db.engine).get(_key_of(mlflow_client, model.mlflow_run_id))
        assert record is not None and (record.provider, record.job_id, record.status) == (
            "self_hosted",
            model.job_id,
            "created",
        )

        # The same materialization again: the finished adapter is reused, nothing is trained.
        second = materialize(assets, partition_key="hook", run_config=WINDOW, resources=resources, instance=instance)
        again = second.output_for_node("fine_tuned_model")
        assert second.output_for_node("training_jsonl").dataset_hash == dataset.dataset_hash
        assert (again.job_id, again.registry_version) == (model.job_id, model.registry_version)
        assert _training_log_lines(instance, second.run_id) == []
        messages = [entry.user_message for entry in instance.all_logs(second.run_id)]
        assert any("nothing is trained" in message for message in messages)
        assert [p.name for p in (isolated_ftp_home / "adapters" / "hook").iterdir()] == [model.job_id]

        # A base model that is not there: the trainer refuses in one sentence, the asset fails
        # saying where to read it, and nothing is registered.
        missing = tmp_path / "no-such-model"
        broken = {**resources, "self_hosted_training": SelfHostedTraining(**HYPERPARAMETERS, base_model=str(missing))}
        failed = materialize(
            assets, partition_key="hook", run_config=WINDOW, resources=broken, instance=instance, raise_on_error=False
        )
        assert not failed.success
        (failure,) = [event for event in failed.all_events if event.event_type_value == "STEP_FAILURE"]
        assert "trainer_failed" in str(failure.event_specific_data.error.message)
        errors = [entry.user_message for entry in instance.all_logs(failed.run_id) if entry.level >= 40]
        assert any(str(missing) in message for message in errors), errors
        versions = mlflow_client.search_model_versions(f"name='{model_name('hook')}'")
        assert [str(v.version) for v in versions] == [model.registry_version]


def test_a_self_hosted_challenger_is_served_gated_tested_against_the_openai_champion_and_retired(
    pg_posts_url, mlflow_server, mlflow_client, tmp_path, isolated_ftp_home, monkeypatch
):
    """The adapter served on CPU by name from the trainer's folder (ftp-serve, as vLLM in
    production), the readiness gate through that endpoint (a truncated adapter stops the
    experiment), the experiment's arms on two endpoints, and a rejection that retires it."""
    db, resources = self_hosted_setup(pg_posts_url, mlflow_server, tmp_path)
    assets = [engaged_posts, training_jsonl, fine_tuned_model, ab_experiment]
    base = isolated_ftp_home / "models" / "tiny-chat-base"
    with instance_for_test() as instance:
        # The base exists once the trainer built it; serving starts on it, as a deployment's would.
        training = materialize(
            assets[:3], partition_key="hook", run_config=WINDOW, resources=resources, instance=instance
        )
        model = training.output_for_node("fine_tuned_model")
        weights = isolated_ftp_home / "adapters" / "hook" / model.job_id / "adapter" / "adapter_model.safetensors"
        intact = weights.read_bytes()
        with running_server(base, TINY_BASE_NAME, isolated_ftp_home / "adapters", threads=1) as server:
            resources["serving"] = ServingEndpoints(serving_url=server.base_url, local_keys=True)
            served = openai.OpenAI(base_url=server.base_url, api_key="no-key-local")

            # A truncated weights file: serving refuses it by its hash, the gate stops the experiment.
            weights.write_bytes(intact[: len(intact) // 2])
            refused = materialize(
                assets,
                partition_key="hook",
                run_config=WINDOW,
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
            assert not refused.success
            (failure,) = [event for event in refused.all_events if event.event_type_value == "STEP_FAILURE"]
            message = failure.event_specific_data.error.message
            assert f"{model.model_id} (version {model.registry_version}) failed the readiness gate" in message
            assert "SHA-256" in message or "sha256" in message.lower(), message
            assert ExperimentStore(db.engine).running("hook") is None
            version = mlflow_client.get_model_version(model_name("hook"), model.registry_version)
            assert version.tags["readiness"] == "failed" and "404" in version.tags["readiness_reason"]

            # The intact bytes again: the challenger answers, the experiment starts across two endpoints.
            weights.write_bytes(intact)
            passed = materialize(
                assets, partition_key="hook", run_config=WINDOW, resources=resources, instance=instance
            )
            started = passed.output_for_node("ab_experiment")
            running = ExperimentStore(db.engine).running("hook")
            assert running.experiment_id == started.experiment_id
            assert (running.champion_model, running.champion_endpoint) == (
                ExperimentSettings().hook_agent_model,
                "openai",
            )
            assert (running.challenger_model, running.challenger_endpoint) == (model.model_id, "self_hosted")
            version = mlflow_client.get_model_version(model_name("hook"), model.registry_version)
            assert (version.tags["readiness"], version.tags["serving_endpoint"]) == ("passed", "self_hosted")
            assert "readiness_reason" not in version.tags  # the earlier failure's reason is gone
            gate = mlflow_client.download_artifacts(version.run_id, f"readiness/{model.model_id}.json", str(tmp_path))
            generations = json.loads(Path(gate).read_text())["generations"]
            assert len(generations) == 5 and all(g["reply"] and g["problem"] is None for g in generations)

            # The agent's call: the routed arm's model by name at the routed endpoint, through openai.
            challenger_unit = next(unit for unit in range(1_000) if running.route(unit).arm == "challenger")
            route = running.route(challenger_unit)
            assert (route.model, route.endpoint) == (model.model_id, "self_hosted")
            reply = served.chat.completions.create(
                model=route.model, messages=[{"role": "user", "content": "Morning routines"}], max_tokens=20
            )
            assert reply.choices[0].message.content

            # ftp-assets doctor calls the serving endpoint and the running challenger by name ...
            for variable, value in {
                "FTP_PROVIDER": "self_hosted",
                "FTP_SERVING_URL": server.base_url,
                "FTP_POSTS_DB_URL": pg_posts_url,
                "MLFLOW_TRACKING_URI": mlflow_server,
            }.items():
                monkeypatch.setenv(variable, value)
            found = {check.name: check for check in run_checks(DeploymentSettings.from_environment())}
            assert found["serving.self_hosted"].verdict == "ok", found["serving.self_hosted"]
            assert found["serving.hook.challenger"].verdict == "ok", found["serving.hook.challenger"]
            # ... and finds it broken once its bytes are: unloaded, then truncated, it no longer resolves.
            served.post("/unload_lora_adapter", body={"lora_name": model.model_id}, cast_to=httpx2.Response)
            weights.write_bytes(intact[:100])
            broken = {check.name: check for check in run_checks(DeploymentSettings.from_environment())}
            assert broken["serving.hook.challenger"].verdict == "FAIL"
            assert "404" in broken["serving.hook.challenger"].detail
            weights.write_bytes(intact)

            # Rejected: the adapter is retired, and serving no longer resolves it.
            rejection = AbTestResult(
                task="hook",
                experiment_id=running.experiment_id,
                decision="reject",
                reason="it loses",
                champion_model=running.champion_model,
                challenger_model=running.challenger_model,
                registry_version=running.registry_version,
                started_at=running.started_at,
                evaluated_at=running.started_at + timedelta(days=7),
                data_until=running.started_at + timedelta(days=6),
                statistics={"lift": -0.1},
            )
            with build_asset_context(partition_key="hook", resources=resources) as context:
                registered = registered_model(context, ab_test_result=rejection).value
            assert registered.action == "rejected"
            marker = isolated_ftp_home / "adapters" / "hook" / model.job_id / "retired.json"
            assert "rejected" in json.loads(marker.read_text())["reason"]
            version = mlflow_client.get_model_version(model_name("hook"), model.registry_version)
            assert version.tags["serving"] == "retired"
            with pytest.raises(openai.NotFoundError, match="retired"):
                served.chat.completions.create(
                    model=model.model_id, messages=[{"role": "user", "content": "Morning routines"}], max_tokens=5
                )


def test_the_trainer_pod_reads_and_writes_shared_storage_and_checkpoints_on_its_work_volume(tmp_path):
    """The command line a production pod gets (the pod itself cannot run here: no cluster)."""
    dataset = TrainingDataset(
        task="body",
        training_path=str(tmp_path / "train.jsonl"),
        validation_path=str(tmp_path / "valid.jsonl"),
        training_examples=200,
        validation_examples=20,
        dropped={},
        dataset_hash="d" * 64,
        training_tokens=1e4,
        tokens_exact=True,
        tokens_relative_standard_error=0.0,
        mean_tokens_per_example=50.0,
        max_tokens_per_example=90,
        billed_training_tokens=3e4,
        estimated_cost_usd=0.1,
        n_epochs=3,
        usd_per_million_training_tokens=3.0,
        shared_folder="s3://bucket/ftp/datasets/body/run-1",
    )
    settings = SelfHostedTraining(
        launcher="kubernetes",
        base_model="/models/Qwen2.5-1.5B-Instruct",
        adapters_url="s3://bucket/ftp/adapters",
        image="trainer:1",
        threads=8,
    )
    options = settings.fine_tune_options(FineTuningSettings())
    request = FineTuneRequest(
        task="body",
        dataset_hash=dataset.dataset_hash,
        training_file=Path(dataset.training_path),
        base_model=options.base_model,
        suffix="threads-body",
        n_epochs=options.n_epochs,
        batch_size=options.batch_size,
        seed=options.seed,
        extra_hyperparameters=options.extra_hyperparameters,
    )
    job_id = job_id_for(request)
    trainer = SelfHostedTrainer(
        build_asset_context(partition_key="body"), settings, dataset, dataset.shared_folder, None, DatasetStorage()
    )
    destination = UPath(settings.adapters_url) / "body" / job_id
    arguments = trainer._arguments(request, job_id, destination, in_pod=True)
    flags = dict(zip(arguments[1::2], arguments[2::2], strict=False))
    assert arguments[0] == "train" and arguments[-1] != "--build-tiny-base"
    assert flags["--training-file"] == "s3://bucket/ftp/datasets/body/run-1/train.jsonl"
    assert flags["--validation-file"] == "s3://bucket/ftp/datasets/body/run-1/valid.jsonl"
    assert flags["--output-url"] == f"s3://bucket/ftp/adapters/body/{job_id}"
    assert flags["--work-dir"] == f"/var/lib/ftp-trainer/body/{job_id}"
    assert flags["--base-model"] == "/models/Qwen2.5-1.5B-Instruct"
    config = json.loads(flags["--config"])
    assert config["threads"] == 8 and config["lora_rank"] == 16 and config["target_modules"] == "all-linear"
    # The thread count changes rounding only: it is not part of the key; the LoRA settings are.
    assert "threads" not in request.hyperparameters
    changed = FineTuneRequest(**{**request.__dict__, "extra_hyperparameters": {**config, "lora_rank": 8}})
    assert job_id_for(changed) != job_id

    # Without shared storage a pod could not read the files: refused before any pod starts.
    local_only = SelfHostedTrainer(
        build_asset_context(partition_key="body"), settings, dataset, "", None, DatasetStorage()
    )
    with pytest.raises(FineTuningFailed, match="set FTP_STORAGE_URL"):
        local_only._arguments(request, job_id, destination, in_pod=True)


def _key_of(client, run_id: str) -> str:
    return client.get_run(run_id).data.params["idempotency_key"]


def _dagster_materialize(env: dict, tmp_path: Path, config: dict, log_name: str) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "ftp_assets.definitions",
        "--select",
        "engaged_posts,training_jsonl,fine_tuned_model",
        "--partition",
        "hook",
        "--config-json",
        json.dumps(config),
    ]
    with open(tmp_path / log_name, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["env", "--default-signal=INT,TERM", *command],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _trainer_processes(home: Path) -> list[int]:
    """Pids of trainer processes working under ``home`` (their command line names its paths)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"ftp_trainer" in command and str(home).encode() in command:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_the_documented_command_trains_once_and_terminating_the_run_stops_the_trainer(tmp_path):
    """``FTP_PROVIDER=self_hosted dagster asset materialize ...`` on the embedded defaults, as the
    docs print it: trains, then trains nothing the second time; a run with new hyperparameters
    is interrupted while it trains, and its trainer stops without leaving an adapter."""
    home = tmp_path / "home"
    home.mkdir()
    db = PostsDatabase(f"sqlite:///{home / 'posts.sqlite3'}")  # the embedded default's file
    db.init_schema()
    db.insert_posts(generate_demo_posts(1_500, seed=5, end=WINDOW_END))
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FTP_POSTS_DB_URL", "MLFLOW_TRACKING_URI", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    env.update(FTP_PROVIDER="self_hosted", FTP_HOME=str(home), DAGSTER_HOME=str(dagster_home))

    def config(**hyperparameters) -> dict:
        return {**WINDOW, "resources": {"self_hosted_training": {"config": hyperparameters}}}

    for attempt in ("first", "second"):
        run = _dagster_materialize(env, tmp_path, config(**HYPERPARAMETERS), f"{attempt}.log")
        assert run.wait(600) == 0, (tmp_path / f"{attempt}.log").read_text()[-3000:]
    first, second = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert "train loss" in first and "RUN_SUCCESS" in first
    assert "nothing is trained" in second and "train loss" not in second
    adapters = list((home / "adapters" / "hook").iterdir())
    assert len(adapters) == 1 and (adapters[0] / "manifest.json").exists()

    # New hyperparameters: a new key, so a new training, long enough to interrupt.
    run = _dagster_materialize(env, tmp_path, config(**{**HYPERPARAMETERS, "epochs": 200}), "third.log")
    try:
        deadline = time.monotonic() + 300
        while "train loss" not in (tmp_path / "third.log").read_text() and time.monotonic() < deadline:
            assert run.poll() is None, (tmp_path / "third.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _trainer_processes(home), "the trainer should be running"
        # To the Dagster process alone, as Dagster's termination does: the step's Pipes client must
        # pass it on to the trainer, which shares none of it.
        os.kill(run.pid, signal.SIGINT)
        run.wait(90)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _trainer_processes(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _trainer_processes(home) == []
    assert "[pipes] execution interrupted" in (tmp_path / "third.log").read_text()
    # Only the first adapter is finished; the interrupted one left no manifest.
    finished = [folder for folder in (home / "adapters" / "hook").iterdir() if (folder / "manifest.json").exists()]
    assert finished == adapters
