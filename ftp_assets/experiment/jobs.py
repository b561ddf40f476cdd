"""The experiment's jobs: evaluate a task's running experiment, and roll a champion back.
``ftp-assets rollback`` calls the same :func:`ftp_assets.steps.experiment.rollback_champion_of` as
``rollback_job``."""

from datetime import UTC, datetime

from dagster import AssetSelection, Config, OpExecutionContext, define_asset_job, job, op
from pydantic import Field

from ftp_assets.resources import ExperimentSettings, MetricsPublisher, MlflowResource, PostsDatabaseResource
from ftp_assets.steps.experiment import rollback_champion_of

experiment_evaluation = define_asset_job(
    "experiment_evaluation",
    selection=AssetSelection.assets("ab_test_result", "registered_model"),
    description="Evaluate the task's running experiment and act on a final decision.",
)


class RollbackConfig(Config):
    task: str = Field(description="hook or body")


@op(
    description="Move the task's champion alias back to previous-champion and cancel the task's running "
    "experiment, whose control arm was the demoted champion; returns what was done."
)
def rollback_champion(
    context: OpExecutionContext,
    config: RollbackConfig,
    mlflow: MlflowResource,
    posts_db: PostsDatabaseResource,
    experiment_settings: ExperimentSettings,
    metrics: MetricsPublisher,
) -> str:
    store = posts_db.experiments()
    with mlflow.errors():
        done = rollback_champion_of(mlflow.client(), store, config.task, now=datetime.now(UTC))
    context.log.info(done)
    metrics.publish_experiments(context.log, store, config.task, experiment_settings)
    metrics.publish_registry(context.log, mlflow, store, config.task)
    return done


@job(description="Restore the previous champion of a task in the MLflow registry and cancel its stale experiment.")
def rollback_job():
    rollback_champion()
