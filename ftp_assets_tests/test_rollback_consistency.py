"""A rollback leaves the experiments table, the registry's aliases and what the agent serves
consistent, and a promotion moves ``champion`` only to the challenger that was tested: on the
session's MLflow tracking server and PostgreSQL, through the step, ``rollback_job`` and
``ftp-assets rollback``."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from ftp_assets.adapters.experiments_store import Experiment, ExperimentStore, experiments
from ftp_assets.adapters.mlflow_registry import RegistryError, champion, model_name
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.cli import main
from ftp_assets.experiment.jobs import rollback_job
from ftp_assets.experiment.sensors import evaluate_experiment_tick
from ftp_assets.resources import ExperimentSettings, MetricsPublisher, MlflowResource, PostsDatabaseResource
from ftp_assets.steps.experiment import (
    ExperimentError,
    apply_decision,
    evaluate_experiment,
    rollback_champion_of,
)
from ftp_assets.steps.fine_tune import FineTunedModel
from ftp_assets_tests.test_steps import NOW, RULE, aliases, challenger, final_result, start

LATER = NOW + timedelta(days=1)


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


def promote_through_an_experiment(client: MlflowClient, store: ExperimentStore, model: FineTunedModel) -> None:
    experiment_id = start(client, store, model).experiment_id
    assert experiment_id is not None
    apply_decision(client, store, final_result(store, experiment_id, "promote", "it wins"))


def promoted_twice(client: MlflowClient, store: ExperimentStore) -> tuple[FineTunedModel, FineTunedModel]:
    """ft:one promoted, then ft:two over it: champion and previous-champion."""
    one = challenger(client, "ft:one")
    promote_through_an_experiment(client, store, one)
    two = challenger(client, "ft:two")
    promote_through_an_experiment(client, store, two)
    return one, two


def bad_promotion_under_test(
    client: MlflowClient, store: ExperimentStore
) -> tuple[FineTunedModel, FineTunedModel, FineTunedModel, Experiment]:
    """ft:one promoted, ft:two promoted over it (the bad model), then ft:three started against
    ft:two: the state a rollback of ft:two meets."""
    one, two = promoted_twice(client, store)
    three = challenger(client, "ft:three")
    start(client, store, three, started_at=NOW)
    running = store.running("hook")
    assert running is not None and running.champion_model == "ft:two"
    return one, two, three, running


def statuses(store: ExperimentStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {row.experiment_id: row.status for row in conn.execute(sa.select(experiments))}


def served_model(client: MlflowClient, store: ExperimentStore) -> str:
    """The agent's control arm: the running experiment's champion, else the registry's."""
    running = store.running("hook")
    if running is not None:
        return running.champion_model
    current = champion(client, "hook")
    assert current is not None
    return current.tags["provider_model_id"]


def assert_rolled_back(client, store, one, two, three, cancelled_id: str) -> None:
    assert aliases(client) == {"champion": one.registry_version, "challenger": three.registry_version}
    assert client.get_model_version(model_name("hook"), two.registry_version).tags["rolled_back"] == "true"
    assert store.running("hook") is None and served_model(client, store) == "ft:one"
    cancelled = store.get(cancelled_id)
    assert cancelled is not None
    assert (cancelled.status, cancelled.decision, cancelled.reason) == (
        "cancelled",
        None,
        f"champion rolled back from version {two.registry_version} to {one.registry_version}",
    )


def cancelled_message(one, two, three, experiment_id: str) -> str:
    return (
        f"hook: champion is version {one.registry_version} again (ft:one); version {two.registry_version} "
        f"(ft:two) is tagged rolled_back. Experiment {experiment_id} (ft:three against ft:two) is cancelled, "
        "its control arm no longer being the champion; re-materialize ab_experiment (hook) to test ft:three "
        "against ft:one."
    )


def test_rollback_cancels_the_experiment_that_kept_the_demoted_champion(mlflow_client, store, posts):
    one, two, three, running = bad_promotion_under_test(mlflow_client, store)
    body = store.start(
        task="body",
        champion_model="gpt-4o-mini-2024-07-18",
        challenger_model="ft:body",
        challenger_share=0.1,
        started_at=NOW,
        registry_version="1",
    )

    message = rollback_champion_of(mlflow_client, store, "hook", now=LATER)

    assert message == cancelled_message(one, two, three, running.experiment_id)
    assert_rolled_back(mlflow_client, store, one, two, three, running.experiment_id)
    with store.engine.connect() as conn:
        decided_at = conn.execute(
            sa.select(experiments.c.decided_at).where(experiments.c.experiment_id == running.experiment_id)
        ).scalar_one()
    assert decided_at == LATER
    assert store.running("body") == body  # another task's experiment is not touched

    # The sensor and the evaluation treat the cancelled experiment as closed.
    tick = evaluate_experiment_tick(
        store, posts, None, now=LATER, maturity=timedelta(hours=24), max_duration=timedelta(days=7)
    )
    assert all(request.partition_key != "hook" for request in tick.run_requests)
    assert "hook: no running experiment." in (tick.skip_reason or "")
    with pytest.raises(ExperimentError, match=r"^No experiment is running for the hook task"):
        evaluate_experiment(store, posts, "hook", experiment_id=None, now=LATER, rule=RULE)
    with pytest.raises(ExperimentError, match=f"^Experiment {running.experiment_id} \\(hook\\) is cancelled, not a"):
        evaluate_experiment(store, posts, "hook", experiment_id=running.experiment_id, now=LATER, rule=RULE)
    # A decision evaluated before the rollback is not applied afterwards.
    stale = final_result(store, running.experiment_id, "promote", "it beat ft:two")
    with pytest.raises(ExperimentError, match=f"^Experiment {running.experiment_id} is cancelled, so its 'promote'"):
        apply_decision(mlflow_client, store, stale)
    assert aliases(mlflow_client) == {"champion": one.registry_version, "challenger": three.registry_version}

    # What the message advises: the challenger's new experiment runs against the restored champion.
    restarted = start(mlflow_client, store, three, started_at=LATER)
    assert restarted.experiment_id is not None and restarted.champion_model == "ft:one"
    assert served_model(mlflow_client, store) == "ft:one"


def test_rollback_with_no_running_experiment_moves_the_aliases_only(mlflow_client, store):
    one, two = promoted_twice(mlflow_client, store)
    before = statuses(store)
    assert sorted(before.values()) == ["promoted", "promoted"]

    message = rollback_champion_of(mlflow_client, store, "hook", now=LATER)

    assert message == (
        f"hook: champion is version {one.registry_version} again (ft:one); version {two.registry_version} "
        "(ft:two) is tagged rolled_back. No hook experiment was running."
    )
    assert aliases(mlflow_client) == {"champion": one.registry_version}
    assert statuses(store) == before


def test_a_rollback_the_registry_refuses_cancels_nothing(mlflow_client, store):
    one = challenger(mlflow_client, "ft:one")
    promote_through_an_experiment(mlflow_client, store, one)
    two = challenger(mlflow_client, "ft:two")
    running = start(mlflow_client, store, two)

    with pytest.raises(RegistryError, match=r"^Nothing to roll back"):
        rollback_champion_of(mlflow_client, store, "hook", now=LATER)

    current = store.running("hook")
    assert current is not None and current.experiment_id == running.experiment_id
    assert aliases(mlflow_client) == {"champion": one.registry_version, "challenger": two.registry_version}


def test_a_rollback_interrupted_after_the_cancellation_completes_when_run_again(mlflow_client, store):
    one, two, three, running = bad_promotion_under_test(mlflow_client, store)
    # The first half of rollback_champion_of, as a crash before the registry call leaves it.
    reason = f"champion rolled back from version {two.registry_version} to {one.registry_version}"
    store.cancel_running("hook", reason=reason, cancelled_at=NOW)
    assert store.running("hook") is None and aliases(mlflow_client)["champion"] == two.registry_version

    message = rollback_champion_of(mlflow_client, store, "hook", now=LATER)

    assert message.endswith("No hook experiment was running.")
    assert_rolled_back(mlflow_client, store, one, two, three, running.experiment_id)


def test_rollback_job_does_the_same(mlflow_server, mlflow_client, store, pg_posts_url):
    one, two, three, running = bad_promotion_under_test(mlflow_client, store)

    result = rollback_job.execute_in_process(
        run_config={"ops": {"rollback_champion": {"config": {"task": "hook"}}}},
        resources={
            "mlflow": MlflowResource(tracking_uri=mlflow_server),
            "posts_db": PostsDatabaseResource(url=pg_posts_url),
            "experiment_settings": ExperimentSettings(),
            "metrics": MetricsPublisher(),
        },
    )

    assert result.success
    assert result.output_for_node("rollback_champion") == cancelled_message(one, two, three, running.experiment_id)
    assert_rolled_back(mlflow_client, store, one, two, three, running.experiment_id)


def test_ftp_rollback_does_the_same(mlflow_server, mlflow_client, store, pg_posts_url, monkeypatch, capsys):
    one, two, three, running = bad_promotion_under_test(mlflow_client, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("FTP_POSTS_DB_URL", pg_posts_url)
    capsys.readouterr()  # MLflow's own lines while the state was made

    assert main(["rollback", "--task", "hook"]) == 0

    assert capsys.readouterr().out == cancelled_message(one, two, three, running.experiment_id) + "\n"
    assert_rolled_back(mlflow_client, store, one, two, three, running.experiment_id)


# --- promotion of the tested challenger only ----------------------------------------------


def test_promotion_refuses_a_registry_version_of_another_model(mlflow_client, store):
    one = challenger(mlflow_client, "ft:one")
    experiment_id = start(mlflow_client, store, one).experiment_id
    assert experiment_id is not None
    # A version of another model, which nothing tested; the experiment row is edited to name it.
    other = challenger(mlflow_client, "ft:untested")
    with store.engine.begin() as conn:
        conn.execute(
            experiments.update()
            .where(experiments.c.experiment_id == experiment_id)
            .values(registry_version=other.registry_version)
        )
    before = aliases(mlflow_client)
    assert before == {"challenger": other.registry_version}

    with pytest.raises(
        RegistryError,
        match=f"^Refusing to promote {model_name('hook')} version {other.registry_version}: it holds "
        "ft:untested, not ft:one, the challenger the experiment tested.$",
    ):
        apply_decision(mlflow_client, store, final_result(store, experiment_id, "promote", "it wins"))

    assert aliases(mlflow_client) == before
    assert "decision" not in mlflow_client.get_model_version(model_name("hook"), other.registry_version).tags
    experiment = store.get(experiment_id)
    assert experiment is not None and experiment.status == "running"


def test_promotion_refuses_a_version_the_challenger_alias_has_left(mlflow_client, store):
    one = challenger(mlflow_client, "ft:one")
    experiment_id = start(mlflow_client, store, one).experiment_id
    assert experiment_id is not None
    newer = challenger(mlflow_client, "ft:newer")  # registered, not yet under test
    before = aliases(mlflow_client)
    assert before == {"challenger": newer.registry_version}

    with pytest.raises(
        RegistryError,
        match=f"^Refusing to promote {model_name('hook')} version {one.registry_version} \\(ft:one\\): the "
        f"challenger alias points at version {newer.registry_version}, so the experiment no longer tests it.$",
    ):
        apply_decision(mlflow_client, store, final_result(store, experiment_id, "promote", "it wins"))

    assert aliases(mlflow_client) == before
    assert "decision" not in mlflow_client.get_model_version(model_name("hook"), one.registry_version).tags
    experiment = store.get(experiment_id)
    assert experiment is not None and experiment.status == "running"


def test_rejection_refuses_a_registry_version_of_another_model(mlflow_client, store):
    one = challenger(mlflow_client, "ft:one")
    experiment_id = start(mlflow_client, store, one).experiment_id
    assert experiment_id is not None
    # A newer challenger, not yet under test; the experiment row is edited to name its version.
    newer = challenger(mlflow_client, "ft:newer")
    with store.engine.begin() as conn:
        conn.execute(
            experiments.update()
            .where(experiments.c.experiment_id == experiment_id)
            .values(registry_version=newer.registry_version)
        )
    before = aliases(mlflow_client)

    with pytest.raises(
        RegistryError,
        match=f"^Refusing to reject {model_name('hook')} version {newer.registry_version}: it holds "
        "ft:newer, not ft:one, the challenger the experiment tested.$",
    ):
        apply_decision(mlflow_client, store, final_result(store, experiment_id, "reject", "it loses"))

    assert aliases(mlflow_client) == before == {"challenger": newer.registry_version}
    assert "decision" not in mlflow_client.get_model_version(model_name("hook"), newer.registry_version).tags
    experiment = store.get(experiment_id)
    assert experiment is not None and experiment.status == "running"
