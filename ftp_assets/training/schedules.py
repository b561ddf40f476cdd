"""The weekly training of every task."""

from __future__ import annotations

from dagster import DefaultScheduleStatus, RunRequest, ScheduleDefinition, ScheduleEvaluationContext, schedule

from ftp_assets.domain.dataset import TASKS
from ftp_assets.settings import DeploymentSettings
from ftp_assets.training.jobs import training_cycle, training_run_request


def weekly_training_schedule(settings: DeploymentSettings) -> ScheduleDefinition:
    """By default each Sunday at 02:00 UTC (``FTP_TRAINING_CRON``, ``FTP_TRAINING_TIMEZONE``),
    each run's window ending at the tick's scheduled time, so a late or retried run reads the same
    week. Running from the start in production unless ``FTP_AUTOMATION=off``."""

    @schedule(
        name="weekly_training",
        job=training_cycle,
        cron_schedule=settings.training_cron,
        execution_timezone=settings.training_timezone,
        default_status=DefaultScheduleStatus.RUNNING if settings.automation_running else DefaultScheduleStatus.STOPPED,
        description="The training cycle of every task over the week that ends at the tick.",
    )
    def weekly_training(context: ScheduleEvaluationContext) -> list[RunRequest]:
        tick = context.scheduled_execution_time
        return [training_run_request(task, tick, run_key=f"{task}-{tick.isoformat()}") for task in TASKS]

    return weekly_training
