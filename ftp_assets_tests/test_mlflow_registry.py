"""The MLflow run, registry, aliases and rollback, against a real tracking server over HTTP
(and once against the embedded SQLite store, through the same code)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from ftp_assets.adapters.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    EXPERIMENT_NAME,
    PREVIOUS_CHAMPION,
    RegistryError,
    champion,
    local_tracking_uri,
    log_fine_tune_run,
    model_name,
    promote,
    register_challenger,
    reject,
    rollback,
)

DECISION_STATISTICS = {"lift": 0.183, "ci_lower": 0.041, "ci_upper": 0.325, "srm_p_value": 0.62}


def record_fine_tune(client: MlflowClient, task: str, job_number: int, sample_path=None) -> str:
    return log_fine_tune_run(
        client,
        task=task,
        dagster_run_id=f"dagster-run-{task}-{job_number}",
        params={"base_model": "gpt-4o-mini-2024-07-18", "n_epochs": 3},
        step_metrics=[{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5}],
        metrics={"trained_tokens": 1000},
        sample_path=sample_path,
    )


def register_fine_tuned(client: MlflowClient, task: str, job_number: int) -> str:
    """A fine-tune run and its challenger version; returns the version number."""
    run_id = record_fine_tune(client, task, job_number)
    version = register_challenger(
        client,
        task=task,
        run_id=run_id,
        provider_model_id=f"ft:gpt-4o-mini-2024-07-18:demo-org:{task}:job{job_number}",
        job_id=f"ftjob-{job_number}",
        training_file_id=f"file-{job_number}",
        dataset_hash=f"sha256:{job_number:064x}",
        base_model="gpt-4o-mini-2024-07-18",
    )
    return str(version.version)


def aliases(client: MlflowClient, task: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(model_name(task)).aliases.items()}


def test_fine_tune_run_records_params_step_losses_cost_sample_and_dagster_run(mlflow_client, tmp_path):
    sample_path = tmp_path / "sample.jsonl"
    sample_path.write_text('{"messages": [{"role": "assistant", "content": "Hi 👋"}]}\n')

    run_id = log_fine_tune_run(
        mlflow_client,
        task="body",
        dagster_run_id="4f1c2a9e-0000-4000-8000-000000000001",
        params={
            "base_model": "gpt-4o-mini-2024-07-18",
            "n_epochs": 3,
            "dataset_hash": "sha256:abc",
            "n_train_examples": 120,
            "engagement_threshold": 0.06,
            "estimated_tokens": 54000,
        },
        step_metrics=[
            {"step": 1, "train_loss": 2.5, "valid_loss": None},
            {"step": 2, "train_loss": 2.0, "valid_loss": 2.2},
            {"step": 3, "train_loss": 1.5, "valid_loss": 1.9},
        ],
        metrics={"trained_tokens": 53870, "cost_usd": 0.162},
        sample_path=sample_path,
    )

    run = mlflow_client.get_run(run_id)
    experiment = mlflow_client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == "4f1c2a9e-0000-4000-8000-000000000001"
    assert run.data.tags["task"] == "body"
    assert run.data.params["n_epochs"] == "3"
    assert run.data.params["engagement_threshold"] == "0.06"
    assert run.data.metrics["trained_tokens"] == 53870
    assert run.data.metrics["cost_usd"] == pytest.approx(0.162)
    train_loss = mlflow_client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in train_loss] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    valid_loss = mlflow_client.get_metric_history(run_id, "valid_loss")
    assert [(m.step, m.value) for m in valid_loss] == [(2, 2.2), (3, 1.9)]

    mlflow_client.download_artifacts(run_id, "training_sample", str(tmp_path / "downloaded"))
    downloaded = tmp_path / "downloaded" / "training_sample" / "sample.jsonl"
    assert downloaded.read_text() == sample_path.read_text()


def test_a_run_that_fails_while_logging_is_marked_failed(mlflow_client, tmp_path):
    with pytest.raises(OSError):
        record_fine_tune(mlflow_client, "hook", 1, sample_path=tmp_path / "missing.jsonl")

    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    [run] = mlflow_client.search_runs([experiment.experiment_id], "tags.dagster_run_id = 'dagster-run-hook-1'")
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("secret_key", ["api_key", "OPENAI_API_KEY", "hf_token", "db-password", "clientSecret"])
def test_secret_looking_params_are_refused_before_anything_is_recorded(mlflow_client, secret_key):
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    runs_before = len(mlflow_client.search_runs([experiment.experiment_id])) if experiment else 0
    with pytest.raises(ValueError, match=secret_key):
        log_fine_tune_run(
            mlflow_client,
            task="hook",
            dagster_run_id="run-1",
            params={"base_model": "gpt-4o-mini", secret_key: "sk-not-a-real-key"},
            step_metrics=[],
            metrics={},
            sample_path=None,
        )

    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    runs_after = len(mlflow_client.search_runs([experiment.experiment_id])) if experiment else 0
    assert runs_after == runs_before


def test_register_challenger_records_the_provider_model_and_is_idempotent(mlflow_client, tmp_path):
    run_id = record_fine_tune(mlflow_client, "hook", 1)
    arguments = dict(
        task="hook",
        run_id=run_id,
        provider_model_id="ft:gpt-4o-mini-2024-07-18:demo-org:hook:job1",
        job_id="ftjob-1",
        training_file_id="file-1",
        dataset_hash="sha256:0123",
        base_model="gpt-4o-mini-2024-07-18",
    )

    version = register_challenger(mlflow_client, **arguments)

    assert version.name == "threads_agent_hook_model"
    assert version.aliases == [CHALLENGER]
    assert version.run_id == run_id
    assert version.source == f"runs:/{run_id}/provider_model"
    assert {key: version.tags[key] for key in arguments} == arguments
    mlflow_client.download_artifacts(run_id, "provider_model", str(tmp_path))
    described = json.loads((tmp_path / "provider_model" / "provider_model.json").read_text())
    assert described["provider_model_id"] == arguments["provider_model_id"]

    again = register_challenger(mlflow_client, **arguments)

    assert again.version == version.version
    assert len(mlflow_client.search_model_versions("name = 'threads_agent_hook_model'")) == 1
    assert champion(mlflow_client, "hook") is None


@pytest.mark.parametrize(
    "provider_model_id", ["ft:gpt-4o-mini:o'brien:hook:job1", "ft:gpt-4o-mini:say \"hi\" 'x':job1"]
)
def test_a_provider_model_id_with_quotes_registers_once(mlflow_client, provider_model_id):
    run_id = record_fine_tune(mlflow_client, "hook", 1)
    arguments = dict(
        task="hook",
        run_id=run_id,
        provider_model_id=provider_model_id,
        job_id="ftjob-1",
        training_file_id="file-1",
        dataset_hash="sha256:0123",
        base_model="gpt-4o-mini-2024-07-18",
    )

    version = register_challenger(mlflow_client, **arguments)
    again = register_challenger(mlflow_client, **arguments)

    assert version.tags["provider_model_id"] == provider_model_id
    assert again.version == version.version
    assert len(mlflow_client.search_model_versions("name = 'threads_agent_hook_model'")) == 1


def test_register_retried_after_a_crash_before_the_alias_makes_it_challenger(mlflow_client):
    version = register_fine_tuned(mlflow_client, "hook", 1)
    mlflow_client.delete_registered_model_alias(model_name("hook"), CHALLENGER)

    assert register_fine_tuned(mlflow_client, "hook", 1) == version
    assert aliases(mlflow_client, "hook") == {CHALLENGER: version}


def test_promote_moves_champion_keeps_previous_removes_challenger_and_records_decision(
    mlflow_client,
):
    first = register_fine_tuned(mlflow_client, "hook", 1)
    assert promote(mlflow_client, "hook", first, DECISION_STATISTICS) is True
    assert aliases(mlflow_client, "hook") == {CHAMPION: first}

    second = register_fine_tuned(mlflow_client, "hook", 2)
    body_challenger = register_fine_tuned(mlflow_client, "body", 1)
    assert aliases(mlflow_client, "hook") == {CHAMPION: first, CHALLENGER: second}

    assert promote(mlflow_client, "hook", second, DECISION_STATISTICS) is True

    assert aliases(mlflow_client, "hook") == {CHAMPION: second, PREVIOUS_CHAMPION: first}
    promoted = champion(mlflow_client, "hook")
    assert promoted.version == second
    assert promoted.tags["decision"] == "promoted"
    assert promoted.tags["lift"] == "0.183"
    assert promoted.tags["srm_p_value"] == "0.62"
    assert aliases(mlflow_client, "body") == {CHALLENGER: body_challenger}
    assert champion(mlflow_client, "body") is None


def test_promoting_twice_changes_nothing_the_second_time(mlflow_client):
    first = register_fine_tuned(mlflow_client, "body", 1)
    promote(mlflow_client, "body", first, DECISION_STATISTICS)
    second = register_fine_tuned(mlflow_client, "body", 2)
    promote(mlflow_client, "body", second, DECISION_STATISTICS)
    name = model_name("body")
    before = [mlflow_client.get_model_version(name, v) for v in (first, second)]

    assert promote(mlflow_client, "body", second, DECISION_STATISTICS) is False

    after = [mlflow_client.get_model_version(name, v) for v in (first, second)]
    assert [(v.aliases, v.tags, v.last_updated_timestamp) for v in after] == [
        (v.aliases, v.tags, v.last_updated_timestamp) for v in before
    ]


def test_promote_finishes_a_promotion_interrupted_after_moving_champion(mlflow_client):
    version = register_fine_tuned(mlflow_client, "hook", 1)
    mlflow_client.set_registered_model_alias(model_name("hook"), CHAMPION, version)

    assert promote(mlflow_client, "hook", version, DECISION_STATISTICS) is True

    assert aliases(mlflow_client, "hook") == {CHAMPION: version}
    assert champion(mlflow_client, "hook").tags["decision"] == "promoted"


def test_a_promoted_and_replaced_version_is_not_promoted_again(mlflow_client):
    first = register_fine_tuned(mlflow_client, "hook", 1)
    promote(mlflow_client, "hook", first, DECISION_STATISTICS)
    second = register_fine_tuned(mlflow_client, "hook", 2)
    promote(mlflow_client, "hook", second, DECISION_STATISTICS)

    with pytest.raises(RegistryError, match=f"version {first} already has the decision 'promoted'"):
        promote(mlflow_client, "hook", first, DECISION_STATISTICS)
    assert aliases(mlflow_client, "hook") == {CHAMPION: second, PREVIOUS_CHAMPION: first}


def test_reject_removes_challenger_tags_the_reason_and_is_idempotent(mlflow_client):
    incumbent = register_fine_tuned(mlflow_client, "hook", 1)
    promote(mlflow_client, "hook", incumbent, DECISION_STATISTICS)
    loser = register_fine_tuned(mlflow_client, "hook", 2)
    reason = "always-valid interval for the lift lies below zero"

    assert reject(mlflow_client, "hook", loser, reason, {"lift": -0.12}) is True

    assert aliases(mlflow_client, "hook") == {CHAMPION: incumbent}
    rejected = mlflow_client.get_model_version(model_name("hook"), loser)
    assert rejected.tags["decision"] == "rejected"
    assert rejected.tags["reason"] == reason
    assert rejected.tags["lift"] == "-0.12"
    assert reject(mlflow_client, "hook", loser, reason, {"lift": -0.12}) is False
    with pytest.raises(RegistryError, match="'rejected'"):
        promote(mlflow_client, "hook", loser, DECISION_STATISTICS)
    with pytest.raises(RegistryError, match="rollback, not reject"):
        reject(mlflow_client, "hook", incumbent, reason, {})
    assert aliases(mlflow_client, "hook") == {CHAMPION: incumbent}


def test_rollback_restores_the_previous_champion_once(mlflow_client):
    first = register_fine_tuned(mlflow_client, "body", 1)
    promote(mlflow_client, "body", first, DECISION_STATISTICS)
    second = register_fine_tuned(mlflow_client, "body", 2)
    promote(mlflow_client, "body", second, DECISION_STATISTICS)

    restored, demoted = rollback(mlflow_client, "body")

    assert (str(restored.version), str(demoted.version)) == (first, second)
    assert aliases(mlflow_client, "body") == {CHAMPION: first}
    assert champion(mlflow_client, "body").version == first
    demoted = mlflow_client.get_model_version(model_name("body"), second)
    assert demoted.tags["rolled_back"] == "true"
    assert demoted.tags["decision"] == "promoted"

    with pytest.raises(RegistryError, match="Nothing to roll back.*champion is version " + first):
        rollback(mlflow_client, "body")
    with pytest.raises(RegistryError, match="was rolled back"):
        promote(mlflow_client, "body", second, DECISION_STATISTICS)
    assert aliases(mlflow_client, "body") == {CHAMPION: first}

    # The next promotion makes the restored champion reachable again.
    third = register_fine_tuned(mlflow_client, "body", 3)
    promote(mlflow_client, "body", third, DECISION_STATISTICS)
    assert aliases(mlflow_client, "body") == {CHAMPION: third, PREVIOUS_CHAMPION: first}


def test_rollback_with_nothing_to_roll_back_raises_a_clear_error(mlflow_client):
    with pytest.raises(RegistryError, match=r"Nothing to roll back.*champion is unset"):
        rollback(mlflow_client, "hook")

    only = register_fine_tuned(mlflow_client, "hook", 1)
    promote(mlflow_client, "hook", only, DECISION_STATISTICS)

    with pytest.raises(RegistryError, match="no previous-champion alias"):
        rollback(mlflow_client, "hook")
    assert aliases(mlflow_client, "hook") == {CHAMPION: only}


def test_rollback_refuses_the_state_an_interrupted_rollback_leaves(mlflow_client):
    first = register_fine_tuned(mlflow_client, "hook", 1)
    promote(mlflow_client, "hook", first, DECISION_STATISTICS)
    second = register_fine_tuned(mlflow_client, "hook", 2)
    promote(mlflow_client, "hook", second, DECISION_STATISTICS)
    mlflow_client.set_registered_model_alias(model_name("hook"), CHAMPION, first)

    with pytest.raises(RegistryError, match="an interrupted rollback"):
        rollback(mlflow_client, "hook")
    assert aliases(mlflow_client, "hook") == {CHAMPION: first, PREVIOUS_CHAMPION: first}


def test_unknown_task_is_refused(mlflow_client):
    with pytest.raises(ValueError, match="unknown task 'hooks'"):
        champion(mlflow_client, "hooks")


def test_local_sqlite_store_keeps_everything_under_its_home(tmp_path, monkeypatch):
    working_directory = tmp_path / "cwd"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    home = tmp_path / "ftp_home" / "mlflow"
    uri = local_tracking_uri(home)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    sample_path = tmp_path / "sample.jsonl"
    sample_path.write_text('{"messages": []}\n')

    run_id = record_fine_tune(client, "hook", 1, sample_path=sample_path)
    first = register_challenger(
        client,
        task="hook",
        run_id=run_id,
        provider_model_id="ft:gpt-4o-mini:demo-org:hook:local1",
        job_id="ftjob-local1",
        training_file_id="file-local1",
        dataset_hash="sha256:local",
        base_model="gpt-4o-mini",
    )
    promote(client, "hook", first.version, DECISION_STATISTICS)
    second = register_fine_tuned(client, "hook", 2)
    promote(client, "hook", second, DECISION_STATISTICS)
    restored, _ = rollback(client, "hook")

    assert str(restored.version) == str(first.version)
    assert str(champion(client, "hook").version) == str(first.version)
    assert (home / "mlflow.db").is_file()
    assert len(list((home / "artifacts").rglob("training_sample/sample.jsonl"))) == 1
    assert list(working_directory.iterdir()) == []
