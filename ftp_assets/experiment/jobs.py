"""The experiment's jobs: evaluate a task's running experiment, and roll a champion back.
``ftp rollback`` calls the same :func:`rollback_champion_of` as ``rollback_job``."""

from dagster import AssetSelection, Config, OpExecutionContext, define_asset_job, job, op
from pydantic import Field

from ftp_assets.adapters.mlflow_registry import rollback
from ftp_assets.resources import MlflowResource

experiment_evaluation = define_asset_job(
    "experiment_evaluation",
    selection=AssetSelection.assets("ab_test_result", "registered_model"),
    description="Evaluate the task's running experiment and act on a final decision.",
)


def rollback_champion_of(mlflow: MlflowResource, task: str) -> str:
    """Move the task's champion back to previous-champion; says what it did."""
    with mlflow.errors():
        restored, demoted = rollback(mlflow.client(), task)
    return (
        f"{task}: champion is version {restored.version} again "
        f"({restored.tags.get('provider_model_id', '?')}); version {demoted.version} is tagged rolled_back."
    )


class RollbackConfig(Config):
    task: str = Field(description="hook or body")


@op(description="Move the task's champion alias back to previous-champion.")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig, mlflow: MlflowResource) -> None:
    context.log.info(rollback_champion_of(mlflow, config.task))


@job(description="Restore the previous champion of a task in the MLflow registry.")
def rollback_job():
    rollback_champion()
