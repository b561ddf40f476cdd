"""Fine-tuning a task's model on one dataset, without Dagster: the provider's job (found again on
a retry, so it is paid for once), its MLflow run, and the registry version that becomes the task's
challenger. The ``fine_tuned_model`` asset calls :func:`fine_tune`."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlflow import MlflowClient

from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore
from ftp_assets.adapters.mlflow_registry import log_fine_tune_run, register_challenger
from ftp_assets.adapters.providers.base import (
    Auto,
    FineTuneRequest,
    FineTuneResult,
    FineTuningProvider,
)
from ftp_assets.adapters.providers.runner import run_fine_tune
from ftp_assets.domain.chat_format import auto_n_epochs
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
    # Who made it; "openai" for values stored before the self-hosted provider existed.
    provider: str = "openai"


@dataclass(frozen=True, kw_only=True)
class FineTuneOptions:
    """How the job is made ("auto" lets the provider choose) and the guards around it.
    ``max_auto_epochs``, when set, is what the cost guard assumes for ``n_epochs="auto"`` instead
    of the provider's rule."""

    base_model: str
    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    seed: int | None = None
    max_auto_epochs: int | None = None
    # A trainer's own hyperparameters beyond OpenAI's three (the self-hosted LoRA settings).
    extra_hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    # The price the cost guard applies instead of the dataset's (OpenAI's price for the base).
    usd_per_million_training_tokens: float | None = None
    budget_usd: float
    timeout_s: float
    poll_initial_s: float
    poll_max_s: float
    # Set where a provider that does not answer at all will not start by itself (the local
    # service): the step fails at once with this sentence instead of waiting out ``timeout_s``.
    unreachable_hint: str | None = None


class Trainer(Protocol):
    """What runs one request to its result: a polling provider (:class:`ProviderTrainer`) or the
    self-hosted trainer, which Dagster Pipes runs to the end in one blocking call. Both share the
    request's idempotency key and the durable job record, so a re-run trains nothing twice."""

    @property
    def name(self) -> str: ...

    def train(self, request: FineTuneRequest, *, estimated_cost_usd: float) -> FineTuneResult: ...


@dataclass(frozen=True)
class ProviderTrainer:
    """A :class:`FineTuningProvider` (OpenAI or a compatible API) run by the polling runner."""

    provider: FineTuningProvider
    jobs: FineTuningJobStore
    options: FineTuneOptions
    log: Callable[[str], None]

    @property
    def name(self) -> str:
        return self.provider.name

    def train(self, request: FineTuneRequest, *, estimated_cost_usd: float) -> FineTuneResult:
        return run_fine_tune(
            self.provider,
            request,
            jobs=self.jobs,
            log=self.log,
            estimated_cost_usd=estimated_cost_usd,
            budget_usd=self.options.budget_usd,
            timeout_s=self.options.timeout_s,
            poll_initial_s=self.options.poll_initial_s,
            poll_max_s=self.options.poll_max_s,
            unreachable_hint=self.options.unreachable_hint,
        )


@dataclass(frozen=True)
class FineTuning:
    """The registered model and what its job reported, was expected to cost and cost."""

    model: FineTunedModel
    provider: str
    result: FineTuneResult
    estimated_cost_usd: float
    actual_cost_usd: float


def estimated_epochs(options: FineTuneOptions, training_examples: int) -> int:
    """The epochs the cost guard assumes: those requested, or for "auto" the configured maximum,
    else the epochs the provider's rule picks for this many examples."""
    if options.n_epochs != "auto":
        return options.n_epochs
    return options.max_auto_epochs or auto_n_epochs(training_examples)


def estimated_cost_usd(dataset: TrainingDataset, options: FineTuneOptions) -> float:
    """The training file's tokens times the epochs, at the dataset's price."""
    billed_tokens = dataset.training_tokens * estimated_epochs(options, dataset.training_examples)
    return billed_tokens / 1e6 * _price(dataset, options)


def _price(dataset: TrainingDataset, options: FineTuneOptions) -> float:
    if options.usd_per_million_training_tokens is not None:
        return options.usd_per_million_training_tokens
    return dataset.usd_per_million_training_tokens


def fine_tune(
    trainer: Trainer,
    client: MlflowClient,
    dataset: TrainingDataset,
    options: FineTuneOptions,
    *,
    dagster_run_id: str,
) -> FineTuning:
    """Run the dataset's fine-tuning job to the end (or re-attach to it, or reuse its finished
    model), record it as an MLflow run and register its model as the task's challenger.

    Raises the provider's :class:`~ftp_assets.adapters.providers.base.FineTuningError` (over
    budget, failed, timed out) before anything is recorded, and MLflow's own errors.
    """
    task = dataset.task
    request = FineTuneRequest(
        task=task,
        dataset_hash=dataset.dataset_hash,
        training_file=Path(dataset.training_path),
        validation_file=Path(dataset.validation_path) if dataset.validation_path else None,
        base_model=options.base_model,
        suffix=f"threads-{task}",
        n_epochs=options.n_epochs,
        batch_size=options.batch_size,
        learning_rate_multiplier=options.learning_rate_multiplier,
        seed=options.seed,
        extra_hyperparameters=options.extra_hyperparameters,
        dagster_run_id=dagster_run_id,
    )
    estimate_usd = estimated_cost_usd(dataset, options)
    # The trainer applies the cost guard before anything is paid for (run_fine_tune, for OpenAI).
    result = trainer.train(request, estimated_cost_usd=estimate_usd)
    # As the provider measured it, else its billed (trained) tokens at the price the estimate used.
    actual_cost_usd = (
        result.cost_usd
        if result.cost_usd is not None
        else (result.trained_tokens or 0) / 1e6 * _price(dataset, options)
    )
    with tempfile.TemporaryDirectory() as folder:
        run_id = log_fine_tune_run(
            client,
            task=task,
            dagster_run_id=dagster_run_id,
            params={
                "provider": trainer.name,
                "base_model": options.base_model,
                "dataset_hash": dataset.dataset_hash,
                "idempotency_key": request.idempotency_key,
                # What the job trained with ("auto" resolved by the provider), then what was asked.
                **{name: result.hyperparameters.get(name, "unknown") for name in request.hyperparameters},
                **{f"requested_{name}": value for name, value in request.hyperparameters.items()},
                "estimated_n_epochs": estimated_epochs(options, dataset.training_examples),
                "seed": request.seed,
                "training_examples": dataset.training_examples,
                "validation_examples": dataset.validation_examples,
                "job_id": result.job_id,
                "model_id": result.model_id,
            },
            step_metrics=[
                {"step": m.step, "train_loss": m.train_loss, "valid_loss": m.valid_loss} for m in result.step_metrics
            ],
            metrics={
                "trained_tokens": result.trained_tokens or 0,
                "cost_usd": actual_cost_usd,
                "estimated_cost_usd": estimate_usd,
                "duration_s": result.duration_s,
            },
            sample_path=_training_sample(dataset, Path(folder)),
        )
    version = register_challenger(
        client,
        task=task,
        run_id=run_id,
        provider_model_id=result.model_id,
        job_id=result.job_id,
        training_file_id=result.training_file_id,
        dataset_hash=dataset.dataset_hash,
        base_model=options.base_model,
        provider=trainer.name,
        artifacts_dir=result.artifacts_dir,
        extra_tags=result.registry_tags,
    )
    model = FineTunedModel(
        task=task,
        model_id=result.model_id,
        base_model=options.base_model,
        job_id=result.job_id,
        training_file_id=result.training_file_id,
        dataset_hash=dataset.dataset_hash,
        mlflow_run_id=run_id,
        registry_version=str(version.version),
        provider=trainer.name,
    )
    return FineTuning(
        model=model,
        provider=trainer.name,
        result=result,
        estimated_cost_usd=estimate_usd,
        actual_cost_usd=actual_cost_usd,
    )


def _training_sample(dataset: TrainingDataset, folder: Path) -> Path:
    """The first lines of the training file, kept with the run as an example of what it learned."""
    sample = folder / "training_sample.jsonl"
    with open(dataset.training_path, "rb") as source, open(sample, "wb") as target:
        target.writelines(itertools.islice(source, TRAINING_SAMPLE_LINES))
    return sample
