"""``experiment_evaluation_sensor``: evaluates a task's running experiment when new matured
outcome data has arrived, and once more after its maximum duration, checking every
``FTP_EXPERIMENT_SENSOR_INTERVAL_SECONDS`` (3600: each evaluation is a run, hourly looks are plenty
for an experiment of at most a week, and the always-valid interval stays valid however many there
are)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dagster import RunRequest, SensorDefinition, SensorEvaluationContext, SensorResult, sensor

from ftp_assets.domain.dataset import TASKS
from ftp_assets.domain.instants import parse_instant
from ftp_assets.environment import env_number
from ftp_assets.experiment.jobs import experiment_evaluation
from ftp_assets.resources import ExperimentSettings, PostsDatabaseResource


def experiment_evaluation_sensor() -> SensorDefinition:
    """Evaluates each running experiment when posts newer than its last evaluation have matured,
    and once more when its maximum duration has passed, so an experiment whose outcomes stopped
    arriving is still closed (rejected) rather than left running."""

    @sensor(
        name="experiment_evaluation_sensor",
        job=experiment_evaluation,
        minimum_interval_seconds=int(env_number("FTP_EXPERIMENT_SENSOR_INTERVAL_SECONDS", 3600, int)),
        description="Evaluates a task's running experiment when new matured outcome data has arrived.",
    )
    def _sensor(
        context: SensorEvaluationContext, posts_db: PostsDatabaseResource, experiment_settings: ExperimentSettings
    ) -> SensorResult:
        now = datetime.now(UTC)
        matured_before = now - timedelta(hours=experiment_settings.maturity_hours)
        db, store = posts_db.open(), posts_db.experiments()
        # Per task: the experiment evaluated last and the newest post that evaluation could see.
        seen: dict[str, dict[str, str]] = json.loads(context.cursor) if context.cursor else {}
        run_requests, skip_reasons = [], []
        for task in TASKS:
            experiment = store.running(task)
            if experiment is None:
                seen.pop(task, None)
                skip_reasons.append(f"{task}: no running experiment.")
                continue
            newest = db.newest_post_by(
                task,
                [experiment.champion_model, experiment.challenger_model],
                since=experiment.started_at,
                matured_before=matured_before,
            )
            last = seen.get(task, {}) if seen.get(task, {}).get("experiment_id") == experiment.experiment_id else {}
            new_outcomes = newest is not None and (
                not last.get("newest_post") or parse_instant(last["newest_post"]) < newest
            )
            deadline = experiment.started_at + timedelta(hours=experiment_settings.max_duration_hours)
            overdue = now >= deadline and not last.get("evaluated_after_deadline")
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
                "evaluated_after_deadline": now >= deadline,
            }
        return SensorResult(
            run_requests=run_requests,
            skip_reason=None if run_requests else " ".join(skip_reasons),
            cursor=json.dumps(seen),
        )

    return _sensor
