"""The whole weekly cycle of one task with real parts: PostgreSQL posts, the local
OpenAI-compatible service over HTTP, an MLflow tracking server over HTTP, and Dagster's
``materialize`` on a test instance."""

import dataclasses
from datetime import timedelta

import openai
import pytest
from dagster import instance_for_test, materialize
from dagster_openai import OpenAIResource

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.mlflow_registry import model_name
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples, low_duplicate_rate, valid_format
from ftp_assets.experiment.assets import ab_experiment, ab_test_result, registered_model
from ftp_assets.resources import (
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
)
from ftp_assets.training.assets import fine_tuned_model
from ftp_assets_tests.corpus import WINDOW_END
from ftp_demo.live_week import simulate_posts
from ftp_demo.posts import DEMO_AGENT_MODEL, generate_demo_posts

TRAINING = [
    engaged_posts,
    training_jsonl,
    enough_examples,
    valid_format,
    low_duplicate_rate,
    fine_tuned_model,
    ab_experiment,
]
EVALUATION = [ab_test_result, registered_model]
WINDOW = {"ops": {"engaged_posts": {"config": {"window_end": WINDOW_END.isoformat()}}}}


@pytest.fixture
def cycle(request, local_openai, local_serving, mlflow_server, mlflow_client, tmp_path):
    """Posts in PostgreSQL (or SQLite, when parametrized so), resources on the real parts, an
    empty registry, a test instance."""
    if getattr(request, "param", "postgresql") == "sqlite":
        posts_url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    else:
        posts_url = request.getfixturevalue("pg_posts_url")
    db = PostsDatabase(posts_url)
    db.init_schema()
    db.insert_posts(generate_demo_posts(1_500, seed=3, end=WINDOW_END))
    resources = {
        "posts_db": PostsDatabaseResource(url=posts_url),
        "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
        "openai": OpenAIResource(api_key=local_openai.api_key, base_url=local_openai.base_url),
        "fine_tuning": FineTuningSettings(poll_initial_seconds=0.05, poll_max_seconds=0.2),
        "self_hosted_training": SelfHostedTraining(),
        "mlflow": MlflowResource(tracking_uri=mlflow_server),
        "experiment_settings": ExperimentSettings(),
        "serving": local_serving,
        "metrics": MetricsPublisher(),
    }
    with instance_for_test() as instance:
        yield db, resources, instance


@pytest.mark.parametrize("cycle", ["postgresql", "sqlite"], indirect=True)
def test_training_then_experiment_then_promotion(cycle, local_openai, mlflow_client):
    db, resources, instance = cycle
    trained = materialize(TRAINING, partition_key="hook", run_config=WINDOW, resources=resources, instance=instance)
    model = trained.output_for_node("fine_tuned_model")
    assert model.model_id.startswith("ft:gpt-4o-mini-2024-07-18:")
    assert trained.output_for_node("ab_experiment").champion_model == DEMO_AGENT_MODEL

    client = mlflow_client
    run = client.get_run(model.mlflow_run_id)
    assert run.data.tags["dagster_run_id"] == trained.run_id
    assert run.data.params["dataset_hash"] == trained.output_for_node("training_jsonl").dataset_hash
    assert client.get_metric_history(model.mlflow_run_id, "train_loss")
    version = client.get_model_version_by_alias(model_name("hook"), "challenger")
    assert version.tags["provider_model_id"] == model.model_id and version.tags["job_id"] == model.job_id
    materialization = trained.asset_materializations_for_node("fine_tuned_model")[0]
    assert materialization.metadata["job_id"].value == model.job_id
    losses = materialization.metadata["train_loss_by_step"].records
    assert [loss.data["step"] for loss in losses] == sorted(loss.data["step"] for loss in losses) and losses
    assert losses[-1].data["train_loss"] == pytest.approx(materialization.metadata["final_train_loss"].value)
    # The provider's key reaches no event, log line, metadata value or MLflow parameter.
    key = local_openai.api_key
    assert all(key not in str(event) for event in trained.all_events)
    assert all(key not in entry.user_message for entry in instance.all_logs(trained.run_id))
    assert key not in str(run.data.params) and key not in str(run.data.tags)

    store = ExperimentStore(db.engine)
    running = store.running("hook")
    assert (running.champion_model, running.challenger_model) == (DEMO_AGENT_MODEL, model.model_id)

    # The agent writes posts during the experiment; the simulated audience reacts.
    start = running.started_at
    write_experiment_posts(db, local_openai, running)
    assert _evaluate(resources, instance, start + timedelta(hours=1)).output_for_node("ab_test_result").decision == (
        "continue"
    )  # an early look with no matured post yet
    evaluated = _evaluate(resources, instance, start + timedelta(days=4))
    assert evaluated.success
    result = evaluated.output_for_node("ab_test_result")
    metadata = evaluated.asset_materializations_for_node("ab_test_result")[0].metadata
    for name in (
        "decision",
        "reason",
        "champion_model",
        "challenger_model",
        "started_at",
        "data_until",
        "rule",
        "n_control",
        "n_treatment",
        "lift",
        "standard_error",
        "statistic",
        "boundary",
        "information_fraction",
        "alpha_spent",
        "ci_lower",
        "ci_upper",
        "variance_reduction",
        "adjustment",
        "srm_p_value",
        "challenger_share",
        "phases",
        "plan",
        "looks",
    ):
        assert name in metadata, name
    assert result.decision == "promote", result.reason
    assert metadata["rule"].value == "group_sequential"
    assert "lift_history" in metadata  # the plot of the looks so far, with the boundary
    assert metadata["statistic"].value >= metadata["boundary"].value and metadata["n_treatment"].value > 50
    (phase,) = (record.data for record in metadata["phases"].records)
    assert (phase["champion_posts"], phase["challenger_posts"]) == (
        metadata["n_control"].value,
        metadata["n_treatment"].value,
    )
    assert phase["lift"] == metadata["lift"].value
    # Both evaluations are looks in the looks table: the boundary never depends on the event log.
    looks = [record.data for record in metadata["looks"].records]
    assert [look["look"] for look in looks] == [1, 2]
    assert looks[-1]["statistic"] == metadata["statistic"].value and looks[-1]["decision"] == "promote"
    assert len(store.looks(result.experiment_id)) == 2
    assert client.get_model_version_by_alias(model_name("hook"), "champion").version == version.version
    assert "challenger" not in client.get_registered_model(model_name("hook")).aliases
    assert store.get(result.experiment_id).status == "promoted"

    # Re-running registered_model on the same decision changes nothing.
    again = materialize(
        EVALUATION, selection=[registered_model], partition_key="hook", resources=resources, instance=instance
    )
    assert "(already done)" in again.asset_materializations_for_node("registered_model")[0].metadata["note"].value
    assert client.get_model_version_by_alias(model_name("hook"), "champion").version == version.version


def test_failed_job_fails_the_asset_and_nothing_downstream_runs(cycle, local_openai, mlflow_client):
    db, resources, instance = cycle
    local_openai.faults.fail_next_job()
    result = materialize(
        TRAINING + EVALUATION,
        partition_key="hook",
        run_config=WINDOW,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "fine_tuned_model"
    assert "Fine-tuning job ftjob-" in failure.step_failure_data.error.message
    executed = {e.step_key for e in result.all_events if e.is_step_start}
    assert not executed & {"ab_test_result", "registered_model"}
    store = ExperimentStore(db.engine)
    store.init_schema()
    assert store.running("hook") is None
    assert not mlflow_client.search_model_versions(f"name = '{model_name('hook')}'")


def test_too_few_examples_never_starts_a_job(cycle, local_openai):
    _, resources, instance = cycle
    config = {"ops": {**WINDOW["ops"], "training_jsonl_enough_examples": {"config": {"min_examples": 100_000}}}}
    result = materialize(
        TRAINING, partition_key="body", run_config=config, resources=resources, instance=instance, raise_on_error=False
    )
    executed = {e.step_key for e in result.all_events if e.is_step_start}
    assert "fine_tuned_model" not in executed
    jobs = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key).fine_tuning.jobs.list()
    assert jobs.data == []


def write_experiment_posts(db, local_openai, running) -> None:
    """Three days of the agent's posts after the hook experiment started, routed by it (the body
    task serves the champion only), as the simulated audience reacts to them."""
    body_arm = dataclasses.replace(running, task="body", challenger_model=running.champion_model)
    client_api = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    start = running.started_at
    db.insert_posts(
        simulate_posts(
            {"openai": client_api},
            {"hook": running, "body": body_arm},
            start=start,
            end=start + timedelta(days=3),
            posts=1_500,
            first_id=10_000,
            seed=1,
            workers=4,
        )
    )


def _train(resources, instance, task="hook", **run_config):
    config = {"ops": {**WINDOW["ops"], **run_config}}
    return materialize(TRAINING, partition_key=task, run_config=config, resources=resources, instance=instance)


def _evaluate(resources, instance, evaluated_at, experiment_id=None, task="hook"):
    config = {"evaluated_at": evaluated_at.isoformat()} | ({"experiment_id": experiment_id} if experiment_id else {})
    return materialize(
        EVALUATION,
        partition_key=task,
        resources=resources,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"ab_test_result": {"config": config}}},
    )


def test_continue_changes_nothing_and_timeout_rejects(cycle, mlflow_client):
    db, resources, instance = cycle
    trained = _train(resources, instance)
    model = trained.output_for_node("fine_tuned_model")
    experiment_id = trained.output_for_node("ab_experiment").experiment_id
    started = ExperimentStore(db.engine).get(experiment_id).started_at

    early = _evaluate(resources, instance, started + timedelta(hours=2))
    assert early.output_for_node("ab_test_result").decision == "continue"
    assert early.output_for_node("registered_model").action == "none"
    aliases = mlflow_client.get_registered_model(model_name("hook")).aliases
    assert aliases == {"challenger": model.registry_version}
    metadata = early.asset_materializations_for_node("ab_test_result")[0].metadata
    assert metadata["lift"].value is None and metadata["n_treatment"].value == 0  # named, even when empty

    late = _evaluate(resources, instance, started + timedelta(hours=169))
    assert late.output_for_node("ab_test_result").decision == "reject"
    assert "maximum duration" in late.output_for_node("ab_test_result").reason
    version = mlflow_client.get_model_version(model_name("hook"), model.registry_version)
    assert version.tags["decision"] == "rejected" and "maximum duration" in version.tags["reason"]
    assert mlflow_client.get_registered_model(model_name("hook")).aliases == {}
    assert ExperimentStore(db.engine).get(experiment_id).status == "rejected"

    # Training again on the same data re-attaches to the same job and starts no second test.
    again = _train(resources, instance)
    assert again.output_for_node("fine_tuned_model").job_id == model.job_id
    assert again.output_for_node("ab_experiment").experiment_id is None


def test_a_superseded_experiment_is_not_evaluated(cycle):
    db, resources, instance = cycle
    first_run = _train(resources, instance)
    first, first_experiment = first_run.output_for_node("fine_tuned_model"), first_run.output_for_node("ab_experiment")
    second = _train(
        resources,
        instance,
        engaged_posts={"config": {"window_end": WINDOW_END.isoformat(), "engagement_threshold": 0.05}},
    )
    second_model = second.output_for_node("fine_tuned_model")
    assert second_model.model_id != first.model_id
    store = ExperimentStore(db.engine)
    assert store.get(first_experiment.experiment_id).status == "superseded"
    assert store.running("hook").experiment_id == second.output_for_node("ab_experiment").experiment_id
    stale = _evaluate(
        resources,
        instance,
        store.get(first_experiment.experiment_id).started_at + timedelta(days=2),
        experiment_id=first_experiment.experiment_id,
    )
    assert not stale.success
    failure = next(e for e in stale.all_events if e.is_step_failure)
    assert "is superseded, not a running hook experiment" in failure.step_failure_data.error.message
