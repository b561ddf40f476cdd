"""``experiment_evaluation_sensor``: evaluates a task's running experiment when new matured
outcome data has arrived, and once more after its maximum duration, checking every
``FTP_EXPERIMENT_SENSOR_INTERVAL_SECONDS`` (3600: each evaluation is a run, and hourly looks are
plenty for an experiment of at most a week). The error rate holds however many looks there are: the
group-sequential boundaries spend error by the information each look adds, and the always-valid
interval allows any number (docs/experiment.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import DefaultSensorStatus, RunRequest, SensorDefinition, SensorEvaluationContext, SensorResult, sensor

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.domain.dataset import TASKS
from ftp_assets.domain.instants import parse_instant
from ftp_assets.experiment.jobs import experiment_evaluation
from ftp_assets.resources import ExperimentSettings, PostsDatabaseResource
from ftp_assets.settings import DeploymentSettings


@dataclass(frozen=True)
class ExperimentTick:
    run_requests: list[RunRequest]
    skip_reason: str | None
    cursor: str


def evaluate_experiment_tick(
    store: ExperimentStore,
    db: PostsDatabase,
    cursor: str | None,
    *,
    now: datetime,
    maturity: timedelta,
    max_duration: timedelta,
) -> ExperimentTick:
    """One tick of the experiment sensor, at ``now``: an evaluation of each task's running
    experiment whose newest matured outcome is newer than the one its last evaluation saw, and one
    more once it has run past ``max_duration``, so an experiment whose outcomes stopped arriving
    is still closed (rejected) rather than left running."""
    matured_before = now - maturity
    # Per task: the experiment evaluated last and the newest post that evaluation could see.
    seen: dict[str, dict[str, Any]] = json.loads(cursor) if cursor else {}
    run_requests, skip_reasons = [], []
    for task in TASKS:
        experiment = store.running(task)
        if experiment is None:
            seen.pop(task, None)
            skip_reasons.append(f"{task}: no running experiment.")
            continue
        # A planned experiment keeps the maturity and deadline it started with.
        plan = experiment.plan
        newest = db.newest_post_by(
            task,
            [experiment.champion_model, experiment.challenger_model],
            since=experiment.started_at,
            matured_before=now - timedelta(hours=plan.maturity_hours) if plan else matured_before,
        )
        last = seen.get(task, {}) if seen.get(task, {}).get("experiment_id") == experiment.experiment_id else {}
        new_outcomes = newest is not None and (
            not last.get("newest_post") or parse_instant(last["newest_post"]) < newest
        )
        duration = timedelta(hours=plan.max_duration_hours) if plan else max_duration
        past_deadline = now >= experiment.started_at + duration
        overdue = past_deadline and not last.get("evaluated_after_deadline")
        if not (new_outcomes or overdue):
            skip_reasons.append(f"{task}: no new matured outcome for {experiment.experiment_id}.")
            continue
        newest_key = newest.isoformat() if newest else "none"
        run_requests.append(
            RunRequest(
                run_key=f"{experiment.experiment_id}-{newest_key}" + ("-after-deadline" if overdue else ""),
                partition_key=task,
                run_config={
                    "ops": {
                        "ab_test_result": {
                            "config": {
                                "experiment_id": experiment.experiment_id,
                                "evaluated_at": now.isoformat(),
                            }
                        }
                    }
                },
            )
        )
        seen[task] = {
            "experiment_id": experiment.experiment_id,
            "newest_post": newest.isoformat() if newest else "",
            "evaluated_after_deadline": past_deadline,
        }
    return ExperimentTick(
        run_requests=run_requests,
        skip_reason=None if run_requests else " ".join(skip_reasons),
        cursor=json.dumps(seen),
    )


def experiment_evaluation_sensor(deployment: DeploymentSettings) -> SensorDefinition:
    """The sensor over :func:`evaluate_experiment_tick`, with the deployment's interval."""

    @sensor(
        name="experiment_evaluation_sensor",
        job=experiment_evaluation,
        minimum_interval_seconds=deployment.experiment_sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING if deployment.automation_running else DefaultSensorStatus.STOPPED,
        description="Evaluates a task's running experiment when new matured outcome data has arrived.",
    )
    def _sensor(
        context: SensorEvaluationContext, posts_db: PostsDatabaseResource, experiment_settings: ExperimentSettings
    ) -> SensorResult:
        tick = evaluate_experiment_tick(
            posts_db.experiments(),
            posts_db.open(),
            context.cursor,
            now=datetime.now(UTC),
            maturity=timedelta(hours=experiment_settings.maturity_hours),
            max_duration=timedelta(hours=experiment_settings.max_duration_hours),
        )
        return SensorResult(run_requests=tick.run_requests, skip_reason=tick.skip_reason, cursor=tick.cursor)

    return _sensor
