"""The background worker that validates files and trains the jobs, one at a time."""

from __future__ import annotations

import csv
import io
import logging
import math
import queue
import random
import threading
import time

from .dataset import (
    FileRejected,
    assistant_word_sequences,
    billable_tokens,
    check_training_size,
    read_examples,
    resolve_hyperparameters,
)
from .faults import FaultController
from .ngram import NGramModel
from .store import TERMINAL_STATUSES, Store, new_id

log = logging.getLogger(__name__)

ORGANIZATION_ID = "org-local"
ORGANIZATION_NAME = "local"  # the org's slug in fine-tuned model ids
CHECKPOINTED_EPOCHS = 3  # OpenAI keeps checkpoints of the last three epochs
JOB_FAILURE = {"code": "server_error", "message": "The job failed due to an internal server error.", "param": None}
METRIC_NAMES = ["train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]


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
                self._end(job_id, "failed", error=JOB_FAILURE, message=JOB_FAILURE["message"], level="error")

    def _run(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job["status"] == "validating_files":
            files = "training file: " + job["training_file"]
            if job["validation_file"]:
                files += " and validation file: " + job["validation_file"]
            self.store.add_event(job_id, "Validating " + files)
        try:
            training = read_examples(self.store.file_content(job["training_file"]), "training_file")
            check_training_size(training)
            validation = None
            if job["validation_file"]:
                validation = read_examples(self.store.file_content(job["validation_file"]), "validation_file")
        except FileRejected as rejection:
            self._end(job_id, "failed", error=rejection.error, message=rejection.error["message"], level="error")
            return
        hyperparameters = resolve_hyperparameters(job["hyperparameters"], len(training))
        if job["status"] == "validating_files":
            method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
            if not self.store.update_job(job_id, status="queued", hyperparameters=hyperparameters, method=method):
                return
            self.store.add_event(job_id, "Files validated, moving job to queued state")
        if self._stopping.is_set():
            return
        if self.store.job(job_id)["status"] == "queued":
            if not self.store.update_job(job_id, status="running"):
                return
            self.store.add_event(job_id, "Fine-tuning job started")
        self._train(job_id, training, validation, hyperparameters)

    def _train(self, job_id: str, training: list[dict], validation: list[dict] | None, hyperparameters: dict) -> None:
        job = self.store.job(job_id)
        model_id = fine_tuned_model_id(job)
        n_epochs, batch_size = hyperparameters["n_epochs"], hyperparameters["batch_size"]
        steps_per_epoch = math.ceil(len(training) / batch_size)
        total_steps = n_epochs * steps_per_epoch
        # Training is deterministic for a seed, so a resumed job replays the steps it already
        # reported without reporting them again and carries on from there.
        reported_steps = self._reported_steps(job_id)
        fail_at_step = total_steps // 2 + 1 if reported_steps == 0 and self.faults.take_job_failure() else None
        rng = random.Random(job["seed"])
        model = NGramModel()
        step = 0
        for epoch in range(n_epochs):
            order = list(range(len(training)))
            rng.shuffle(order)
            for start in range(0, len(training), batch_size):
                step += 1
                batch = [words for i in order[start : start + batch_size] for words in assistant_word_sequences(training[i])]
                valid_batch = rng.sample(validation, min(batch_size, len(validation))) if validation else None
                if step <= reported_steps:
                    model.update(batch)
                    continue
                if self._stopping.is_set() or self.store.job(job_id)["status"] != "running":
                    return
                if step == fail_at_step:
                    self._end(job_id, "failed", error=JOB_FAILURE, message=JOB_FAILURE["message"], level="error")
                    return
                metrics = {"step": step, "total_steps": total_steps}
                metrics["train_loss"], metrics["train_mean_token_accuracy"] = model.evaluate(batch)
                model.update(batch)
                message = f"Step {step}/{total_steps}: training loss={metrics['train_loss']:.2f}"
                if valid_batch:
                    metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = model.evaluate(_sequences(valid_batch))
                    message += f", validation loss={metrics['valid_loss']:.2f}"
                self.store.add_event(job_id, message, data=metrics)
                remaining = (total_steps - step) * self.step_seconds
                self.store.update_job(job_id, estimated_finish=int(time.time() + remaining))
                self._stopping.wait(self.step_seconds)
            checkpointed = {checkpoint["step_number"] for checkpoint in self.store.checkpoints(job_id)}
            if epoch >= n_epochs - CHECKPOINTED_EPOCHS and step not in checkpointed:
                self._checkpoint(job_id, model_id if epoch == n_epochs - 1 else f"{model_id}:ckpt-step-{step}", step, model, validation)
        self._succeed(job_id, model_id, model, billable_tokens(training) * n_epochs)

    def _reported_steps(self, job_id: str) -> int:
        return max((event["data"]["step"] for event in self.store.events(job_id) if event["type"] == "metrics"), default=0)

    def _checkpoint(self, job_id: str, checkpoint_model: str, step: int, model: NGramModel, validation: list[dict] | None) -> None:
        step_metrics = next(event["data"] for event in self.store.events(job_id) if event["type"] == "metrics")
        metrics = {name: step_metrics[name] for name in METRIC_NAMES if name in step_metrics}
        if validation:
            metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = model.evaluate(_sequences(validation))
        self.store.add_checkpoint(
            job_id,
            {
                "object": "fine_tuning.job.checkpoint",
                "id": new_id("ftckpt_"),
                "created_at": int(time.time()),
                "fine_tuned_model_checkpoint": checkpoint_model,
                "fine_tuning_job_id": job_id,
                "metrics": {"step": step, **metrics},
                "step_number": step,
            },
        )
        self.store.add_event(job_id, f"Checkpoint created at step {step} with Snapshot ID: {checkpoint_model}")

    def _succeed(self, job_id: str, model_id: str, model: NGramModel, trained_tokens: int) -> None:
        self.store.save_model(job_id, model)
        results_file = self._store_step_metrics(job_id)
        self.store.add_event(job_id, "New fine-tuned model created")
        self._end(
            job_id,
            "succeeded",
            message="The job has successfully completed",
            fine_tuned_model=model_id,
            trained_tokens=trained_tokens,
            result_files=[results_file],
        )

    def _store_step_metrics(self, job_id: str) -> str:
        """The job's results file: one CSV row of metrics per step, as OpenAI provides."""
        table = io.StringIO()
        writer = csv.DictWriter(table, ["step", *METRIC_NAMES], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for event in reversed(self.store.events(job_id)):
            if event["type"] == "metrics":
                writer.writerow(event["data"])
        content = table.getvalue().encode()
        file = {
            "object": "file",
            "id": new_id("file-"),
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": "step_metrics.csv",
            "purpose": "fine-tune-results",
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.store.add_file(file, content)
        return file["id"]

    def _end(self, job_id: str, status: str, message: str, level: str = "info", **changes: object) -> None:
        if self.store.update_job(job_id, status=status, finished_at=int(time.time()), estimated_finish=None, **changes):
            self.store.add_event(job_id, message, level=level)


def _sequences(examples: list[dict]) -> list[list[str]]:
    return [words for example in examples for words in assistant_word_sequences(example)]
