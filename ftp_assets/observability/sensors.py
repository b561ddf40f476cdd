"""``run_failure_alerts``: on each failed run of this code location, the run-failure counts for
Prometheus (with FTP_PUSHGATEWAY_URL) and a notification to a webhook (with FTP_ALERT_WEBHOOK_URL).

The counts are read from the Dagster instance, not incremented by the failing pod, so a run
that dies before it can push anything is still counted, and a lost push loses nothing: the next
failure pushes the totals again. The jobs counted are the code location's own (its definitions'
job names, which include Dagster's implicit ``__ASSET_JOB`` where the UI's materializations and
the automation run) plus the failed run's job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DagsterUserCodeExecutionError,
    DefaultSensorStatus,
    RepositoryDefinition,
    RunFailureSensorContext,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from dagster._utils.error import SerializableErrorInfo

from ftp_assets.adapters.endpoints import EndpointsError
from ftp_assets.adapters.notifications import WEBHOOK, WEBHOOK_VARIABLE, post_notification
from ftp_assets.domain.dataset import TASKS
from ftp_assets.resources import ExperimentSettings, MetricsPublisher, MlflowResource, PostsDatabaseResource
from ftp_assets.settings import SECRET_VARIABLES, DeploymentSettings
from ftp_assets.steps.failure_notice import (
    FailureNotice,
    JobFailures,
    error_text,
    failure_notice,
    notification_payload,
    run_failure_samples,
)

SENSOR_NAME = "run_failure_alerts"
REFRESH_SENSOR_NAME = "metrics_refresh"
# Often enough to correct a lost or overtaken push well within an alert's time scale, cheap
# enough for the code server (two queries per job, a few per task).
REFRESH_SECONDS = 300
# Dagster's implicit job of every code location with assets: the UI's "Materialize" runs in it.
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
PARTITION_TAG = "dagster/partition"
# Credentials that Dagster, MLflow and the cloud SDKs read from the environment, besides ours:
# an error may quote them too.
OTHER_SECRET_VARIABLES = (
    "FTP_PUSHGATEWAY_URL",  # when it carries a password
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DAGSTER_PG_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def _subclass_names(cls: type) -> set[str]:
    names = {cls.__name__}
    for subclass in cls.__subclasses__():
        names |= _subclass_names(subclass)
    return names


# The errors Dagster wraps a step's own error in ("Error occurred while executing op ..."); the
# notice tells the error they wrap.
_DAGSTER_WRAPPERS = frozenset(_subclass_names(DagsterUserCodeExecutionError))


def secret_values(settings: DeploymentSettings) -> list[str]:
    """The values, read now, of every variable that may hold a credential: SECRET_VARIABLES, the
    endpoints' key variables and the credentials of MLflow, Dagster's database and the cloud."""
    names = set(SECRET_VARIABLES) | set(OTHER_SECRET_VARIABLES)
    # The code location loaded with valid endpoints; a file broken since names nothing more.
    with contextlib.suppress(EndpointsError):
        names |= {endpoint.api_key_env for endpoint in settings.endpoints().values()}
    return [value for name in sorted(names) if (value := os.environ.get(name, ""))]


def described(error: SerializableErrorInfo) -> str:
    """The error the step raised, under Dagster's wrappers, as ``Class: message``."""
    while error.cls_name in _DAGSTER_WRAPPERS and error.cause is not None:
        error = error.cause
    return error_text(error.cls_name or "", error.message)


def failure_message(context: RunFailureSensorContext) -> str:
    """The failed steps' first error; else the run failure's error, else its message."""
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        if isinstance(error, SerializableErrorInfo):
            return described(error)
    error = getattr(context.failure_event.event_specific_data, "error", None)
    if isinstance(error, SerializableErrorInfo):
        return described(error)
    return context.failure_event.message or ""


def failed_assets(instance: DagsterInstance, run: DagsterRun, failed_steps: Sequence[str]) -> list[str]:
    """The assets of the failed steps (from the run's execution plan); else the run's asset
    selection; else the failed steps' keys (a job of ops)."""
    assets: list[str] = []
    if failed_steps and run.execution_plan_snapshot_id:
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        for step in plan.steps:
            if step.key in failed_steps:
                assets += [
                    output.properties.asset_key.to_user_string()
                    for output in step.outputs
                    if output.properties is not None and output.properties.asset_key is not None
                ]
    if not assets and run.asset_selection:
        assets = [key.to_user_string() for key in run.asset_selection]
    return sorted(set(assets)) or sorted(set(failed_steps))


def build_failure_notice(context: RunFailureSensorContext, settings: DeploymentSettings) -> FailureNotice:
    """The notice of the context's failed run, scrubbed of the environment's secrets."""
    run = context.dagster_run
    steps = [event.step_key for event in context.get_step_failure_events() if event.step_key]
    return failure_notice(
        job=run.job_name,
        run_id=run.run_id,
        ui_url=settings.dagster_ui_url,
        assets=failed_assets(context.instance, run, steps),
        partition=run.tags.get(PARTITION_TAG),
        error=failure_message(context),
        secrets=secret_values(settings),
    )


def counted_jobs(repository: RepositoryDefinition | None, *also: str) -> list[str]:
    """The jobs whose failures are counted: the code location's (with ``__ASSET_JOB`` even
    where the definitions have no assets: it is then 0) and ``also`` (a failed run's)."""
    names = set(repository.job_names) if repository is not None else set()
    return sorted(names | {IMPLICIT_ASSET_JOB, *also})


def job_failures(instance: DagsterInstance, job_names: Sequence[str]) -> list[JobFailures]:
    """Each job's failed runs in the instance, and when its latest failure ended: two indexed
    queries per job, the second only for a job that has failed."""
    failures = []
    for name in job_names:
        filters = RunsFilter(job_name=name, statuses=[DagsterRunStatus.FAILURE])
        count = instance.get_runs_count(filters)
        last = None
        if count:
            records = instance.get_run_records(filters, limit=1, order_by="update_timestamp", ascending=False)
            if records:
                record = records[0]
                last = record.end_time if record.end_time is not None else record.update_timestamp.timestamp()
        failures.append(JobFailures(job=name, failed_runs=count, last_failure_at=last))
    return failures


def run_failure_alerts(settings: DeploymentSettings) -> SensorDefinition:
    """The run-failure sensor of the deployment's settings (it reads the webhook's URL at use)."""

    # Running as soon as it has something to do, whatever FTP_AUTOMATION says: it launches no
    # run, and a paused deployment's manual runs fail too.
    configured = bool(settings.pushgateway_url) or settings.has(WEBHOOK_VARIABLE)

    @run_failure_sensor(
        name=SENSOR_NAME,
        default_status=DefaultSensorStatus.RUNNING if configured else DefaultSensorStatus.STOPPED,
        description=(
            "On each failed run of this code location: pushes the run-failure counts to the "
            "Pushgateway (FTP_PUSHGATEWAY_URL) and posts a notification to the webhook "
            "(FTP_ALERT_WEBHOOK_URL). Starts running when either is set. A webhook that fails "
            "fails the tick; that run's notification is not retried."
        ),
    )
    def _sensor(context: RunFailureSensorContext, metrics: MetricsPublisher) -> SkipReason | None:
        run = context.dagster_run
        webhook_url = settings.secret_value(WEBHOOK_VARIABLE)
        if not metrics.enabled and not webhook_url:
            return SkipReason(f"Neither FTP_PUSHGATEWAY_URL nor {WEBHOOK_VARIABLE} is set: nothing to do.")
        if metrics.enabled:
            jobs = counted_jobs(context.repository_def, context.dagster_run.job_name)
            # Read only when published; an instance that fails to answer is a warning, as a gateway's.
            metrics.publish(
                context.log, "runs", None, lambda: run_failure_samples(job_failures(context.instance, jobs))
            )
        if webhook_url:
            notice = build_failure_notice(context, settings)
            payload = notification_payload(notice, settings.alert_webhook_format)
            post_notification(webhook_url, payload)
            context.log.info(f"Notified {WEBHOOK} of the failure of run {run.run_id}.")
        return None

    return _sensor


def metrics_refresh(settings: DeploymentSettings) -> SensorDefinition:
    """The sensor that pushes, every ``REFRESH_SECONDS``, what the durable stores say: the
    run-failure counts (so each job's series starts at its count before any new failure, and
    ``increase()`` sees the first one), and each task's experiment and registry groups (so a
    push lost to an outage, or overtaken by an older snapshot of a concurrent run, is corrected
    within minutes)."""

    @sensor(
        name=REFRESH_SENSOR_NAME,
        minimum_interval_seconds=REFRESH_SECONDS,
        default_status=DefaultSensorStatus.RUNNING if settings.pushgateway_url else DefaultSensorStatus.STOPPED,
        description="Pushes the run-failure counts and each task's experiment and registry metrics from the "
        "Dagster instance, the experiments table and MLflow (FTP_PUSHGATEWAY_URL). Launches no run.",
    )
    def _sensor(
        context: SensorEvaluationContext,
        metrics: MetricsPublisher,
        posts_db: PostsDatabaseResource,
        mlflow: MlflowResource,
        experiment_settings: ExperimentSettings,
    ) -> SkipReason:
        if not metrics.enabled:
            return SkipReason("FTP_PUSHGATEWAY_URL is unset: nothing to publish.")
        jobs = counted_jobs(context.repository_def)
        metrics.publish(context.log, "runs", None, lambda: run_failure_samples(job_failures(context.instance, jobs)))
        try:
            store = posts_db.experiments()
        except Exception as error:  # the type only: the database's message may quote its URL
            context.log.warning(f"The experiments table could not be read ({type(error).__name__}): not refreshed.")
            return SkipReason("Published the run-failure counts only.")
        for task in TASKS:
            metrics.publish_experiments(context.log, store, task, experiment_settings)
            metrics.publish_registry(context.log, mlflow, store, task)
        return SkipReason(
            f"Published the run-failure counts and the {', '.join(TASKS)} experiment and registry metrics."
        )

    return _sensor
