"""The weekly training cycle of one task, and how a run of it is requested."""

from __future__ import annotations

from datetime import UTC, datetime

from dagster import AssetSelection, RunRequest, define_asset_job

# On this tag the instance's run coordinator (dagster.yaml) lets one run per task go at a time.
FINE_TUNE_TASK_TAG = "ftp/fine-tune-task"

training_cycle = define_asset_job(
    "training_cycle",
    # Asset keys rather than objects: the cycle spans the data, training and experiment groups.
    selection=AssetSelection.assets("engaged_posts", "training_jsonl", "fine_tuned_model", "ab_experiment"),
    description="The weekly training cycle of one task, from the posts to the challenger's experiment.",
)


def training_run_request(task: str, window_end: datetime, run_key: str) -> RunRequest:
    window = {"window_end": window_end.astimezone(UTC).isoformat()}
    return RunRequest(
        run_key=run_key,
        partition_key=task,
        run_config={"ops": {"engaged_posts": {"config": window}}},
        tags={FINE_TUNE_TASK_TAG: task},
    )
