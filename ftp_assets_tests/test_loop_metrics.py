"""The loop's metrics: a training cycle and an experiment's evaluation push them to a real
Pushgateway, and a real Prometheus scraping it answers PromQL with the run's own figures."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import urllib.request
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import Definitions, build_sensor_context, instance_for_test, job, materialize, op
from dagster_openai import OpenAIResource

from ftp_assets.adapters.experiments_store import ExperimentOutcome, ExperimentStore
from ftp_assets.adapters.metrics import CATALOGUE, METRICS, MetricsError, Sample, push, readiness
from ftp_assets.adapters.mlflow_registry import local_tracking_uri, model_name
from ftp_assets.adapters.posts_db import PostsDatabase, redacted
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples
from ftp_assets.experiment.assets import ab_test_result, registered_model
from ftp_assets.observability.sensors import metrics_refresh
from ftp_assets.resources import (
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
)
from ftp_assets.settings import DeploymentSettings
from ftp_assets.steps.loop_metrics import rejected_in_a_row
from ftp_assets_tests.corpus import WINDOW_END, clean_posts
from ftp_assets_tests.fixtures.prometheus import query, query_until, values
from ftp_assets_tests.test_pipeline import TRAINING, WINDOW, write_experiment_posts
from ftp_demo.monitoring import free_port, pushgateway_binary
from ftp_demo.posts import generate_demo_posts

DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


def _present(result: list[dict]) -> bool:
    return bool(result)


def _one(prometheus: str, promql: str) -> float:
    (value,) = values(query_until(prometheus, promql, _present)).values()
    return value


def _equal(prometheus: str, promql: str, expected: float) -> None:
    """Until the one series of ``promql`` has the value (a group pushed twice may show its first
    push until the next scrape)."""
    query_until(
        prometheus, promql, lambda result: len(result) == 1 and float(result[0]["value"][1]) == pytest.approx(expected)
    )


def test_a_cycle_and_an_evaluation_publish_their_figures_to_prometheus(
    monitoring, local_openai, local_serving, mlflow_server, mlflow_client, pg_posts_url, tmp_path
):
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    db.insert_posts(generate_demo_posts(1_500, seed=3, end=WINDOW_END))
    weekly_budget = 75.0
    resources = {
        "posts_db": PostsDatabaseResource(url=pg_posts_url),
        "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
        "openai": OpenAIResource(api_key=local_openai.api_key, base_url=local_openai.base_url),
        "fine_tuning": FineTuningSettings(
            poll_initial_seconds=0.05, poll_max_seconds=0.2, weekly_budget_usd=weekly_budget
        ),
        "self_hosted_training": SelfHostedTraining(),
        "mlflow": MlflowResource(tracking_uri=mlflow_server),
        "experiment_settings": ExperimentSettings(),
        "serving": local_serving,
        "metrics": MetricsPublisher(pushgateway_url=monitoring.pushgateway_url),
    }
    prometheus = monitoring.prometheus_url
    hook = '{task="hook",job="ftp_assets"}'
    with instance_for_test() as instance:
        before = datetime.now(UTC)
        trained = materialize(TRAINING, partition_key="hook", run_config=WINDOW, resources=resources, instance=instance)
        selection = trained.output_for_node("engaged_posts")
        dataset = trained.output_for_node("training_jsonl")
        model = trained.output_for_node("fine_tuned_model")
        training = trained.asset_materializations_for_node("fine_tuned_model")[0].metadata

        # The selection: volume, kept, and each rule's rejections, as the asset counted them.
        assert _one(prometheus, f"ftp_posts_in_window{hook}") == selection.funnel["in_window"]
        assert _one(prometheus, f"ftp_posts_selected{hook}") == selection.rows
        rejected = values(query_until(prometheus, f"ftp_posts_rejected{hook}", _present), "reason")
        assert rejected == {reason: float(count) for reason, count in selection.rejected.items()}
        assert _one(prometheus, f"ftp_selection_window_end_timestamp_seconds{hook}") == WINDOW_END.timestamp()
        # The dataset as its enough_examples check judged it.
        examples = values(query_until(prometheus, f"ftp_training_examples{hook}", _present), "split")
        assert examples == {"training": dataset.training_examples, "validation": dataset.validation_examples}
        assert _one(prometheus, f"ftp_training_tokens{hook}") == pytest.approx(dataset.training_tokens)
        assert _one(prometheus, f"ftp_training_examples_minimum{hook}") == 100
        assert _one(prometheus, f"ftp_training_data_sufficient{hook}") == 1
        # The job: its cost, tokens, time, losses, and the challenger's version.
        openai_path = hook[:-1] + ',provider="openai"}'
        estimate = _one(prometheus, f"ftp_fine_tuning_estimated_cost_dollars{openai_path}")
        assert estimate == pytest.approx(training["estimated_cost_usd"].value, abs=1e-4)
        cost = _one(prometheus, f"ftp_fine_tuning_cost_dollars{openai_path}")
        assert cost == pytest.approx(training["actual_cost_usd"].value, abs=1e-4) and cost > 0
        # The spend stage pushed 0 before the job and the job's cost after it: one increase.
        _equal(prometheus, f"ftp_fine_tuning_cost_dollars_total{openai_path}", cost)
        assert _one(prometheus, f"ftp_fine_tuning_weekly_budget_dollars{hook}") == weekly_budget
        assert _one(prometheus, f"ftp_training_trained_tokens{hook}") == training["trained_tokens"].value
        assert _one(prometheus, f"ftp_training_duration_seconds{hook}") == pytest.approx(
            training["duration_s"].value, abs=0.1
        )
        losses = values(query_until(prometheus, f"ftp_training_loss{hook}", _present), "split")
        assert losses["train"] == pytest.approx(training["final_train_loss"].value)
        last_training = _one(prometheus, f"ftp_training_last_success_timestamp_seconds{hook}")
        assert before.timestamp() <= last_training <= datetime.now(UTC).timestamp()
        assert _one(prometheus, f"ftp_challenger_registry_version{hook}") == float(model.registry_version)
        # The started experiment, with its deadline from its plan.
        store = ExperimentStore(db.engine)
        running = store.running("hook")
        assert _one(prometheus, f"ftp_experiment_running{hook}") == 1
        assert _one(prometheus, f"ftp_experiments_started_total{hook}") == 1
        assert _one(prometheus, f"ftp_experiment_started_timestamp_seconds{hook}") == running.started_at.timestamp()
        deadline = running.started_at + timedelta(hours=running.plan.max_duration_hours)
        assert _one(prometheus, f"ftp_experiment_deadline_timestamp_seconds{hook}") == deadline.timestamp()
        assert _one(prometheus, f"ftp_experiment_challenger_share{hook}") == running.challenger_share
        decisions = values(query_until(prometheus, f"ftp_experiment_decisions_total{hook}", _present), "outcome")
        assert decisions == {"promoted": 0, "rejected": 0, "superseded": 0, "cancelled": 0}
        assert query(prometheus, f"ftp_champion_registry_version{hook}") == []  # no promotion yet

        # The agent's posts during the experiment, then a look that sees them (the experiment
        # stays running until registered_model acts on the decision).
        start = running.started_at
        write_experiment_posts(db, local_openai, running)
        evaluated_at = {
            "ops": {"ab_test_result": {"config": {"evaluated_at": (start + timedelta(days=4)).isoformat()}}}
        }
        looked = materialize(
            [ab_test_result], partition_key="hook", resources=resources, instance=instance, run_config=evaluated_at
        )
        look = looked.asset_materializations_for_node("ab_test_result")[0].metadata
        assert _one(prometheus, f"ftp_experiment_lift{hook}") == pytest.approx(look["lift"].value)
        assert _one(prometheus, f"ftp_experiment_lift_lower{hook}") == pytest.approx(look["ci_lower"].value)
        assert _one(prometheus, f"ftp_experiment_lift_upper{hook}") == pytest.approx(look["ci_upper"].value)
        assert _one(prometheus, f"ftp_experiment_statistic{hook}") == pytest.approx(look["statistic"].value)
        assert _one(prometheus, f"ftp_experiment_boundary{hook}") == pytest.approx(look["boundary"].value)
        assert _one(prometheus, f"ftp_experiment_information_fraction{hook}") == pytest.approx(
            look["information_fraction"].value
        )
        arms = values(query_until(prometheus, f"ftp_experiment_posts{hook}", _present), "arm")
        assert arms == {"champion": look["n_control"].value, "challenger": look["n_treatment"].value}
        assert (
            _one(prometheus, f"ftp_experiment_last_look_timestamp_seconds{hook}")
            == (start + timedelta(days=4)).timestamp()
        )

        # The decision acted on: the running experiment's figures are gone (its last look stays),
        # the totals and the registry move.
        decided = materialize(
            [ab_test_result, registered_model],
            partition_key="hook",
            resources=resources,
            instance=instance,
            run_config=evaluated_at,
        )
        assert decided.output_for_node("ab_test_result").decision == "promote"
        query_until(prometheus, f"ftp_experiment_running{hook} == 0", _present)
        assert query(prometheus, f"ftp_experiment_deadline_timestamp_seconds{hook}") == []
        assert query(prometheus, f"ftp_experiment_challenger_share{hook}") == []
        assert _one(prometheus, f"ftp_experiment_lift{hook}") == pytest.approx(look["lift"].value)
        decisions = values(query_until(prometheus, f"ftp_experiment_decisions_total{hook}", _present), "outcome")
        assert decisions["promoted"] == 1 and decisions["rejected"] == 0
        assert _one(prometheus, f"ftp_challengers_rejected_in_a_row{hook}") == 0
        champion = mlflow_client.get_model_version_by_alias(model_name("hook"), "champion")
        assert _one(prometheus, f"ftp_champion_registry_version{hook}") == float(champion.version)
        promoted_at = store.get(running.experiment_id)
        assert promoted_at.status == "promoted"
        assert _one(prometheus, f"ftp_last_promotion_timestamp_seconds{hook}") == _one(
            prometheus, f"ftp_experiment_last_decision_timestamp_seconds{hook}"
        )
        # The decision is dated by the look that made it; its age is PromQL's to compute.
        decided_at = start + timedelta(days=4)
        assert _one(prometheus, f"ftp_last_promotion_timestamp_seconds{hook}") == decided_at.timestamp()
        age = _one(prometheus, f"time() - ftp_last_promotion_timestamp_seconds{hook}")
        assert age == pytest.approx((datetime.now(UTC) - decided_at).total_seconds(), abs=60)


def test_a_step_succeeds_and_warns_when_its_metrics_cannot_be_pushed(tmp_path):
    url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    db = PostsDatabase(url)
    db.init_schema()
    db.insert_posts(clean_posts(150))
    resources = {
        "posts_db": PostsDatabaseResource(url=url),
        "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
        "metrics": MetricsPublisher(pushgateway_url=f"http://pusher:s3cret@127.0.0.1:{free_port()}"),
    }
    with instance_for_test() as instance:
        result = materialize(
            [engaged_posts, training_jsonl, enough_examples],
            partition_key="hook",
            run_config=WINDOW,
            resources=resources,
            instance=instance,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    warned = [message for message in logs if "metrics were not pushed" in message]
    assert [message.split(":")[0] for message in warned] == [
        "the selection metrics were not pushed to http",
        "the dataset metrics were not pushed to http",
    ]
    assert not any("s3cret" in message for message in logs)


@op
def nightly_export():
    raise RuntimeError("The export failed.")


@job
def nightly():
    nightly_export()


def test_the_refresh_sensor_pushes_what_the_stores_hold_before_any_failure_and_after(monitoring, tmp_path):
    """The run-failure counts start at 0 for every job (so that increase() sees a first failure),
    and each task's experiment and registry groups are read from the experiments table and MLflow."""
    url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    db = PostsDatabase(url)
    db.init_schema()
    store = ExperimentStore(db.engine)
    store.init_schema()
    now = datetime.now(UTC)
    for week in (3, 2, 1):  # three rejected body challengers, then one running
        started = store.start(
            task="body",
            champion_model="base",
            challenger_model=f"ft:body-{week}",
            challenger_share=0.1,
            started_at=now - timedelta(weeks=week),
            registry_version=str(4 - week),
        )
        store.finish(
            started.experiment_id,
            decision="reject",
            reason="no lift",
            statistics={},
            decided_at=now - timedelta(weeks=week, days=-6),
        )
    running = store.start(
        task="hook",
        champion_model="base",
        challenger_model="ft:hook-1",
        challenger_share=0.1,
        started_at=now - timedelta(days=2),
        registry_version="1",
    )
    settings = DeploymentSettings(pushgateway_url=monitoring.pushgateway_url)
    refresh = metrics_refresh(settings)
    resources = {
        "metrics": MetricsPublisher(pushgateway_url=monitoring.pushgateway_url),
        "posts_db": PostsDatabaseResource(url=url),
        "mlflow": MlflowResource(tracking_uri=local_tracking_uri(tmp_path / "mlflow")),
        "experiment_settings": ExperimentSettings(max_duration_hours=168),
    }
    repository = Definitions(jobs=[nightly]).get_repository_def()
    prometheus = monitoring.prometheus_url
    with instance_for_test() as instance:

        def tick() -> None:
            context = build_sensor_context(instance=instance, repository_def=repository, resources=resources)
            with context:
                refresh(context)

        tick()
        failures = values(query_until(prometheus, "ftp_run_failures_total", _present), "dagster_job")
        assert failures == {"nightly": 0, "__ASSET_JOB": 0}
        assert nightly.execute_in_process(instance=instance, raise_on_error=False).success is False
        tick()
        _equal(prometheus, 'ftp_run_failures_total{dagster_job="nightly"}', 1)
        assert query(prometheus, "increase(ftp_run_failures_total[5m]) > 0")  # the first failure is an increase

    body, hook = '{task="body"}', '{task="hook"}'
    assert _one(prometheus, f"ftp_challengers_rejected_in_a_row{body}") == 3
    assert _one(prometheus, f"ftp_experiment_running{body}") == 0
    assert values(query(prometheus, f"ftp_experiment_decisions_total{body}"), "outcome")["rejected"] == 3
    assert _one(prometheus, f"ftp_experiment_running{hook}") == 1
    deadline = running.started_at + timedelta(hours=168)  # started before plans: the settings' maximum
    assert _one(prometheus, f"ftp_experiment_deadline_timestamp_seconds{hook}") == deadline.timestamp()
    assert query(prometheus, "ftp_champion_registry_version") == []  # no promotion in the registry yet


def test_the_steps_succeed_with_their_metrics_lost_when_the_gateway_does_not_answer():
    port = free_port()  # a port that was free is closed: nothing listens there
    problem = push(f"http://pusher:s3cret@127.0.0.1:{port}", "selection", "hook", [Sample("ftp_posts_selected", 3)])
    assert problem.startswith("the selection metrics were not pushed to http://127.0.0.1:")
    assert "s3cret" not in problem and "pusher" not in problem


@pytest.fixture
def gateway_with_a_password(tmp_path):
    """A real Pushgateway that requires user ``pusher``, password ``pa ss`` (its web config)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through the C library, as the gateway's web config wants it

        hashed = crypt.crypt("pa ss", crypt.mksalt(crypt.METHOD_BLOWFISH))
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  pusher: '{hashed}'\n")
    binary = pushgateway_binary()
    if binary is None:
        pytest.fail("Install Debian's prometheus-pushgateway package (.ci/run does) to run this test.")
    port = free_port()
    with open(tmp_path / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={config}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://pusher:pa%20ss@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while readiness(url) and time.monotonic() < deadline:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        gateway.terminate()
        gateway.wait(10)


def test_a_gateway_behind_basic_auth_gets_the_urls_user_and_password_and_never_shows_them(gateway_with_a_password):
    url = gateway_with_a_password
    assert readiness(url) == ""
    assert readiness(url.replace("pa%20ss", "wrong")) == "it answered 401"
    assert push(url, "selection", "hook", [Sample("ftp_posts_selected", 42)]) == ""
    refused = push(url.replace("pa%20ss", "wrong"), "selection", "hook", [Sample("ftp_posts_selected", 1)])
    assert "401" in refused and "wrong" not in refused and "pusher" not in refused
    request = urllib.request.Request(redacted(url) + "/metrics")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"pusher:pa ss").decode())
    with urllib.request.urlopen(request, timeout=5) as answer:
        exposed = answer.read().decode()
    assert 'ftp_posts_selected{instance="",job="ftp_assets",stage="selection",task="hook"} 42' in exposed


def test_a_sample_outside_the_catalogue_is_refused_before_anything_is_pushed():
    with pytest.raises(MetricsError, match="not a metric of the selection stage"):
        push("http://127.0.0.1:9", "selection", "hook", [Sample("ftp_training_tokens", 1)])
    with pytest.raises(MetricsError, match="takes the labels"):
        push("http://127.0.0.1:9", "selection", "hook", [Sample("ftp_posts_rejected", 1)])
    with pytest.raises(MetricsError, match="per task"):
        push("http://127.0.0.1:9", "selection", None, [Sample("ftp_posts_selected", 1)])


def _outcome(status: str, day: int) -> ExperimentOutcome:
    started = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=day)
    return ExperimentOutcome(f"e{day}", status, started, None if status == "running" else started + timedelta(days=3))


@pytest.mark.parametrize(
    ("statuses", "in_a_row"),
    [
        ([], 0),
        (["promoted"], 0),
        (["rejected", "rejected", "rejected"], 3),
        (["rejected", "promoted", "rejected", "rejected"], 2),
        # Cancelled and superseded experiments judged no challenger: they neither count nor reset.
        (["rejected", "cancelled", "rejected", "superseded", "rejected", "running"], 3),
        (["rejected", "rejected", "promoted"], 0),
    ],
)
def test_rejected_challengers_are_counted_since_the_last_promotion(statuses, in_a_row):
    history = [_outcome(status, day * 7) for day, status in enumerate(statuses)]
    assert rejected_in_a_row(history) == in_a_row


def test_every_metric_is_documented_with_its_kind_unit_and_labels():
    documented = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `(ftp_[a-z0-9_]+)` \| (gauge|counter) \| ([^|]+) \| ([^|]*) \|", line)
        if match:
            name, kind, unit, labels = (part.strip() for part in match.groups())
            documented[name] = (kind, unit, tuple(label.strip("` ") for label in labels.split(",") if label.strip()))
    expected = {
        spec.name: (spec.kind, spec.unit, (("task",) if spec.per_task else ()) + spec.labels) for spec in CATALOGUE
    }
    assert documented == expected
    assert len(METRICS) == len(CATALOGUE)  # no name twice
