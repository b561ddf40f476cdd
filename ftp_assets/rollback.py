"""Rollback of a task's champion, as a Dagster job (the CLI ``ftp rollback`` runs the same op)."""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from ftp_assets.mlflow_registry import rollback
from ftp_assets.resources import MlflowResource


class RollbackConfig(Config):
    task: str = Field(description="hook or body")


@op(description="Move the task's champion alias back to previous-champion.")
def rollback_champion(context: OpExecutionContext, config: RollbackConfig, mlflow: MlflowResource) -> None:
    restored, demoted = rollback(mlflow.client(), config.task)
    context.log.info(
        f"{config.task}: champion is version {restored.version} again "
        f"({restored.tags.get('provider_model_id', '?')}); version {demoted.version} is tagged rolled_back."
    )


@job(description="Restore the previous champion of a task in the MLflow registry.")
def rollback_job():
    rollback_champion()
