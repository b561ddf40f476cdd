"""The weekly schedule and the sensors, evaluated as Dagster evaluates them
(``build_schedule_context``, ``build_sensor_context``) on a real instance, over posts in a real
PostgreSQL database (and SQLite once)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
    validate_run_config,
)
from dagster._core.errors import DagsterInvalidDefinitionError
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._utils.schedules import cron_string_iterator
from dagster_openai import OpenAIResource

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.mlflow_registry import local_tracking_uri
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples, valid_format
from ftp_assets.experiment.sensors import evaluate_experiment_tick, experiment_evaluation_sensor
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
from ftp_assets.training.assets import fine_tuned_model
from ftp_assets.training.schedules import weekly_training_schedule
from ftp_assets.training.sensors import (
    DataThresholdSettings,
    NewPostsCount,
    data_threshold_sensor,
    evaluate_data_threshold,
)
from ftp_assets_tests.corpus import clean_posts, post

TAG = "ftp/fine-tune-task"
CHAMPION, CHALLENGER = "gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:local:threads-hook:abc123"


def definitions():
    # Imported here, after conftest has pointed FTP_HOME at the test's folder.
    from ftp_assets.definitions import defs

    return defs


def qualifying(first_id: int, count: int, created_at: datetime) -> list[dict]:
    """Posts the selection takes (rate 10%, 1,000 impressions)."""
    return [post(i, f"Hook {i}", f"Body {i}", created_at=created_at) for i in range(first_id, first_id + count)]


def left_out(first_id: int, created_at: datetime) -> list[dict]:
    """One post for each reason the selection leaves a post out."""
    counts = [(1_000, 10), (50, 40), (0, 0), (100, 500), (-5, 1), (10**12, 10**11)]
    return [
        post(first_id + n, "h", "b", impressions=i, engagements=e, created_at=created_at)
        for n, (i, e) in enumerate(counts)
    ]


@pytest.fixture
def posts(pg_posts_url) -> PostsDatabase:
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    return db


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def tick(
    sensor,
    instance: DagsterInstance,
    url: str,
    cursor: str | None,
    maturity_hours: float = 1.0,
    max_duration_hours: float = 168.0,
):
    resources = {
        "posts_db": PostsDatabaseResource(url=url),
        "experiment_settings": ExperimentSettings(maturity_hours=maturity_hours, max_duration_hours=max_duration_hours),
    }
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def add_run(instance: DagsterInstance, job_name: str, task: str, status: DagsterRunStatus) -> DagsterRun:
    """A run record as the daemon stores it (a queued run must say where its job lives)."""
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("ftp_assets"), "__repository__"), job_name
    )
    tags = {"dagster/partition": task, TAG: task}
    return instance.add_run(
        DagsterRun(job_name=job_name, run_id=uuid.uuid4().hex, status=status, tags=tags, remote_job_origin=origin)
    )


def window_end(request: RunRequest) -> datetime:
    return datetime.fromisoformat(request.run_config["ops"]["engaged_posts"]["config"]["window_end"])


# --- the weekly schedule -------------------------------------------------------------------


def test_weekly_schedule_trains_each_task_on_the_week_ending_at_its_tick():
    repository = definitions().get_repository_def()
    schedule = repository.get_schedule_def("weekly_training")
    after_wednesday = datetime(2026, 11, 25, 12, tzinfo=UTC)
    next_tick = next(
        cron_string_iterator(after_wednesday.timestamp(), schedule.cron_schedule, schedule.execution_timezone)
    )
    assert next_tick == datetime(2026, 11, 29, 2, tzinfo=UTC)  # Sunday 02:00 UTC

    # A late evaluation of last Sunday's tick reads last Sunday's week, not the present one.
    sunday = datetime(2026, 11, 22, 2, tzinfo=UTC)

    def evaluate(tick: datetime) -> list[RunRequest]:
        # As the daemon does, checking each request against the job (partition keys included).
        context = build_schedule_context(scheduled_execution_time=tick, repository_def=repository)
        return schedule.evaluate_tick(context).run_requests

    requests = evaluate(sunday)
    assert sorted(r.partition_key for r in requests) == ["body", "hook"]
    training_cycle = repository.get_job("training_cycle")
    for request in requests:
        assert window_end(request) == sunday
        assert request.tags[TAG] == request.partition_key
        assert validate_run_config(training_cycle, request.run_config)
    # One run key per (tick, task): a tick evaluated twice launches nothing twice.
    again = evaluate(sunday)
    assert [r.run_key for r in again] == [r.run_key for r in requests] and len({r.run_key for r in requests}) == 2
    following = evaluate(next_tick)
    assert not {r.run_key for r in following} & {r.run_key for r in requests}


def test_schedule_cron_and_timezone_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FTP_TRAINING_CRON", "30 5 * * 1")
    monkeypatch.setenv("FTP_TRAINING_TIMEZONE", "Europe/Paris")
    schedule = weekly_training_schedule(DeploymentSettings.from_environment())
    after = datetime(2026, 11, 25, tzinfo=UTC)
    next_tick = next(cron_string_iterator(after.timestamp(), schedule.cron_schedule, schedule.execution_timezone))
    assert next_tick.astimezone(UTC) == datetime(2026, 11, 30, 4, 30, tzinfo=UTC)
    request = schedule(build_schedule_context(scheduled_execution_time=next_tick))[0]
    assert window_end(request) == datetime(2026, 11, 30, 4, 30, tzinfo=UTC)

    monkeypatch.setenv("FTP_TRAINING_CRON", "every sunday")
    with pytest.raises(DagsterInvalidDefinitionError, match="every sunday"):
        weekly_training_schedule(DeploymentSettings.from_environment())


# --- the data-threshold sensor -------------------------------------------------------------


def test_crossing_the_threshold_requests_exactly_one_training(posts_url, instance, monkeypatch):
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "10")
    db = PostsDatabase(posts_url)
    db.init_schema()
    sensor = data_threshold_sensor("hook", DeploymentSettings.from_environment())
    now = datetime.now(UTC)
    db.insert_posts(
        qualifying(1, 6, now - timedelta(hours=2))
        + left_out(100, now - timedelta(hours=2))
        + qualifying(200, 10, now - timedelta(minutes=10))
    )

    first = tick(sensor, instance, posts_url, cursor=None)
    assert not first.run_requests
    assert "6/10 new qualifying posts" in first.skip_reason.skip_message

    # Four more mature; the ten recent posts (younger than the 1-hour maturity) are not counted.
    db.insert_posts(qualifying(300, 4, datetime.now(UTC) - timedelta(hours=1)))
    second = tick(sensor, instance, posts_url, cursor=first.cursor)
    (request,) = second.run_requests
    assert request.partition_key == "hook" and request.tags[TAG] == "hook"
    assert now <= window_end(request) <= datetime.now(UTC)
    assert validate_run_config(definitions().get_repository_def().get_job("training_cycle"), request.run_config)
    assert NewPostsCount.from_json(second.cursor).count == 10

    third = tick(sensor, instance, posts_url, cursor=second.cursor)
    assert not third.run_requests and "starts again after the next successful one" in third.skip_reason.skip_message
    # Were the cursor lost, the same crossing would carry the same run key, which Dagster runs once.
    (replayed,) = tick(sensor, instance, posts_url, cursor=None).run_requests
    assert replayed.run_key == request.run_key


def test_no_training_while_one_of_the_task_is_in_progress(posts, pg_posts_url, instance, monkeypatch):
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "5")
    posts.insert_posts(qualifying(1, 5, datetime.now(UTC) - timedelta(hours=2)))
    sensor = data_threshold_sensor("hook", DeploymentSettings.from_environment())
    # Neither another task's training nor an evaluation of this task holds it back...
    add_run(instance, "training_cycle", "body", DagsterRunStatus.STARTED)
    add_run(instance, "experiment_evaluation", "hook", DagsterRunStatus.STARTED)
    add_run(instance, "training_cycle", "hook", DagsterRunStatus.FAILURE)
    assert tick(sensor, instance, pg_posts_url, cursor=None).run_requests

    # ...but a queued or running training of the task does, until it has finished.
    queued = add_run(instance, "training_cycle", "hook", DagsterRunStatus.QUEUED)
    held = tick(sensor, instance, pg_posts_url, cursor=None)
    assert not held.run_requests and f"training run {queued.run_id} is in progress" in held.skip_reason.skip_message
    instance.report_run_canceled(queued)
    released = tick(sensor, instance, pg_posts_url, cursor=held.cursor)
    assert released.run_requests


def test_after_a_training_the_count_restarts_at_its_window_end_and_waits_the_interval(
    posts, pg_posts_url, instance, local_openai, tmp_path, monkeypatch
):
    """A real training in between: the sensor finds it in the instance by itself."""
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "10")
    start = datetime.now(UTC)
    posts.insert_posts(
        [{**row, "created_at": start - timedelta(days=2, minutes=i)} for i, row in enumerate(clean_posts(150))]
    )
    first = tick(
        data_threshold_sensor("hook", DeploymentSettings.from_environment()),
        instance,
        pg_posts_url,
        cursor=None,
        maturity_hours=24,
    )
    (request,) = first.run_requests
    assert request.run_key == "hook-data-after-never"

    # The requested run, as the daemon would launch it.
    resources = {
        "posts_db": PostsDatabaseResource(url=pg_posts_url),
        "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
        "openai": OpenAIResource(api_key=local_openai.api_key, base_url=local_openai.base_url),
        "fine_tuning": FineTuningSettings(poll_initial_seconds=0.05, poll_max_seconds=0.2),
        "self_hosted_training": SelfHostedTraining(),
        "mlflow": MlflowResource(tracking_uri=local_tracking_uri(tmp_path / "mlflow")),
        "experiment_settings": ExperimentSettings(),
        "metrics": MetricsPublisher(),
    }
    training = [engaged_posts, training_jsonl, enough_examples, valid_format, fine_tuned_model]
    trained = materialize(
        training,
        partition_key="hook",
        run_config=request.run_config,
        tags=request.tags,
        resources=resources,
        instance=instance,
    )
    assert trained.success

    # Posts the training read do not count again; the 12 published after its window do.
    window = window_end(request)
    posts.insert_posts(
        qualifying(10_000, 5, window - timedelta(hours=1)) + qualifying(20_000, 12, window + timedelta(hours=1))
    )
    settings = DataThresholdSettings(threshold=10, min_interval=timedelta(hours=48))

    def evaluate(hours_later: float, cursor: str):
        return evaluate_data_threshold(
            instance,
            posts,
            "hook",
            cursor,
            now=window + timedelta(hours=hours_later),
            maturity=timedelta(hours=24),
            settings=settings,
        )

    too_soon = evaluate(26, first.cursor)
    assert too_soon.count.count == 12 and too_soon.run_request is None
    assert "less than 48 h ago" in too_soon.skip_reason
    later = evaluate(49, too_soon.count.to_json())
    assert later.count.count == 12
    assert later.run_request.run_key != request.run_key and later.run_request.run_key.startswith("hook-data-after-")
    # The body model was never trained: its count is its own.
    body = evaluate_data_threshold(
        instance, posts, "body", None, now=window + timedelta(hours=26), maturity=timedelta(hours=24), settings=settings
    )
    assert body.count.count == 150 + 5 + 12


def test_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv("FTP_MIN_TRAINING_INTERVAL_HOURS", "0.5")
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "250")
    assert DataThresholdSettings.of(DeploymentSettings.from_environment()) == DataThresholdSettings(
        threshold=250, min_interval=timedelta(minutes=30)
    )
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="FTP_TRAINING_NEW_POSTS_THRESHOLD must be a positive int, got 'lots'"):
        data_threshold_sensor("hook", DeploymentSettings.from_environment())


# --- the experiment sensor -----------------------------------------------------------------


def arm_posts(first_id: int, created_at: datetime, count: int = 4) -> list[dict]:
    rows = qualifying(first_id, count, created_at)
    return [{**row, "hook_model": CHALLENGER if i % 2 else CHAMPION} for i, row in enumerate(rows)]


def test_experiment_sensor_evaluates_only_when_new_matured_outcomes_arrive(posts, pg_posts_url, instance):
    now = datetime.now(UTC)
    store = ExperimentStore(posts.engine)
    store.init_schema()
    experiment = store.start(
        task="hook",
        champion_model=CHAMPION,
        challenger_model=CHALLENGER,
        challenger_share=0.1,
        started_at=now - timedelta(days=3),
        registry_version="1",
    )
    sensor = experiment_evaluation_sensor(DeploymentSettings.from_environment())

    def evaluate(cursor):
        return tick(sensor, instance, pg_posts_url, cursor, maturity_hours=24)

    # Posts from before the experiment, or by other models, are no outcome of it.
    posts.insert_posts(
        arm_posts(1, now - timedelta(days=4))
        + [{**row, "hook_model": "someone-else"} for row in qualifying(10, 3, now - timedelta(days=2))]
    )
    empty = evaluate(None)
    assert not empty.run_requests
    assert f"hook: no new matured outcome for {experiment.experiment_id}" in empty.skip_reason.skip_message
    assert "body: no running experiment" in empty.skip_reason.skip_message

    posts.insert_posts(arm_posts(100, now - timedelta(days=2)))
    result = evaluate(empty.cursor)
    (first,) = result.run_requests
    assert first.partition_key == "hook"
    config = first.run_config["ops"]["ab_test_result"]["config"]
    assert config["experiment_id"] == experiment.experiment_id
    assert now <= datetime.fromisoformat(config["evaluated_at"]) <= datetime.now(UTC)
    assert validate_run_config(definitions().get_repository_def().get_job("experiment_evaluation"), first.run_config)

    # Nothing new, or only posts still gathering reactions: no evaluation.
    same = evaluate(result.cursor)
    assert not same.run_requests
    posts.insert_posts(arm_posts(200, now - timedelta(hours=2)))
    assert not evaluate(same.cursor).run_requests

    posts.insert_posts(arm_posts(300, now - timedelta(hours=30)))
    (second,) = evaluate(same.cursor).run_requests
    assert second.run_key != first.run_key and second.run_key.startswith(experiment.experiment_id)


def test_experiment_sensor_closes_an_experiment_whose_outcomes_stopped(posts, pg_posts_url, instance):
    """Past its maximum duration an experiment is evaluated once more even without new posts,
    so the decision rule can reject it instead of leaving it running for ever."""
    now = datetime.now(UTC)
    store = ExperimentStore(posts.engine)
    store.init_schema()
    experiment = store.start(
        task="hook",
        champion_model=CHAMPION,
        challenger_model=CHALLENGER,
        challenger_share=0.1,
        started_at=now - timedelta(hours=10),
        registry_version="1",
    )
    sensor = experiment_evaluation_sensor(DeploymentSettings.from_environment())
    within = tick(sensor, instance, pg_posts_url, None, maturity_hours=24, max_duration_hours=24)
    assert not within.run_requests
    overdue = tick(sensor, instance, pg_posts_url, within.cursor, maturity_hours=24, max_duration_hours=8)
    (request,) = overdue.run_requests
    assert request.run_key == f"{experiment.experiment_id}-none-after-deadline"
    assert request.run_config["ops"]["ab_test_result"]["config"]["experiment_id"] == experiment.experiment_id
    again = tick(sensor, instance, pg_posts_url, overdue.cursor, maturity_hours=24, max_duration_hours=8)
    assert not again.run_requests


# --- the experiment sensor's tick, called directly ------------------------------------------

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


@pytest.fixture
def store(posts) -> ExperimentStore:
    store = ExperimentStore(posts.engine)
    store.init_schema()
    return store


def start(store: ExperimentStore, challenger: str = CHALLENGER, started_at: datetime = NOW - timedelta(days=3)):
    return store.start(
        task="hook",
        champion_model=CHAMPION,
        challenger_model=challenger,
        challenger_share=0.1,
        started_at=started_at,
        registry_version="1",
    )


def experiment_tick(store, posts, cursor, now=NOW, max_duration=timedelta(days=7)):
    return evaluate_experiment_tick(
        store, posts, cursor, now=now, maturity=timedelta(hours=24), max_duration=max_duration
    )


def test_tick_requests_an_evaluation_when_a_new_outcome_has_matured(posts, store):
    experiment = start(store)
    newest = NOW - timedelta(days=2)
    posts.insert_posts(arm_posts(1, newest - timedelta(hours=5)) + arm_posts(10, newest))

    tick = experiment_tick(store, posts, None)
    (request,) = tick.run_requests
    assert tick.skip_reason is None
    assert request.run_key == f"{experiment.experiment_id}-{newest.isoformat()}" and request.partition_key == "hook"
    assert request.run_config["ops"]["ab_test_result"]["config"] == {
        "experiment_id": experiment.experiment_id,
        "evaluated_at": NOW.isoformat(),
    }

    # An outcome still gathering reactions is not new yet; once it has matured, it is.
    posts.insert_posts(arm_posts(20, NOW - timedelta(hours=2)))
    skipped = experiment_tick(store, posts, tick.cursor, now=NOW + timedelta(hours=21))
    assert not skipped.run_requests
    (later,) = experiment_tick(store, posts, skipped.cursor, now=NOW + timedelta(hours=23)).run_requests
    assert later.run_key == f"{experiment.experiment_id}-{(NOW - timedelta(hours=2)).isoformat()}"


def test_tick_without_a_new_outcome_skips_and_says_why(posts, store):
    experiment = start(store)
    posts.insert_posts(arm_posts(1, NOW - timedelta(days=2)))
    first = experiment_tick(store, posts, None)
    assert first.run_requests

    again = experiment_tick(store, posts, first.cursor, now=NOW + timedelta(hours=1))
    assert again.run_requests == []
    assert again.skip_reason == (
        f"hook: no new matured outcome for {experiment.experiment_id}. body: no running experiment."
    )
    assert again.cursor == first.cursor


def test_tick_past_the_deadline_requests_one_last_evaluation_and_not_again(posts, store):
    experiment = start(store, started_at=NOW - timedelta(hours=10))
    within = experiment_tick(store, posts, None, max_duration=timedelta(hours=24))
    assert not within.run_requests

    overdue = experiment_tick(store, posts, within.cursor, max_duration=timedelta(hours=8))
    (request,) = overdue.run_requests
    assert request.run_key == f"{experiment.experiment_id}-none-after-deadline"
    assert request.run_config["ops"]["ab_test_result"]["config"]["experiment_id"] == experiment.experiment_id
    again = experiment_tick(store, posts, overdue.cursor, now=NOW + timedelta(hours=1), max_duration=timedelta(hours=8))
    assert not again.run_requests

    # After the deadline a new outcome is evaluated as any other, without the suffix.
    posts.insert_posts(arm_posts(1, NOW - timedelta(hours=9)))
    (late,) = experiment_tick(
        store, posts, again.cursor, now=NOW + timedelta(days=1), max_duration=timedelta(hours=8)
    ).run_requests
    assert late.run_key == f"{experiment.experiment_id}-{(NOW - timedelta(hours=9)).isoformat()}"


def test_tick_starts_over_for_an_experiment_that_replaced_the_last_one(posts, store):
    first = start(store)
    posts.insert_posts(arm_posts(1, NOW - timedelta(days=2)))
    evaluated = experiment_tick(store, posts, None)
    assert evaluated.run_requests

    # A new challenger replaces the experiment; the champion's posts are its outcomes too.
    second = start(store, challenger="ft:gpt-4o-mini-2024-07-18:local:threads-hook:def456")
    assert second.experiment_id != first.experiment_id
    (request,) = experiment_tick(store, posts, evaluated.cursor).run_requests
    assert request.run_key == f"{second.experiment_id}-{(NOW - timedelta(days=2)).isoformat()}"
    assert request.run_config["ops"]["ab_test_result"]["config"]["experiment_id"] == second.experiment_id

    # With no experiment running, the task is dropped from the cursor.
    store.finish(second.experiment_id, decision="reject", reason="test", statistics={}, decided_at=NOW)
    closed = experiment_tick(store, posts, evaluated.cursor)
    assert not closed.run_requests and "hook: no running experiment." in closed.skip_reason
    assert "hook" not in json.loads(closed.cursor)
