"""The background worker that validates files and trains the jobs, one at a time."""

from __future__ import annotations

import csv
import io
import logging
import math
import queue
import threading
import time
from typing import TypedDict, Unpack

from .dataset import FileRejected, billable_tokens, check_training_size, read_examples, resolve_hyperparameters
from .faults import FaultController
from .ngram import NGramModel
from .store import TERMINAL_STATUSES, Store, file_record, new_event, new_id
from .training import Step, train_step, training_steps, word_sequences

log = logging.getLogger(__name__)

ORGANIZATION_ID = "org-local"
ORGANIZATION_NAME = "local"  # the org's slug in fine-tuned model ids
CHECKPOINTED_EPOCHS = 3  # OpenAI keeps checkpoints of the last three epochs
JOB_FAILURE = {"code": "server_error", "message": "The job failed due to an internal server error.", "param": None}
METRIC_NAMES = ["train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]


class _EndChanges(TypedDict, total=False):
    """What an ended job records besides its status and end time."""

    fine_tuned_model: str
    trained_tokens: int
    result_files: list[str]
    error: dict


def fine_tuned_model_id(job: dict) -> str:
    return f"ft:{job['model']}:{ORGANIZATION_NAME}:{job['user_provided_suffix'] or ''}:{job['id'][-8:]}"


class JobRunner:
    def __init__(self, store: Store, faults: FaultController, step_seconds: float) -> None:
        self.store, self.faults, self.step_seconds = store, faults, step_seconds
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-openai-jobs", daemon=True)

    def start(self) -> None:
        """Starts the worker, first re-queueing the jobs a previous run left unfinished."""
        for job in reversed(self.store.jobs()):
            if job["status"] not in TERMINAL_STATUSES:
                self.submit(job["id"])
        self._thread.start()

    def stop(self) -> None:
        """Stops between two steps; the job in flight stays as it is and resumes at next start."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _loop(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._stopping.is_set():
            try:
                self._run(job_id)
            except Exception:
                # A bug must not leave the job running forever: it fails the way OpenAI's do.
                log.exception("Fine-tuning job %s crashed", job_id)
                self._fail(job_id, JOB_FAILURE)

    def _job(self, job_id: str) -> dict:
        job = self.store.job(job_id)
        if job is None:
            raise LookupError(f"fine-tuning job {job_id} is not in the store")
        return job

    def _run(self, job_id: str) -> None:
        job = self._job(job_id)
        if job["status"] in TERMINAL_STATUSES:
            return  # cancelled while it waited
        if job["status"] == "validating_files":
            files = "training file: " + job["training_file"]
            if job["validation_file"]:
                files += " and validation file: " + job["validation_file"]
            if not self.store.update_job(job_id, events=[new_event("Validating " + files)]):
                return
        try:
            training = read_examples(self.store.file_content(job["training_file"]), "training_file")
            check_training_size(training)
            validation = None
            if job["validation_file"]:
                validation = read_examples(self.store.file_content(job["validation_file"]), "validation_file")
        except FileRejected as rejection:
            self._fail(job_id, rejection.error)
            return
        hyperparameters = resolve_hyperparameters(job["hyperparameters"], len(training))
        if job["status"] == "validating_files":
            method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
            validated = new_event("Files validated, moving job to queued state")
            if not self.store.update_job(
                job_id, events=[validated], status="queued", hyperparameters=hyperparameters, method=method
            ):
                return
        if self._stopping.is_set():
            return
        if self._job(job_id)["status"] == "queued" and not self.store.update_job(
            job_id, events=[new_event("Fine-tuning job started")], status="running"
        ):
            return
        self._train(self._job(job_id), training, validation, hyperparameters)

    def _train(self, job: dict, training: list[dict], validation: list[dict] | None, hyperparameters: dict) -> None:
        job_id, n_epochs = job["id"], hyperparameters["n_epochs"]
        total_steps = n_epochs * math.ceil(len(training) / hyperparameters["batch_size"])
        # A resumed job replays, silently, the steps it reported before the restart.
        reported_steps = max((data["step"] for data in self._step_metrics(job_id)), default=0)
        fail_at_step = total_steps // 2 + 1 if reported_steps == 0 and self.faults.take_job_failure() else None
        model = NGramModel()
        for step in training_steps(training, validation, hyperparameters, job["seed"]):
            if step.number <= reported_steps:
                model.update(step.batch)
            elif self._stopping.is_set():
                return
            elif step.number == fail_at_step:
                self._fail(job_id, JOB_FAILURE)
                return
            elif self._report(job_id, train_step(model, step), total_steps):
                self._stopping.wait(self.step_seconds)
            else:
                return  # cancelled
            if step.ends_epoch and step.epoch > n_epochs - CHECKPOINTED_EPOCHS:
                self._checkpoint(job, step, model, validation, final=step.epoch == n_epochs)
        self._succeed(job, model, billable_tokens(training) * n_epochs)

    def _report(self, job_id: str, metrics: dict, total_steps: int) -> bool:
        """Records the step's metrics event; False when the job was cancelled meanwhile."""
        message = f"Step {metrics['step']}/{total_steps}: training loss={metrics['train_loss']:.2f}"
        if "valid_loss" in metrics:
            message += f", validation loss={metrics['valid_loss']:.2f}"
        event = new_event(message, data={**metrics, "total_steps": total_steps})
        estimated_finish = int(time.time() + (total_steps - metrics["step"]) * self.step_seconds)
        return self.store.update_job(job_id, events=[event], estimated_finish=estimated_finish) is not None

    def _step_metrics(self, job_id: str) -> list[dict]:
        """The data of the job's metrics events, oldest first."""
        return [event["data"] for event in reversed(self.store.events(job_id)) if event["type"] == "metrics"]

    def _checkpoint(self, job: dict, step: Step, model: NGramModel, validation: list[dict] | None, final: bool) -> None:
        job_id = job["id"]
        if any(checkpoint["step_number"] == step.number for checkpoint in self.store.checkpoints(job_id)):
            return  # made before a restart
        model_id = fine_tuned_model_id(job)
        checkpoint_model = model_id if final else f"{model_id}:ckpt-step-{step.number}"
        step_metrics = self._step_metrics(job_id)[step.number - 1]
        metrics = {name: step_metrics[name] for name in ["step", *METRIC_NAMES] if name in step_metrics}
        if validation:
            full_valid = model.evaluate(word_sequences(validation))
            metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = full_valid
        checkpoint = {
            "object": "fine_tuning.job.checkpoint",
            "id": new_id("ftckpt_"),
            "created_at": int(time.time()),
            "fine_tuned_model_checkpoint": checkpoint_model,
            "fine_tuning_job_id": job_id,
            "metrics": metrics,
            "step_number": step.number,
        }
        created = new_event(f"Checkpoint created at step {step.number} with Snapshot ID: {checkpoint_model}")
        self.store.update_job(job_id, events=[created], checkpoint=checkpoint)

    def _succeed(self, job: dict, model: NGramModel, trained_tokens: int) -> None:
        self.store.save_model(job["id"], model)  # before the job says it succeeded, so it answers chats at once
        self._end(
            job["id"],
            "succeeded",
            [new_event("New fine-tuned model created"), new_event("The job has successfully completed")],
            fine_tuned_model=fine_tuned_model_id(job),
            trained_tokens=trained_tokens,
            result_files=[self._store_step_metrics(job["id"])],
        )

    def _store_step_metrics(self, job_id: str) -> str:
        """The job's results file: a CSV row of metrics per step, as OpenAI provides."""
        table = io.StringIO()
        writer = csv.DictWriter(table, ["step", *METRIC_NAMES], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._step_metrics(job_id))
        content = table.getvalue().encode()
        file = file_record("step_metrics.csv", "fine-tune-results", len(content))
        self.store.add_file(file, content)
        return file["id"]

    def _fail(self, job_id: str, error: dict) -> None:
        self._end(job_id, "failed", [new_event(error["message"], "error")], error=error)

    def _end(self, job_id: str, status: str, events: list[dict], **changes: Unpack[_EndChanges]) -> None:
        self.store.update_job(
            job_id, events=events, status=status, finished_at=int(time.time()), estimated_finish=None, **changes
        )
