"""The fine-tuning provider interface: what the assets need from any trainer.

OpenAI stops accepting new self-serve fine-tuning jobs after 2027-01-06, so the training step
talks to this small interface (find, upload files, create, status, new events, result, cancel)
and nothing else.
Another OpenAI-compatible API (by ``base_url``) or a self-hosted trainer replaces OpenAI by
implementing it; the assets and :func:`ftp_assets.adapters.providers.runner.run_fine_tune` stay as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

Auto = Literal["auto"]

SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True, kw_only=True)
class FineTuneRequest:
    """One fine-tuning job to run. Everything that changes the model (dataset, task, base model,
    hyperparameters, seed) makes up its :attr:`idempotency_key`."""

    task: str
    dataset_hash: str
    training_file: Path
    base_model: str
    suffix: str
    validation_file: Path | None = None
    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"
    seed: int | None = None
    # A trainer's own hyperparameters (the self-hosted trainer's LoRA rank, learning rate, ...): part
    # of the key when present. Empty for OpenAI, whose keys therefore stay as they were.
    extra_hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    dagster_run_id: str | None = None

    def __post_init__(self) -> None:
        # An empty key would match every job with an empty value: refuse it rather than re-attach
        # to a stranger's job.
        if not self.task or not self.dataset_hash:
            raise ValueError("FineTuneRequest needs a non-empty task and dataset_hash")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The requested hyperparameters, "auto" where the provider chooses."""
        return {
            **self.extra_hyperparameters,
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": (
                self.learning_rate_multiplier
                if self.learning_rate_multiplier == "auto"
                else float(self.learning_rate_multiplier)
            ),
        }

    @property
    def idempotency_key(self) -> str:
        """SHA-256 (hex, 64 characters) of the canonical JSON of what changes the model: a job
        with the same key is the same model, so a retry re-attaches to it instead of paying again."""
        fields = {
            "dataset_hash": self.dataset_hash,
            "task": self.task,
            "base_model": self.base_model,
            "seed": self.seed,
            **self.hyperparameters,
        }
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class FineTuneJob:
    """A provider's job as last seen. ``status`` uses OpenAI's names; unknown ones count as live."""

    job_id: str
    status: str
    base_model: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    training_file_id: str
    error_code: str | None
    error_message: str | None
    created_at: datetime
    finished_at: datetime | None
    # As the provider reports them: numbers once it has resolved "auto" (OpenAI does on validation).
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, kw_only=True)
class Submission:
    """What submitting a request did: created a job, or re-attached to one."""

    job: FineTuneJob
    reattached: bool


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    id: str
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class StepMetrics:
    step: int
    train_loss: float | None
    valid_loss: float | None


@dataclass(frozen=True, kw_only=True)
class FineTuneResult:
    model_id: str
    job_id: str
    training_file_id: str
    trained_tokens: int | None
    step_metrics: tuple[StepMetrics, ...]
    final_train_loss: float | None
    final_valid_loss: float | None
    duration_s: float
    # The hyperparameters the job trained with, as the provider reports them.
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # A folder of files that make up the model (a self-hosted adapter and its manifest), logged
    # with the MLflow run and the source of the registered version; None when the provider keeps
    # the model (OpenAI).
    artifacts_dir: Path | None = None
    # What the job cost when the provider measures it otherwise than by billed tokens (the
    # self-hosted trainer: GPU time at the configured price); None: trained tokens at the price.
    cost_usd: float | None = None
    # What the registered version must say about the model besides the common tags (the base
    # and its revision a self-hosted adapter needs).
    registry_tags: Mapping[str, str] = field(default_factory=dict)


class FineTuningProvider(Protocol):
    """Implementations raise :class:`ProviderUnavailable` for what waiting may cure (the runner
    waits and asks again) and :class:`FineTuningFailed` for a refusal, quoting the provider."""

    name: str

    def find(self, request: FineTuneRequest) -> FineTuneJob | None:
        """The succeeded job with the request's idempotency key, else the newest live one, as far
        as the provider can tell (one that drops job metadata finds none)."""
        ...

    def upload_files(self, request: FineTuneRequest) -> tuple[str, str | None]:
        """Upload the training and validation files; their provider ids."""
        ...

    def create(self, request: FineTuneRequest, training_file_id: str, validation_file_id: str | None) -> FineTuneJob:
        """Create the paid job, once: never retried here, as a retry could pay for a second job."""
        ...

    def status(self, job_id: str) -> FineTuneJob: ...

    def new_events(self, job_id: str, seen_event_ids: Set[str]) -> list[JobEvent]:
        """The job's events not in ``seen_event_ids``, oldest first."""
        ...

    def result(self, job_id: str) -> FineTuneResult:
        """The outcome of a succeeded job, with its per-step losses."""
        ...

    def cancel(self, job_id: str) -> FineTuneJob: ...


class FineTuningError(Exception):
    """Base of the errors a fine-tuning step raises. Messages never carry credentials."""


class FineTuningFailed(FineTuningError):
    """The provider refused the request or the job failed; quotes the provider's code and message."""

    def __init__(self, *, code: str, message: str, job_id: str | None = None) -> None:
        self.code = code
        self.provider_message = message
        self.job_id = job_id
        subject = f"Fine-tuning job {job_id}" if job_id else "Fine-tuning request"
        super().__init__(f"{subject} failed: [{code}] {message}")


class BudgetExceeded(FineTuningError):
    def __init__(self, *, estimated_cost_usd: float, budget_usd: float) -> None:
        self.estimated_cost_usd = estimated_cost_usd
        self.budget_usd = budget_usd
        super().__init__(
            f"Refusing to start fine-tuning: estimated cost ${estimated_cost_usd:.2f} exceeds the "
            f"budget of ${budget_usd:.2f}. Raise the budget or shrink the dataset."
        )


class FineTuningTimeout(FineTuningError):
    def __init__(self, *, job_id: str | None, timeout_s: float, last_status: str | None) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.last_status = last_status
        if job_id is None:
            message = (
                f"Could not submit the fine-tuning job: the provider stayed unavailable for {timeout_s:g} s. "
                "A re-run re-attaches to the job if one was created."
            )
        else:
            message = (
                f"Fine-tuning job {job_id} did not finish within {timeout_s:g} s (last status "
                f"{last_status}). It was left running: a re-run re-attaches to it instead of paying again."
            )
        super().__init__(message)


class FineTuningNeedsAttention(FineTuningError):
    """A job may have been created without its id being recorded, and the provider cannot find it
    by its key: creating another could pay twice, so a person decides."""

    def __init__(
        self, *, key: str, task: str, provider: str, intended_at: datetime, dagster_run_id: str | None
    ) -> None:
        self.key = key
        # S608: SQL for a person to read and run, not a query this code sends.
        super().__init__(
            f"A {provider} fine-tuning job for task {task} may have been created at {intended_at:%Y-%m-%d %H:%M:%S} "  # noqa: S608
            f"UTC (Dagster run {dagster_run_id or 'unknown'}) without its id being recorded, and the provider "
            "lists none with its key: check the provider's jobs created then, and either record the one you find "
            f"(UPDATE ftp_fine_tuning_jobs SET job_id = '<job id>', status = 'created' WHERE key = '{key}') or "
            f"clear the intent (DELETE FROM ftp_fine_tuning_jobs WHERE key = '{key}') before running again."
        )


class ProviderUnavailable(FineTuningError):
    """A transient provider error (rate limit, server error, connection) that outlived the
    client's own retries. Waiting and asking again is the remedy. ``not_applied`` is True when
    the provider surely did nothing (a rate limit); a server error or a lost answer may hide a
    request that took effect."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, not_applied: bool = False, unreachable: bool = False
    ) -> None:
        self.retry_after_s = retry_after_s
        self.not_applied = not_applied
        # Nothing answered at all (connection refused, no route): no request took effect.
        self.unreachable = unreachable
        super().__init__(message)


class ProviderUnreachable(FineTuningError):
    """Nothing answers where the provider should be, and waiting cannot help (the local service
    was never started): the step fails at once with how to start it."""
