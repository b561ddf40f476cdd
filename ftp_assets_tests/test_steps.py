"""The training and experiment steps called as plain functions, without Dagster, on real parts:
the local OpenAI-compatible service, MLflow's registry (a tracking server over HTTP, and the local
SQLite store) and the experiments table beside posts in PostgreSQL."""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
from mlflow import MlflowClient

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore
from ftp_assets.adapters.mlflow_registry import (
    EXPERIMENT_NAME,
    RegistryError,
    local_tracking_uri,
    log_fine_tune_run,
    model_name,
    register_challenger,
    versions_to_retire,
)
from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, Window
from ftp_assets.adapters.providers.base import BudgetExceeded, FineTuneRequest, FineTuningTimeout, ProviderUnreachable
from ftp_assets.adapters.providers.openai_provider import OpenAIFineTuningProvider
from ftp_assets.adapters.served_adapters import is_retired, retire_adapter
from ftp_assets.domain.chat_format import auto_n_epochs
from ftp_assets.resources import local_service_down
from ftp_assets.steps.data_path import DatasetOptions, TrainingDataset, build_training_files, collect_engaged_posts
from ftp_assets.steps.experiment import (
    AbTestResult,
    ArmServing,
    ChallengerNotReady,
    DecisionRule,
    ExperimentError,
    apply_decision,
    evaluate_experiment,
    rollback_champion_of,
    start_experiment,
)
from ftp_assets.steps.fine_tune import (
    TRAINING_SAMPLE_LINES,
    FineTunedModel,
    FineTuneOptions,
    ProviderTrainer,
    fine_tune,
)
from ftp_assets.steps.readiness import Generation, Readiness
from ftp_assets_tests.corpus import WINDOW_END, clean_posts, post

AGENT_MODEL = "gpt-4o-mini-2024-07-18"
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
STARTED = NOW - timedelta(days=4)
RULE = DecisionRule(
    maturity_hours=24,
    alpha=0.05,
    minimum_lift=0.0,
    minimum_detectable_effect=0.1,
    max_duration_hours=168,
    srm_threshold=0.001,
)


def local_registry(tmp_path: Path) -> MlflowClient:
    uri = local_tracking_uri(tmp_path / "mlflow")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --- fine_tune -----------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> TrainingDataset:
    """The hook task's training files, made by the data path's own steps from clean posts."""
    db = PostsDatabase(f"sqlite:///{tmp_path / 'posts.sqlite3'}")
    db.init_schema()
    db.insert_posts(clean_posts(150))
    window = Window(WINDOW_END - timedelta(days=7), WINDOW_END)
    engaged = collect_engaged_posts(db, "hook", window, SelectionRule(), tmp_path / "engaged.parquet")
    return build_training_files(engaged, tmp_path / "jsonl", DatasetOptions())


@pytest.fixture
def job_records(tmp_path) -> FineTuningJobStore:
    """The fine-tuning job records beside the posts, as the asset gets them."""
    engine = PostsDatabase(f"sqlite:///{tmp_path / 'posts.sqlite3'}").engine
    ExperimentStore(engine).init_schema()
    return FineTuningJobStore(engine)


def options(**changes) -> FineTuneOptions:
    settings = dict(
        base_model=AGENT_MODEL,
        n_epochs=2,
        seed=7,
        budget_usd=50.0,
        timeout_s=600.0,
        poll_initial_s=0.05,
        poll_max_s=0.2,
    )
    return FineTuneOptions(**settings | changes)


def test_fine_tune_records_the_job_and_registers_its_model_as_challenger(local_openai, dataset, tmp_path, job_records):
    provider = OpenAIFineTuningProvider(openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key))
    client = local_registry(tmp_path)
    logs: list[str] = []
    trained = fine_tune(
        ProviderTrainer(provider, job_records, options(), logs.append),
        client,
        dataset,
        options(),
        dagster_run_id="dagster-run-1",
    )

    model, result = trained.model, trained.result
    assert model.task == "hook" and model.model_id.startswith(f"ft:{AGENT_MODEL}:")
    assert (model.job_id, model.dataset_hash, model.base_model) == (result.job_id, dataset.dataset_hash, AGENT_MODEL)
    assert any(f"Started openai fine-tuning job {model.job_id}" in line for line in logs)
    # Billed at the price the estimate used.
    assert result.trained_tokens > 0
    assert trained.actual_cost_usd == pytest.approx(
        result.trained_tokens / 1e6 * dataset.usd_per_million_training_tokens
    )

    run = client.get_run(model.mlflow_run_id)
    assert run.data.tags["dagster_run_id"] == "dagster-run-1" and run.data.tags["task"] == "hook"
    recorded = {
        name: run.data.params[name] for name in ("provider", "n_epochs", "requested_n_epochs", "seed", "job_id")
    }
    assert recorded == {
        "provider": "openai",
        "n_epochs": "2",
        "requested_n_epochs": "2",
        "seed": "7",
        "job_id": model.job_id,
    }
    assert run.data.params["training_examples"] == str(dataset.training_examples)
    assert run.data.metrics["cost_usd"] == pytest.approx(trained.actual_cost_usd)
    # Two epochs requested, so two epochs of the training file's tokens are estimated.
    assert trained.estimated_cost_usd == pytest.approx(
        dataset.training_tokens * 2 / 1e6 * dataset.usd_per_million_training_tokens
    )
    assert run.data.metrics["estimated_cost_usd"] == pytest.approx(trained.estimated_cost_usd)
    sample = Path(client.download_artifacts(model.mlflow_run_id, "training_sample/training_sample.jsonl", tmp_path))
    assert (
        sample.read_text().splitlines() == Path(dataset.training_path).read_text().splitlines()[:TRAINING_SAMPLE_LINES]
    )

    challenger = client.get_model_version_by_alias(model_name("hook"), "challenger")
    assert str(challenger.version) == model.registry_version
    assert challenger.tags["provider_model_id"] == model.model_id and challenger.run_id == model.mlflow_run_id


def test_fine_tune_over_budget_starts_no_job_and_records_nothing(local_openai, dataset, tmp_path, job_records):
    api = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    client = local_registry(tmp_path)
    with pytest.raises(BudgetExceeded, match=r"exceeds the budget of \$0\.00"):
        fine_tune(
            ProviderTrainer(OpenAIFineTuningProvider(api), job_records, options(budget_usd=0.0), [].append),
            client,
            dataset,
            options(budget_usd=0.0),
            dagster_run_id="r",
        )
    assert api.fine_tuning.jobs.list().data == [] and api.files.list().data == []
    assert client.get_experiment_by_name(EXPERIMENT_NAME) is None
    assert client.search_registered_models() == []


def test_the_cost_guard_counts_the_epochs_requested_not_the_three_the_dataset_assumed(
    local_openai, dataset, tmp_path, job_records
):
    api = openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key)
    price = dataset.usd_per_million_training_tokens / 1e6
    # Enough for the three epochs training_jsonl assumed, not for the ten asked for.
    budget = dataset.training_tokens * 5 * price
    assert dataset.estimated_cost_usd < budget

    with pytest.raises(BudgetExceeded):
        fine_tune(
            ProviderTrainer(
                OpenAIFineTuningProvider(api), job_records, options(n_epochs=10, budget_usd=budget), [].append
            ),
            local_registry(tmp_path),
            dataset,
            options(n_epochs=10, budget_usd=budget),
            dagster_run_id="r",
        )
    assert api.fine_tuning.jobs.list().data == []

    # "auto" with a configured maximum: the estimate assumes that maximum.
    with pytest.raises(BudgetExceeded):
        fine_tune(
            ProviderTrainer(
                OpenAIFineTuningProvider(api),
                job_records,
                options(n_epochs="auto", max_auto_epochs=6, budget_usd=budget),
                [].append,
            ),
            local_registry(tmp_path),
            dataset,
            options(n_epochs="auto", max_auto_epochs=6, budget_usd=budget),
            dagster_run_id="r",
        )
    assert api.fine_tuning.jobs.list().data == []


def test_auto_epochs_are_estimated_by_the_providers_rule_and_recorded_as_trained(
    local_openai, dataset, tmp_path, job_records
):
    provider = OpenAIFineTuningProvider(openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key))
    client = local_registry(tmp_path)

    trained = fine_tune(
        ProviderTrainer(provider, job_records, options(n_epochs="auto"), [].append),
        client,
        dataset,
        options(n_epochs="auto"),
        dagster_run_id="r",
    )

    epochs = auto_n_epochs(dataset.training_examples)
    # The local service resolves "auto" by OpenAI's rule, as the estimate does.
    assert trained.result.hyperparameters["n_epochs"] == epochs
    assert trained.estimated_cost_usd == pytest.approx(
        dataset.training_tokens * epochs / 1e6 * dataset.usd_per_million_training_tokens
    )
    params = client.get_run(trained.model.mlflow_run_id).data.params
    actual = trained.result.hyperparameters
    assert {name: params[name] for name in ("n_epochs", "batch_size", "learning_rate_multiplier")} == {
        name: str(actual[name]) for name in ("n_epochs", "batch_size", "learning_rate_multiplier")
    }
    assert params["requested_n_epochs"] == params["requested_batch_size"] == "auto"
    assert params["batch_size"] != "auto" and params["estimated_n_epochs"] == str(epochs)


# --- the experiment ------------------------------------------------------------------------


@pytest.fixture(params=["tracking server", "sqlite store"])
def registry(request, tmp_path) -> MlflowClient:
    """An empty registry: the session's MLflow server (versions as text), or a local SQLite
    store (versions as numbers)."""
    if request.param == "tracking server":
        return request.getfixturevalue("mlflow_client")
    return local_registry(tmp_path)


@pytest.fixture
def posts(pg_posts_url) -> PostsDatabase:
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    return db


@pytest.fixture
def store(posts) -> ExperimentStore:
    store = ExperimentStore(posts.engine)
    store.init_schema()
    return store


def challenger(client: MlflowClient, model_id: str, task: str = "hook", provider: str = "openai") -> FineTunedModel:
    """A fine-tuned model registered as the task's challenger, as fine_tune leaves it."""
    run_id = log_fine_tune_run(
        client, task=task, dagster_run_id="dagster-run", params={}, step_metrics=[], metrics={}, sample_path=None
    )
    version = register_challenger(
        client,
        task=task,
        run_id=run_id,
        provider_model_id=model_id,
        job_id=f"ftjob-{model_id}",
        training_file_id="file-1",
        dataset_hash=f"hash-{model_id}",
        base_model=AGENT_MODEL,
        provider=provider,
    )
    return FineTunedModel(
        task=task,
        model_id=model_id,
        base_model=AGENT_MODEL,
        job_id=f"ftjob-{model_id}",
        training_file_id="file-1",
        dataset_hash=f"hash-{model_id}",
        mlflow_run_id=run_id,
        registry_version=str(version.version),
    )


def aliases(client: MlflowClient, task: str = "hook") -> dict[str, str]:
    """The registered model's aliases, versions as text whichever store answers."""
    return {alias: str(version) for alias, version in client.get_registered_model(model_name(task)).aliases.items()}


def endpoint_answered(model: str, endpoint: str) -> Readiness:
    """The gate's verdict on a model that answered well. These tests are about the registry and
    the experiments table; the gate itself is tested against real servers (test_readiness.py)."""
    return Readiness(model, endpoint, (Generation(prompt="topic", reply="A hook worth reading?"),), None)


ARMS = ArmServing(
    agent_model=AGENT_MODEL,
    agent_endpoint="openai",
    endpoint_for_provider=lambda provider: "self_hosted" if provider == "self_hosted" else "openai",
    check=endpoint_answered,
)


def start(client, store, model, started_at=STARTED, logs=None, serving=ARMS):
    return start_experiment(
        client,
        store,
        model,
        serving=serving,
        challenger_share=0.1,
        started_at=started_at,
        log=(logs if logs is not None else []).append,
    )


def final_result(store: ExperimentStore, experiment_id: str, decision: str, reason: str) -> AbTestResult:
    """A decision on the experiment as ab_test_result would hand it on."""
    experiment = store.get(experiment_id)
    statistics = {"lift": 0.25, "ci_lower": 0.05, "ci_upper": 0.45, "n_control": 900, "n_treatment": 100}
    return AbTestResult(
        task=experiment.task,
        experiment_id=experiment_id,
        decision=decision,
        reason=reason,
        champion_model=experiment.champion_model,
        challenger_model=experiment.challenger_model,
        registry_version=experiment.registry_version,
        started_at=experiment.started_at,
        evaluated_at=NOW,
        data_until=NOW - timedelta(days=1),
        statistics=statistics | {"p_value": None},
    )


def arm_posts(first_id: int, count: int, model: str, created_at: datetime, engagements: int = 50) -> list[dict]:
    rows = [
        post(i, f"Hook {i}", f"Body {i}", engagements=engagements + i % 7, created_at=created_at)
        for i in range(first_id, first_id + count)
    ]
    return [{**row, "hook_model": model} for row in rows]


def test_start_runs_the_challenger_against_the_agent_model_then_against_the_champion(registry, store):
    one = challenger(registry, "ft:one")
    logs: list[str] = []
    started = start(registry, store, one, logs=logs)
    running = store.running("hook")
    assert started.experiment_id == running.experiment_id
    assert logs == ["ft:one passed the readiness gate at 'openai' (1 validation prompt)."]
    assert (running.champion_endpoint, running.challenger_endpoint) == ("openai", "openai")
    assert (started.champion_model, started.challenger_model, started.registry_version) == (
        AGENT_MODEL,
        "ft:one",
        one.registry_version,
    )
    assert (running.champion_model, running.challenger_model) == (AGENT_MODEL, "ft:one")
    assert (running.registry_version, running.challenger_share, running.started_at) == (
        one.registry_version,
        0.1,
        STARTED,
    )

    apply_decision(registry, store, final_result(store, started.experiment_id, "promote", "it wins"))
    # A re-run on the same dataset: the promotion stands, no second test.
    again = start(registry, store, one, logs=logs)
    assert again.experiment_id is None and store.running("hook") is None
    assert logs[-1] == "ft:one already has the decision 'promoted'; no new experiment is started."

    two = challenger(registry, "ft:two")
    against_champion = start(registry, store, two)
    assert against_champion.champion_model == "ft:one"
    assert store.running("hook").champion_model == "ft:one"

    apply_decision(registry, store, final_result(store, against_champion.experiment_id, "reject", "it loses"))
    assert start(registry, store, two, logs=logs).experiment_id is None
    assert logs[-1] == "ft:two already has the decision 'rejected'; no new experiment is started."


def test_evaluation_counts_the_matured_posts_of_both_arms_since_the_start(posts, store):
    experiment = store.start(
        task="hook",
        champion_model=AGENT_MODEL,
        challenger_model="ft:one",
        challenger_share=0.1,
        started_at=STARTED,
        registry_version="3",
    )
    matured = NOW - timedelta(days=2)
    posts.insert_posts(
        arm_posts(1, 900, AGENT_MODEL, matured)
        + arm_posts(1_000, 100, "ft:one", matured, engagements=90)
        # None of these is an outcome: before the start, not matured yet, another model.
        + arm_posts(2_000, 50, "ft:one", STARTED - timedelta(hours=1))
        + arm_posts(3_000, 50, AGENT_MODEL, NOW - timedelta(hours=2))
        + arm_posts(4_000, 50, "ft:someone-else", matured)
        # An impossible count is left out, and counted as such.
        + [{**post(5_000, "h", "b", impressions=100, engagements=500, created_at=matured), "hook_model": "ft:one"}]
    )

    evaluation = evaluate_experiment(store, posts, "hook", experiment_id=None, now=NOW, rule=RULE)
    result, analysis = evaluation.result, evaluation.analysis
    assert (analysis.n_control, analysis.n_treatment, evaluation.excluded_impossible_counts) == (900, 100, 1)
    assert result.decision == "promote" and "lies above the minimum lift" in result.reason
    assert (result.experiment_id, result.registry_version, result.evaluated_at) == (experiment.experiment_id, "3", NOW)
    assert (result.champion_model, result.challenger_model, result.started_at) == (AGENT_MODEL, "ft:one", STARTED)
    assert result.data_until == matured
    assert result.statistics["n_treatment"] == 100 and result.statistics["lift"] == analysis.lift > 0.5

    # The same experiment, named, an hour after it started: nothing has matured.
    early = evaluate_experiment(
        store, posts, "hook", experiment_id=experiment.experiment_id, now=STARTED + timedelta(hours=1), rule=RULE
    )
    assert early.result.decision == "continue" and early.result.data_until is None
    assert early.analysis.n_control == early.analysis.n_treatment == 0


def test_evaluation_refuses_an_experiment_it_cannot_evaluate(posts, store):
    def refused(message: str, task: str = "hook", experiment_id: str | None = None, now: datetime = NOW):
        with pytest.raises(ExperimentError, match=f"^{re.escape(message)}$"):
            evaluate_experiment(store, posts, task, experiment_id=experiment_id, now=now, rule=RULE)

    refused("No experiment is running for the hook task; ab_experiment starts one.")
    refused("There is no experiment hook-nope.", experiment_id="hook-nope")

    def started(task: str, challenger_model: str):
        return store.start(
            task=task,
            champion_model=AGENT_MODEL,
            challenger_model=challenger_model,
            challenger_share=0.1,
            started_at=STARTED,
            registry_version="1",
        )

    first, body = started("hook", "ft:one"), started("body", "ft:body")
    early = STARTED - timedelta(minutes=1)
    refused(
        f"The evaluation time {early.isoformat()} is before experiment {first.experiment_id} "
        f"started ({STARTED.isoformat()}).",
        now=early,
    )
    refused(
        f"Experiment {body.experiment_id} (body) is running, not a running hook experiment; nothing to evaluate.",
        experiment_id=body.experiment_id,
    )
    started("hook", "ft:two")
    refused(
        f"Experiment {first.experiment_id} (hook) is superseded, not a running hook experiment; nothing to evaluate.",
        experiment_id=first.experiment_id,
    )


def test_promotion_is_applied_once_and_rolled_back_once(registry, store):
    one = challenger(registry, "ft:one")
    experiment_id = start(registry, store, one).experiment_id
    result = final_result(store, experiment_id, "promote", "the interval lies above the minimum lift")

    registered, note = apply_decision(registry, store, result)
    assert (registered.task, registered.action, registered.champion_model) == ("hook", "promoted", "ft:one")
    assert str(registered.champion_version) == one.registry_version
    assert note == f"Version {one.registry_version} promoted: the interval lies above the minimum lift"
    assert aliases(registry) == {"champion": one.registry_version}
    name = model_name("hook")
    tags = registry.get_model_version(name, one.registry_version).tags
    assert tags["decision"] == "promoted" and tags["ab_lift"] == "0.25" and tags["ab_n_treatment"] == "100"
    assert tags["ab_experiment_id"] == experiment_id and tags["ab_decided_at"] == NOW.isoformat()
    assert "ab_p_value" not in tags  # a missing figure is not written as "None"
    finished = store.get(experiment_id)
    assert (finished.status, finished.decision, finished.reason) == ("promoted", "promote", result.reason)

    # The same decision again (a re-executed step) changes nothing and says so.
    again, note = apply_decision(registry, store, result)
    assert again == registered and note.endswith(" (already done)")

    two = challenger(registry, "ft:two")
    second = start(registry, store, two).experiment_id
    apply_decision(registry, store, final_result(store, second, "promote", "better still"))
    assert rollback_champion_of(registry, store, "hook", now=NOW) == (
        f"hook: champion is version {one.registry_version} again (ft:one); "
        f"version {two.registry_version} (ft:two) is tagged rolled_back. No hook experiment was running."
    )
    assert str(registry.get_model_version_by_alias(name, "champion").version) == one.registry_version
    with pytest.raises(RegistryError, match="Nothing to roll back"):
        rollback_champion_of(registry, store, "hook", now=NOW)


def test_continue_changes_nothing_and_reject_retires_the_challenger(registry, store):
    one = challenger(registry, "ft:one")
    experiment_id = start(registry, store, one).experiment_id
    name = model_name("hook")

    registered, note = apply_decision(registry, store, final_result(store, experiment_id, "continue", "too few posts"))
    assert (registered.action, registered.champion_version, registered.champion_model) == ("none", None, None)
    assert note == "The experiment continues, no alias changed: too few posts"
    assert aliases(registry) == {"challenger": one.registry_version}
    assert "decision" not in registry.get_model_version(name, one.registry_version).tags
    assert store.get(experiment_id).status == "running"

    registered, note = apply_decision(registry, store, final_result(store, experiment_id, "reject", "it loses"))
    assert registered.action == "rejected" and note == f"Version {one.registry_version} rejected: it loses"
    assert aliases(registry) == {}
    tags = registry.get_model_version(name, one.registry_version).tags
    assert (tags["decision"], tags["reason"]) == ("rejected", "it loses")
    assert store.get(experiment_id).status == "rejected"


def test_a_decision_on_an_experiment_closed_otherwise_is_not_applied(registry, store):
    one, two = challenger(registry, "ft:one"), challenger(registry, "ft:two")
    first = start(registry, store, one).experiment_id
    start(registry, store, two)  # supersedes the first
    stale = final_result(store, first, "promote", "it won, once")
    with pytest.raises(ExperimentError, match=f"^Experiment {first} is superseded, so its 'promote' decision"):
        apply_decision(registry, store, stale)
    assert aliases(registry) == {"challenger": two.registry_version}

    unknown = dataclasses.replace(stale, experiment_id="hook-unknown")
    with pytest.raises(ExperimentError, match=r"^Experiment hook-unknown is unknown, so its 'promote' decision"):
        apply_decision(registry, store, unknown)

    second = store.running("hook").experiment_id
    apply_decision(registry, store, final_result(store, second, "reject", "it loses"))
    with pytest.raises(ExperimentError, match=f"^Experiment {second} is rejected, so its 'promote' decision"):
        apply_decision(registry, store, final_result(store, second, "promote", "a stale evaluation"))
    assert "decision" not in registry.get_model_version(model_name("hook"), one.registry_version).tags


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_an_unstarted_local_service_fails_the_step_at_once_saying_how_to_start_it(dataset, tmp_path, job_records):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    api = openai.OpenAI(base_url=url, api_key="sk-local-ftp", max_retries=0)
    opts = options(unreachable_hint=local_service_down(url), timeout_s=3600.0, poll_initial_s=5.0)
    started = time.monotonic()
    with pytest.raises(ProviderUnreachable, match=rf"Nothing answers at {re.escape(url)}.*ftp-assets local-openai"):
        fine_tune(
            ProviderTrainer(OpenAIFineTuningProvider(api), job_records, opts, [].append),
            local_registry(tmp_path),
            dataset,
            opts,
            dagster_run_id="r",
        )
    # No backoff was entered (its first wait alone is 5 s), and no intent is left to resolve.
    assert time.monotonic() - started < 5
    assert job_records.get(_request_key(dataset, opts)) is None


def test_without_the_hint_an_unreachable_provider_is_waited_for_until_the_deadline(dataset, tmp_path, job_records):
    """Production keeps the patient retries: a provider's outage may end."""
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key="sk-x", max_retries=0)
    opts = options(timeout_s=1.0, poll_initial_s=0.2, poll_max_s=0.2)
    logs: list[str] = []
    with pytest.raises(FineTuningTimeout, match="stayed unavailable"):
        fine_tune(
            ProviderTrainer(OpenAIFineTuningProvider(api), job_records, opts, logs.append),
            local_registry(tmp_path),
            dataset,
            opts,
            dagster_run_id="r",
        )
    assert sum("unavailable while submitting" in line for line in logs) >= 2


def _request_key(dataset: TrainingDataset, opts: FineTuneOptions) -> str:
    return FineTuneRequest(
        task=dataset.task,
        dataset_hash=dataset.dataset_hash,
        training_file=Path(dataset.training_path),
        base_model=opts.base_model,
        suffix=f"threads-{dataset.task}",
        n_epochs=opts.n_epochs,
        seed=opts.seed,
    ).idempotency_key


def test_after_each_decision_the_self_hosted_versions_no_alias_names_are_retired(registry, store, tmp_path):
    """A rejected challenger at once; a champion once it is older than previous-champion; never the
    champion, previous-champion (a rollback's target) or an OpenAI model."""
    adapters = tmp_path / "adapters"
    retired: list[str] = []

    def retire(version) -> str:
        tags = version.tags
        (adapters / tags["task"] / tags["job_id"]).mkdir(parents=True, exist_ok=True)
        (adapters / tags["task"] / tags["job_id"] / "manifest.json").write_text("{}")
        retire_adapter(str(adapters), tags["task"], tags["job_id"], reason="test", retired_at=NOW)
        retired.append(tags["provider_model_id"])
        return "marked retired"

    def decide(model: FineTunedModel, decision: str) -> str:
        experiment_id = start(registry, store, model).experiment_id
        return apply_decision(
            registry, store, final_result(store, experiment_id, decision, "it decides"), retire=retire
        )[1]

    openai_one = challenger(registry, "ft:one")
    decide(openai_one, "promote")
    lost = challenger(registry, "threads-hook-sft-lost", provider="self_hosted")
    note = decide(lost, "reject")
    assert retired == ["threads-hook-sft-lost"] and "retired from serving: marked retired" in note
    assert is_retired(str(adapters), "hook", "ftjob-threads-hook-sft-lost")

    first = challenger(registry, "threads-hook-sft-a", provider="self_hosted")
    decide(first, "promote")  # champion a, previous ft:one
    decide(challenger(registry, "threads-hook-sft-b", provider="self_hosted"), "promote")
    # champion b, previous a: ft:one is older but OpenAI's, so nothing is retired
    assert retired == ["threads-hook-sft-lost"]
    third = challenger(registry, "threads-hook-sft-c", provider="self_hosted")
    decide(third, "promote")  # champion c, previous b: a is older than previous-champion
    assert retired == ["threads-hook-sft-lost", "threads-hook-sft-a"]
    version_a = registry.get_model_version(model_name("hook"), first.registry_version)
    assert version_a.tags["serving"] == "retired"
    # Deciding again retires nothing twice: the retired tag is read back.
    assert versions_to_retire(registry, "hook") == []

    # A challenger superseded before any decision (next week's took the alias) is retired too,
    # at the next decision.
    challenger(registry, "threads-hook-sft-d", provider="self_hosted")
    decide(challenger(registry, "threads-hook-sft-e", provider="self_hosted"), "reject")
    assert retired[-2:] == ["threads-hook-sft-d", "threads-hook-sft-e"]


def test_a_gate_failed_at_a_misconfigured_endpoint_is_retried_at_the_corrected_one(registry, store):
    model = challenger(registry, "threads-hook-sft-f", provider="self_hosted")
    asked: list[str] = []

    def endpoint_down(model_id: str, endpoint: str) -> Readiness:
        asked.append(endpoint)
        return Readiness(model_id, endpoint, (), f"nothing answers at endpoint {endpoint!r}")

    def endpoint_fine(model_id: str, endpoint: str) -> Readiness:
        asked.append(endpoint)
        return endpoint_answered(model_id, endpoint)

    wrong = dataclasses.replace(ARMS, endpoint_for_provider=lambda provider: "self_hosted", check=endpoint_down)
    with pytest.raises(ChallengerNotReady, match="failed the readiness gate at endpoint 'self_hosted'"):
        start(registry, store, model, serving=wrong)
    version = registry.get_model_version(model_name("hook"), model.registry_version)
    assert version.tags["readiness"] == "failed" and "serving_endpoint" not in version.tags
    assert store.running("hook") is None

    fixed = dataclasses.replace(ARMS, endpoint_for_provider=lambda provider: "vllm-base", check=endpoint_fine)
    started = start(registry, store, model, serving=fixed)
    assert asked == ["self_hosted", "vllm-base"]
    assert (started.challenger_endpoint, store.running("hook").challenger_endpoint) == ("vllm-base", "vllm-base")
    version = registry.get_model_version(model_name("hook"), model.registry_version)
    assert (version.tags["readiness"], version.tags["serving_endpoint"]) == ("passed", "vllm-base")
    assert "readiness_reason" not in version.tags
