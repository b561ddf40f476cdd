"""Fine-tuning through the official ``openai`` client: OpenAI itself or any API that speaks its
fine-tuning routes (``base_url``), such as the project's local service.

Idempotency: every job carries the request's idempotency key in its ``metadata``, so
:meth:`OpenAIFineTuningProvider.find` can look it up; the create call is made once, without the
client's retries. The runner decides when to look, create or re-attach, with the durable job
record (:mod:`ftp_assets.adapters.fine_tuning_jobs`) for providers that drop metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Set
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import httpx2
import openai
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from ftp_assets.adapters.providers.base import (
    SUCCEEDED,
    TERMINAL_STATUSES,
    FineTuneJob,
    FineTuneRequest,
    FineTuneResult,
    FineTuningFailed,
    JobEvent,
    ProviderUnavailable,
    StepMetrics,
)

# Job metadata (OpenAI allows 16 pairs, keys of 64 and values of 512 characters).
IDEMPOTENCY_KEY = "ftp_key"
DATASET_HASH_KEY = "ftp_dataset_hash"
TASK_KEY = "ftp_task"
DAGSTER_RUN_ID_KEY = "dagster_run_id"
PAGE_SIZE = 100
HYPERPARAMETER_NAMES = ("n_epochs", "batch_size", "learning_rate_multiplier")


class OpenAIFineTuningProvider:
    name = "openai"

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client
        # Only the create call skips the client's retries: a retried POST could start a second
        # paid job when the first response was merely lost.
        self._create_client = client.with_options(max_retries=0)

    def find(self, request: FineTuneRequest) -> FineTuneJob | None:
        """The succeeded job for this key if any, else the newest live one; failed and cancelled
        jobs are not reusable."""
        key = {IDEMPOTENCY_KEY: request.idempotency_key}
        live: FineTuneJob | None = None
        with self._provider_errors():
            for found in self._client.fine_tuning.jobs.list(metadata=key, limit=PAGE_SIZE):
                # Checked here too, so a provider that ignores the filter cannot hand us a stranger's job.
                if (found.metadata or {}).get(IDEMPOTENCY_KEY) != request.idempotency_key:
                    continue
                if found.status == SUCCEEDED:
                    return _job(found)
                if found.status not in TERMINAL_STATUSES and live is None:
                    live = _job(found)
        return live

    def upload_files(self, request: FineTuneRequest) -> tuple[str, str | None]:
        training_file_id = self._upload(request.training_file)
        validation_file_id = self._upload(request.validation_file) if request.validation_file else None
        return training_file_id, validation_file_id

    def create(self, request: FineTuneRequest, training_file_id: str, validation_file_id: str | None) -> FineTuneJob:
        metadata = {
            IDEMPOTENCY_KEY: request.idempotency_key,
            DATASET_HASH_KEY: request.dataset_hash,
            TASK_KEY: request.task,
        }
        if request.dagster_run_id:
            metadata[DAGSTER_RUN_ID_KEY] = request.dagster_run_id
        with self._provider_errors():
            created = self._create_client.fine_tuning.jobs.create(
                model=request.base_model,
                training_file=training_file_id,
                method={
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": request.n_epochs,
                            "batch_size": request.batch_size,
                            "learning_rate_multiplier": request.learning_rate_multiplier,
                        }
                    },
                },
                suffix=request.suffix,
                metadata=metadata,
                validation_file=openai.omit if validation_file_id is None else validation_file_id,
                seed=openai.omit if request.seed is None else request.seed,
            )
        return _job(created)

    def status(self, job_id: str) -> FineTuneJob:
        with self._provider_errors(job_id):
            return _job(self._client.fine_tuning.jobs.retrieve(job_id))

    def new_events(self, job_id: str, seen_event_ids: Set[str]) -> list[JobEvent]:
        newest_first: list[JobEvent] = []
        with self._provider_errors(job_id):
            # Events come newest first with cursor pagination: read until the first one seen.
            for event in self._client.fine_tuning.jobs.list_events(job_id, limit=PAGE_SIZE):
                if event.id in seen_event_ids:
                    break
                newest_first.append(_event(event))
        return newest_first[::-1]

    def result(self, job_id: str) -> FineTuneResult:
        job = self.status(job_id)
        if job.status != SUCCEEDED or not job.fine_tuned_model:
            raise ValueError(f"job {job_id} has no result: its status is {job.status}")
        metrics_data = [event.data for event in self.new_events(job_id, frozenset()) if _is_metrics(event.data)]
        metrics_data.sort(key=lambda data: data["step"])
        checkpoint_metrics = self._checkpoint_metrics(job_id)
        # The loss over the whole validation file (OpenAI reports it with the final checkpoint)
        # beats the per-step estimate on one validation batch.
        final_valid_loss = _last_value(checkpoint_metrics, "full_valid_loss")
        if final_valid_loss is None:
            final_valid_loss = _last_value(metrics_data, "full_valid_loss", "valid_loss")
        # Providers that keep no metrics events still list checkpoints.
        metrics_data = metrics_data or checkpoint_metrics
        assert job.finished_at is not None  # a succeeded job has finished
        return FineTuneResult(
            model_id=job.fine_tuned_model,
            job_id=job.job_id,
            training_file_id=job.training_file_id,
            trained_tokens=job.trained_tokens,
            step_metrics=tuple(
                StepMetrics(
                    step=int(data["step"]), train_loss=data.get("train_loss"), valid_loss=data.get("valid_loss")
                )
                for data in metrics_data
            ),
            final_train_loss=_last_value(metrics_data, "train_loss"),
            final_valid_loss=final_valid_loss,
            duration_s=(job.finished_at - job.created_at).total_seconds(),
            hyperparameters=job.hyperparameters,
        )

    def cancel(self, job_id: str) -> FineTuneJob:
        with self._provider_errors(job_id):
            return _job(self._client.fine_tuning.jobs.cancel(job_id))

    def _upload(self, path: Path) -> str:
        with self._provider_errors(), path.open("rb") as content:
            return self._client.files.create(file=(path.name, content), purpose="fine-tune").id

    def _checkpoint_metrics(self, job_id: str) -> list[dict]:
        with self._provider_errors(job_id):
            checkpoints = list(self._client.fine_tuning.jobs.checkpoints.list(job_id, limit=PAGE_SIZE))
        return sorted(
            (
                {**checkpoint.metrics.model_dump(exclude_none=True), "step": checkpoint.step_number}
                for checkpoint in checkpoints
            ),
            key=lambda data: data["step"],
        )

    @contextmanager
    def _provider_errors(self, job_id: str | None = None) -> Iterator[None]:
        """Turns the client's errors into the interface's, keeping only the provider's code and
        message: the client's exceptions carry the request, credentials included."""
        try:
            yield
        except (openai.RateLimitError, openai.InternalServerError) as error:
            code, message = self._code_and_message(error)
            raise ProviderUnavailable(
                f"provider answered HTTP {error.status_code} [{code}] {message}",
                retry_after_s=_retry_after_s(error),
                not_applied=isinstance(error, openai.RateLimitError),
            ) from None
        except openai.APIConnectionError as error:
            # The connection itself failed: nothing was sent, so nothing took effect.
            unreachable = isinstance(error.__cause__, httpx2.ConnectError)
            raise ProviderUnavailable(
                f"cannot reach the provider: {error.message}", not_applied=unreachable, unreachable=unreachable
            ) from None
        except openai.APIStatusError as error:
            code, message = self._code_and_message(error)
            raise FineTuningFailed(code=code, message=message, job_id=job_id) from None

    def _code_and_message(self, error: openai.APIStatusError) -> tuple[str, str]:
        body = error.body if isinstance(error.body, dict) else {}
        message = str(body.get("message") or f"HTTP {error.status_code}")
        return error.code or f"http_{error.status_code}", self._redacted(message)

    def _redacted(self, text: str) -> str:
        # Some providers echo the key they rejected; never pass it on.
        api_key = self._client.api_key
        return text.replace(api_key, "[redacted]") if api_key else text


def _retry_after_s(error: openai.APIStatusError) -> float | None:
    """The wait the provider asks for, never negative; the runner bounds it by its deadline."""
    headers = error.response.headers
    for header, seconds_per_unit in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers[header]) * seconds_per_unit
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _job(job: FineTuningJob) -> FineTuneJob:
    return FineTuneJob(
        job_id=job.id,
        status=job.status,
        base_model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        trained_tokens=job.trained_tokens,
        training_file_id=job.training_file,
        error_code=job.error.code if job.error else None,
        error_message=job.error.message if job.error else None,
        created_at=_utc(job.created_at),
        finished_at=None if job.finished_at is None else _utc(job.finished_at),
        hyperparameters=_hyperparameters(job),
    )


def _hyperparameters(job: FineTuningJob) -> dict[str, Any]:
    """The job's hyperparameters as reported: under ``method`` now, at the top level before."""
    method = job.method.supervised if job.method and job.method.supervised else None
    reported = method.hyperparameters if method and method.hyperparameters else job.hyperparameters
    values = reported.model_dump() if reported is not None else {}
    return {name: values[name] for name in HYPERPARAMETER_NAMES if values.get(name) is not None}


def _event(event: FineTuningJobEvent) -> JobEvent:
    return JobEvent(
        id=event.id,
        created_at=_utc(event.created_at),
        level=event.level,
        message=event.message,
        data=event.data if isinstance(event.data, dict) else None,
    )


def _is_metrics(data: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return data is not None and isinstance(data.get("step"), (int, float))


def _last_value(metrics_data: list[dict], *names: str) -> float | None:
    """The latest step's value of the first of ``names`` it reports."""
    for data in reversed(metrics_data):
        for name in names:
            if data.get(name) is not None:
                return data[name]
    return None
