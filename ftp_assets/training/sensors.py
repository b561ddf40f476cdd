"""``<task>_data_threshold_sensor``: trains a task early once ``FTP_TRAINING_NEW_POSTS_THRESHOLD``
(100) qualifying posts have matured since its last successful training (the latest
``fine_tuned_model`` materialization of the task), unless a training of the task is in progress
or that training finished less than ``FTP_MIN_TRAINING_INTERVAL_HOURS`` (24) ago. One crossing
yields one run. It checks every ``FTP_TRAINING_SENSOR_INTERVAL_SECONDS`` (300).

**Maturity.** Posts gather reactions for a day or two after publication. The data-threshold
sensor counts a post only once it is older than the maturity (``ExperimentSettings.maturity_hours``,
the rule the A/B analysis uses too): by then its engagement rate has settled, so a post that
clears the bar late is still counted, and an early rate that later sinks is not. Counting only
matured posts also makes the count incremental: each tick counts the posts created between the
previous tick's maturity boundary and its own, one range of the ``created_at`` index whose size
follows the tick interval, not the table. A post stored more than a maturity after its
``created_at`` falls behind the boundary and is not counted (the agent stores a post when it
publishes it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    EventLogRecord,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from ftp_assets.adapters.posts_db import DEFAULT_WINDOW_DAYS, PostsDatabase, SelectionRule, Window
from ftp_assets.domain.dataset import TASKS
from ftp_assets.domain.instants import parse_instant
from ftp_assets.resources import ExperimentSettings, PostsDatabaseResource
from ftp_assets.settings import DeploymentSettings
from ftp_assets.training.jobs import training_cycle, training_run_request

PARTITION_TAG = "dagster/partition"  # Dagster's tag on every run of a partition
ENGAGED_POSTS = AssetKey("engaged_posts")
FINE_TUNED_MODEL = AssetKey("fine_tuned_model")
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
UNFINISHED = [status for status in DagsterRunStatus if status not in FINISHED]
NEVER_TRAINED = "never"


@dataclass(frozen=True)
class NewPostsCount:
    """A task's sensor cursor: the qualifying posts created before ``counted_until`` and since the
    last successful training (``baseline``) that have been counted so far."""

    baseline: str  # storage id of that training's materialization, or NEVER_TRAINED
    counted_until: datetime
    count: int = 0
    requested: bool = False  # a training run was requested for these posts

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "counted_until": self.counted_until.isoformat()})

    @classmethod
    def from_json(cls, cursor: str | None) -> NewPostsCount | None:
        if not cursor:
            return None
        fields = json.loads(cursor)
        return cls(**{**fields, "counted_until": parse_instant(fields["counted_until"])})

    def counted_to(self, db: PostsDatabase, matured_before: datetime, rule: SelectionRule) -> NewPostsCount:
        """Adds the qualifying posts of the slice that matured since the last count."""
        if matured_before <= self.counted_until:
            return self
        added = db.count_qualifying(Window(self.counted_until, matured_before), rule)
        return replace(self, counted_until=matured_before, count=self.count + added)


def _latest_materialization(
    instance: DagsterInstance, key: AssetKey, task: str, before_storage_id: int | None = None
) -> EventLogRecord | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[task], before_storage_id=before_storage_id),
        limit=1,
        ascending=False,
    ).records
    return records[0] if records else None


def _trained_until(instance: DagsterInstance, task: str, training: EventLogRecord) -> datetime:
    """The end of the window the training read (engaged_posts' ``window_end`` just before it);
    the training's own time when that is unknown."""
    data = _latest_materialization(instance, ENGAGED_POSTS, task, before_storage_id=training.storage_id)
    materialization = data.asset_materialization if data else None
    window_end = materialization.metadata.get("window_end") if materialization else None
    if window_end is not None and isinstance(window_end.value, str):
        return parse_instant(window_end.value)
    return datetime.fromtimestamp(training.timestamp, UTC)


def _training_in_progress(instance: DagsterInstance, task: str) -> str | None:
    """The id of an unfinished run that trains the task: training_cycle (the schedule's, this
    sensor's, or one launched by hand) or any run whose selection holds fine_tuned_model."""
    for run in instance.get_runs(RunsFilter(tags={PARTITION_TAG: task}, statuses=UNFINISHED)):
        if run.job_name == training_cycle.name or FINE_TUNED_MODEL in (run.asset_selection or ()):
            return run.run_id
    return None


@dataclass(frozen=True)
class DataThresholdSettings:
    threshold: int = 100
    min_interval: timedelta = timedelta(hours=24)
    rule: SelectionRule = field(default_factory=SelectionRule)  # the defaults engaged_posts uses
    # Posts older than one training window before the boundary would not be in the next training
    # anyway; without this bound a task's first tick would count the whole table.
    lookback: timedelta = timedelta(days=DEFAULT_WINDOW_DAYS)

    @classmethod
    def of(cls, settings: DeploymentSettings) -> DataThresholdSettings:
        return cls(
            threshold=settings.training_new_posts_threshold,
            min_interval=timedelta(hours=settings.min_training_interval_hours),
        )


@dataclass(frozen=True)
class DataThresholdTick:
    count: NewPostsCount
    run_request: RunRequest | None
    skip_reason: str | None


def evaluate_data_threshold(
    instance: DagsterInstance,
    db: PostsDatabase,
    task: str,
    cursor: str | None,
    *,
    now: datetime,
    maturity: timedelta,
    settings: DataThresholdSettings,
) -> DataThresholdTick:
    """One tick of a task's data-threshold sensor, at ``now``."""
    matured_before = now - maturity
    training = _latest_materialization(instance, FINE_TUNED_MODEL, task)
    baseline = str(training.storage_id) if training else NEVER_TRAINED
    count = NewPostsCount.from_json(cursor)
    if count is None or count.baseline != baseline:
        # A new training (or the first tick): count again from the end of its window.
        start = matured_before - settings.lookback
        if training:
            start = max(start, _trained_until(instance, task, training))
        count = NewPostsCount(baseline=baseline, counted_until=start)
    count = count.counted_to(db, matured_before, settings.rule)

    def skip(reason: str) -> DataThresholdTick:
        counted = f"{count.count}/{settings.threshold} new qualifying posts"
        return DataThresholdTick(count, None, f"{task}: {counted}; {reason}.")

    if count.requested:
        return skip("a training was requested for them; the count starts again after the next successful one")
    if count.count < settings.threshold:
        return skip("below the threshold")
    running = _training_in_progress(instance, task)
    if running:
        return skip(f"training run {running} is in progress")
    if training:
        trained_at = datetime.fromtimestamp(training.timestamp, UTC)
        if now - trained_at < settings.min_interval:
            hours = settings.min_interval.total_seconds() / 3600
            return skip(f"the last training finished at {trained_at:%Y-%m-%d %H:%M} UTC, less than {hours:g} h ago")
    # One run per crossing: the key names the training these posts came after. If the run fails
    # for good (after the instance's run retries) it is not requested again for the same posts;
    # the weekly schedule or a person takes over.
    request = training_run_request(task, now, run_key=f"{task}-data-after-{baseline}")
    return DataThresholdTick(replace(count, requested=True), request, None)


def data_threshold_sensor(task: str, deployment: DeploymentSettings) -> SensorDefinition:
    """The task's data-threshold sensor, with the deployment's settings."""
    settings = DataThresholdSettings.of(deployment)

    @sensor(
        name=f"{task}_data_threshold_sensor",
        job=training_cycle,
        minimum_interval_seconds=deployment.training_sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if deployment.automation_running else DefaultSensorStatus.STOPPED,
        description=f"Trains the {task} model early once {settings.threshold} qualifying posts have "
        "matured since its last successful training.",
    )
    def _sensor(
        context: SensorEvaluationContext, posts_db: PostsDatabaseResource, experiment_settings: ExperimentSettings
    ) -> SensorResult:
        tick = evaluate_data_threshold(
            context.instance,
            posts_db.open(),
            task,
            context.cursor,
            now=datetime.now(UTC),
            maturity=timedelta(hours=experiment_settings.maturity_hours),
            settings=settings,
        )
        return SensorResult(
            run_requests=[tick.run_request] if tick.run_request else [],
            skip_reason=tick.skip_reason,
            cursor=tick.count.to_json(),
        )

    return _sensor


def data_threshold_sensors(deployment: DeploymentSettings) -> list[SensorDefinition]:
    return [data_threshold_sensor(task, deployment) for task in TASKS]
