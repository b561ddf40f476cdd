"""``fine_tuned_model``: one fine-tuning job per task and dataset, recorded in MLflow and registered
as the task's challenger."""

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MetadataValue, Output, asset
from dagster_openai import OpenAIResource

from ftp_assets.adapters.mlflow_registry import log_fine_tune_run, register_challenger
from ftp_assets.adapters.posts_db import redacted
from ftp_assets.adapters.providers.base import FineTuneRequest, FineTuningError
from ftp_assets.adapters.providers.openai_provider import OpenAIFineTuningProvider
from ftp_assets.adapters.providers.runner import run_fine_tune
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import FineTuningSettings, MlflowResource
from ftp_assets.steps.data_path import TrainingDataset

TRAINING_SAMPLE_LINES = 20


@dataclass(frozen=True)
class FineTunedModel:
    task: str
    model_id: str
    base_model: str
    job_id: str
    training_file_id: str
    dataset_hash: str
    mlflow_run_id: str
    registry_version: str


def _training_sample(dataset: TrainingDataset, folder: Path) -> Path:
    sample = folder / "training_sample.jsonl"
    with open(dataset.training_path, "rb") as source, open(sample, "wb") as target:
        target.writelines(itertools.islice(source, TRAINING_SAMPLE_LINES))
    return sample


@asset(
    partitions_def=task_partitions,
    group_name="training",
    kinds={"openai", "mlflow"},
    pool="fine_tuning",
    description="The task's model fine-tuned on training_jsonl (one paid job per dataset, found "
    "again on retries), registered in MLflow as challenger.",
)
def fine_tuned_model(
    context: AssetExecutionContext,
    training_jsonl: TrainingDataset,
    openai: OpenAIResource,
    fine_tuning: FineTuningSettings,
    mlflow: MlflowResource,
) -> Output[FineTunedModel]:
    task = context.partition_key
    base_model = fine_tuning.base_model(task)
    request = FineTuneRequest(
        task=task,
        dataset_hash=training_jsonl.dataset_hash,
        training_file=Path(training_jsonl.training_path),
        validation_file=Path(training_jsonl.validation_path) if training_jsonl.validation_path else None,
        base_model=base_model,
        suffix=f"threads-{task}",
        n_epochs=fine_tuning.hyperparameter("n_epochs"),
        batch_size=fine_tuning.hyperparameter("batch_size"),
        learning_rate_multiplier=fine_tuning.hyperparameter("learning_rate_multiplier"),
        seed=fine_tuning.seed,
        dagster_run_id=context.run.run_id,
    )
    with openai.get_client(context) as client:
        provider = OpenAIFineTuningProvider(client)
        try:
            result = run_fine_tune(
                provider,
                request,
                log=context.log.info,
                estimated_cost_usd=training_jsonl.estimated_cost_usd,
                budget_usd=fine_tuning.budget_usd,
                timeout_s=fine_tuning.timeout_hours * 3600,
                poll_initial_s=fine_tuning.poll_initial_seconds,
                poll_max_s=fine_tuning.poll_max_seconds,
            )
        except FineTuningError as error:
            raise Failure(str(error)) from None

    # Actual cost: the provider's billed (trained) tokens at the price the estimate used.
    actual_cost = (result.trained_tokens or 0) / 1e6 * training_jsonl.usd_per_million_training_tokens
    client = mlflow.client()
    with mlflow.errors(), tempfile.TemporaryDirectory() as folder:
        run_id = log_fine_tune_run(
            client,
            task=task,
            dagster_run_id=context.run.run_id,
            params={
                "provider": provider.name,
                "base_model": base_model,
                "dataset_hash": training_jsonl.dataset_hash,
                "n_epochs": request.n_epochs,
                "batch_size": request.batch_size,
                "learning_rate_multiplier": request.learning_rate_multiplier,
                "seed": request.seed,
                "training_examples": training_jsonl.training_examples,
                "validation_examples": training_jsonl.validation_examples,
                "job_id": result.job_id,
                "model_id": result.model_id,
            },
            step_metrics=[
                {"step": m.step, "train_loss": m.train_loss, "valid_loss": m.valid_loss} for m in result.step_metrics
            ],
            metrics={
                "trained_tokens": result.trained_tokens or 0,
                "cost_usd": actual_cost,
                "estimated_cost_usd": training_jsonl.estimated_cost_usd,
                "duration_s": result.duration_s,
            },
            sample_path=_training_sample(training_jsonl, Path(folder)),
        )
        version = register_challenger(
            client,
            task=task,
            run_id=run_id,
            provider_model_id=result.model_id,
            job_id=result.job_id,
            training_file_id=result.training_file_id,
            dataset_hash=training_jsonl.dataset_hash,
            base_model=base_model,
        )
    losses = [(m.step, m.train_loss) for m in result.step_metrics if m.train_loss is not None]
    metadata = {
        "provider": provider.name,
        "base_model": base_model,
        "job_id": result.job_id,
        "model_id": result.model_id,
        "training_file_id": result.training_file_id,
        "trained_tokens": result.trained_tokens or 0,
        "estimated_cost_usd": round(training_jsonl.estimated_cost_usd, 4),
        "actual_cost_usd": round(actual_cost, 4),
        "duration_s": round(result.duration_s, 1),
        "final_train_loss": result.final_train_loss,
        "final_valid_loss": result.final_valid_loss,
        "train_loss_by_step": MetadataValue.md(
            "| step | train loss |\n|---|---|\n" + "\n".join(f"| {s} | {l:.4f} |" for s, l in losses)
        ),
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": redacted(mlflow.resolved_uri()),
        "registry_version": str(version.version),
    }
    return Output(
        FineTunedModel(
            task=task,
            model_id=result.model_id,
            base_model=base_model,
            job_id=result.job_id,
            training_file_id=result.training_file_id,
            dataset_hash=training_jsonl.dataset_hash,
            mlflow_run_id=run_id,
            registry_version=str(version.version),
        ),
        metadata={key: value for key, value in metadata.items() if value is not None},
    )
