"""``fine_tuned_model``: one fine-tuning job per task and dataset, recorded in MLflow and registered
as the task's challenger; a thin asset over :func:`ftp_assets.steps.fine_tune.fine_tune`, with
OpenAI's polling provider or the self-hosted trainer (FTP_PROVIDER)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from dagster import AssetExecutionContext, Failure, Output, asset
from dagster_openai import OpenAIResource

from ftp_assets.adapters.metrics import Sample
from ftp_assets.adapters.mlflow_registry import fine_tuning_costs
from ftp_assets.adapters.posts_db import redacted
from ftp_assets.adapters.providers.base import FineTuningError
from ftp_assets.adapters.providers.openai_provider import OpenAIFineTuningProvider
from ftp_assets.metadata import train_loss_table
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import (
    DatasetStorage,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
)
from ftp_assets.steps.data_path import TrainingDataset
from ftp_assets.steps.fine_tune import FineTunedModel, FineTuneOptions, ProviderTrainer, Trainer, fine_tune
from ftp_assets.steps.loop_metrics import spend_samples, training_samples
from ftp_assets.training.self_hosted import SelfHostedTrainer


@asset(
    partitions_def=task_partitions,
    group_name="training",
    kinds={"openai", "pytorch", "mlflow"},
    pool="fine_tuning",
    description="The task's model fine-tuned on training_jsonl by OpenAI or the self-hosted LoRA trainer "
    "(one job per dataset, found again on retries), registered in MLflow as challenger.",
)
def fine_tuned_model(
    context: AssetExecutionContext,
    training_jsonl: TrainingDataset,
    openai: OpenAIResource,
    fine_tuning: FineTuningSettings,
    self_hosted_training: SelfHostedTraining,
    mlflow: MlflowResource,
    posts_db: PostsDatabaseResource,
    dataset_storage: DatasetStorage,
    metrics: MetricsPublisher,
) -> Output[FineTunedModel]:
    task = context.partition_key
    # A retry in another pod fetches the files that training_jsonl left in shared storage.
    shared = training_jsonl.shared_folder
    dataset = replace(
        training_jsonl,
        training_path=dataset_storage.local_file(training_jsonl.training_path, shared),
        validation_path=training_jsonl.validation_path
        and dataset_storage.local_file(training_jsonl.validation_path, shared),
    )
    jobs = posts_db.fine_tuning_jobs()

    @contextmanager
    def chosen_trainer() -> Iterator[tuple[Trainer, FineTuneOptions]]:
        if fine_tuning.provider == "self_hosted":
            options = self_hosted_training.fine_tune_options(fine_tuning)
            trainer = SelfHostedTrainer(
                context, self_hosted_training, dataset, shared, jobs, dataset_storage, timeout_s=options.timeout_s
            )
            yield trainer, options
        else:
            options = fine_tuning.fine_tune_options(task)
            with openai.get_client(context) as client:
                yield ProviderTrainer(OpenAIFineTuningProvider(client), jobs, options, context.log.info), options

    def publish_spend() -> None:
        # Before the job too: a first job's cost must be an increase from 0 to be counted.
        def samples() -> list[Sample]:
            costs = fine_tuning_costs(mlflow.client(), task)
            return spend_samples(costs, provider=fine_tuning.provider, weekly_budget_usd=fine_tuning.weekly_budget_usd)

        metrics.publish(context.log, "spend", task, samples)

    publish_spend()
    with chosen_trainer() as (trainer, options), mlflow.errors():
        try:
            trained = fine_tune(trainer, mlflow.client(), dataset, options, dagster_run_id=context.run.run_id)
        except FineTuningError as error:
            raise Failure(str(error)) from None
    model, result = trained.model, trained.result
    finished_at = datetime.now(UTC)
    metrics.publish(context.log, "training", task, lambda: training_samples(trained, finished_at=finished_at))
    publish_spend()
    metadata: dict[str, Any] = {
        "provider": trained.provider,
        "base_model": model.base_model,
        "job_id": model.job_id,
        "model_id": model.model_id,
        "training_file_id": model.training_file_id,
        "trained_tokens": result.trained_tokens or 0,
        "estimated_cost_usd": round(trained.estimated_cost_usd, 4),
        "actual_cost_usd": round(trained.actual_cost_usd, 4),
        "duration_s": round(result.duration_s, 1),
        "final_train_loss": result.final_train_loss,
        "final_valid_loss": result.final_valid_loss,
        "train_loss_by_step": train_loss_table(result.step_metrics),
        "mlflow_run_id": model.mlflow_run_id,
        "mlflow_tracking_uri": redacted(mlflow.resolved_uri()),
        "registry_version": model.registry_version,
        **result.registry_tags,
    }
    return Output(model, metadata={key: value for key, value in metadata.items() if value is not None})
