"""``/v1/fine_tuning/jobs``: create, list (with the metadata filter), retrieve, events,
checkpoints and cancel."""

from __future__ import annotations

import secrets
import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from .chat import BASE_MODELS, MODEL_ALIASES
from .responses import ApiError, check_limit, cursor_page, not_found
from .store import Store, new_event, new_id
from .worker import ORGANIZATION_ID, JobRunner

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | PositiveInt = "auto"
    batch_size: Literal["auto"] | PositiveInt = "auto"
    learning_rate_multiplier: Literal["auto"] | PositiveFloat = "auto"


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Hyperparameters()


class Method(BaseModel):
    """Only supervised fine-tuning is emulated; DPO and reinforcement are refused."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]
    supervised: Supervised = Supervised()


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI in favour of method
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = None
    metadata: dict[str, str] | None = None


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > MAX_METADATA_PAIRS or any(
        len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE for key, value in metadata.items()
    ):
        raise ApiError(
            400,
            f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} pairs, keys of at most {MAX_METADATA_KEY} "
            f"and values of at most {MAX_METADATA_VALUE} characters.",
            param="metadata",
        )


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's ``metadata[key]=value`` query parameters; ``metadata=null`` selects jobs without."""
    if request.query_params.get("metadata") == "null":
        return None
    return {
        name[len("metadata[") : -1]: value
        for name, value in request.query_params.multi_items()
        if name.startswith("metadata[") and name.endswith("]")
    }


def jobs_router(store: Store, runner: JobRunner) -> APIRouter:
    router = APIRouter(prefix="/v1/fine_tuning/jobs")

    def existing_job(job_id: str) -> dict:
        job = store.job(job_id)
        if job is None:
            raise not_found(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return job

    def fine_tuning_file(file_id: str, param: str) -> None:
        file = store.file(file_id)
        if file is None:
            raise ApiError(400, f"invalid {param}: {file_id}", param=param)
        if file["purpose"] != "fine-tune":
            message = f"{file_id} has purpose {file['purpose']!r}; fine-tuning needs 'fine-tune'."
            raise ApiError(400, message, param=param)

    @router.post("")
    def create_job(request: JobCreate) -> dict:
        model = MODEL_ALIASES.get(request.model, request.model)
        if model not in BASE_MODELS:
            raise ApiError(
                400,
                f"Model {request.model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        fine_tuning_file(request.training_file, "training_file")
        if request.validation_file is not None:
            fine_tuning_file(request.validation_file, "validation_file")
        if request.hyperparameters is not None and request.method is not None:
            message = "Pass hyperparameters under 'method' only, not also at the top level."
            raise ApiError(400, message, param="hyperparameters")
        if request.metadata:
            _check_metadata(request.metadata)
        requested = request.method.supervised.hyperparameters if request.method else request.hyperparameters
        hyperparameters = (requested or Hyperparameters()).model_dump()
        job_id = new_id("ftjob-")
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": hyperparameters,
            "model": model,
            "organization_id": ORGANIZATION_ID,
            "result_files": [],
            "seed": request.seed if request.seed is not None else secrets.randbelow(2**31),
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "estimated_finish": None,
            "integrations": [],
            "metadata": None if runner.faults.drops_metadata else request.metadata,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            "user_provided_suffix": request.suffix,
        }
        store.add_job(job)
        store.update_job(job_id, events=[new_event(f"Created fine-tuning job: {job_id}")])
        runner.submit(job_id)
        return job

    @router.get("")
    def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict:
        check_limit(limit, 100)
        if runner.faults.drops_metadata:
            return cursor_page([{**job, "metadata": None} for job in store.jobs()], after, limit)
        wanted = _metadata_filter(request)
        if wanted is None:
            jobs = [job for job in store.jobs() if not job["metadata"]]
        else:
            jobs = [job for job in store.jobs() if wanted.items() <= (job["metadata"] or {}).items()]
        return cursor_page(jobs, after, limit)

    @router.get("/{job_id}")
    def retrieve_job(job_id: str) -> dict:
        return existing_job(job_id)

    @router.post("/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict:
        existing_job(job_id)
        cancelled = store.update_job(
            job_id,
            events=[new_event("Fine-tuning job cancelled")],
            status="cancelled",
            finished_at=int(time.time()),
            estimated_finish=None,
        )
        if cancelled is None:
            status = existing_job(job_id)["status"]
            message = f"Job {job_id} has already {status}; it cannot be cancelled."
            raise ApiError(400, message, param="fine_tuning_job_id")
        return cancelled

    @router.get("/{job_id}/events")
    def list_events(job_id: str, after: str | None = None, limit: int = 20) -> dict:
        check_limit(limit, 100)
        existing_job(job_id)
        return cursor_page(store.events(job_id), after, limit)

    @router.get("/{job_id}/checkpoints")
    def list_checkpoints(job_id: str, after: str | None = None, limit: int = 10) -> dict:
        check_limit(limit, 100)
        existing_job(job_id)
        return cursor_page(store.checkpoints(job_id), after, limit)

    return router
