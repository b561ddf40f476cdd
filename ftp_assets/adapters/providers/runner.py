"""Runs one fine-tuning job to the end through any :class:`FineTuningProvider`, paying for it once:
the durable job record (:class:`FineTuningJobStore`) holds the intent before the create call and
the job's id as soon as it is known."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftp_assets.adapters.providers.base import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    BudgetExceeded,
    FineTuneJob,
    FineTuneRequest,
    FineTuneResult,
    FineTuningFailed,
    FineTuningNeedsAttention,
    FineTuningProvider,
    FineTuningTimeout,
    JobEvent,
    ProviderUnavailable,
    ProviderUnreachable,
    Submission,
)

if TYPE_CHECKING:
    # Imported for annotations only: the job records import this package's request type.
    from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore

Log = Callable[[str], None]


def run_fine_tune(
    provider: FineTuningProvider,
    request: FineTuneRequest,
    *,
    jobs: FineTuningJobStore,
    log: Log,
    estimated_cost_usd: float,
    budget_usd: float,
    timeout_s: float = 86_400,
    poll_initial_s: float = 5,
    poll_max_s: float = 60,
    unreachable_hint: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> FineTuneResult:
    """Submit ``request`` (or re-attach to its job), stream the job's events to ``log`` once each,
    and return the result when the job succeeds.

    Raises :class:`BudgetExceeded` before anything is uploaded, :class:`FineTuningFailed` when the
    provider refuses the request or the job fails or is cancelled, :class:`FineTuningTimeout`
    after ``timeout_s``, :class:`FineTuningNeedsAttention` when a job may exist that neither the
    record nor the provider can name. With ``unreachable_hint``, a provider that does not answer
    at all while submitting raises :class:`ProviderUnreachable` with that hint at once instead of
    waiting (the local service, which nobody will start while we wait). An interruption that is not an ``Exception``
    (KeyboardInterrupt, Dagster's run termination), during upload, creation or polling, cancels
    the job if one was created and is re-raised.
    """
    if estimated_cost_usd > budget_usd:
        raise BudgetExceeded(estimated_cost_usd=estimated_cost_usd, budget_usd=budget_usd)
    backoff = _Backoff(timeout_s, poll_initial_s, poll_max_s, sleep, clock)
    progress = _Progress()
    try:
        submission = _submit(provider, request, jobs, log, backoff, progress, unreachable_hint)
        job = submission.job
        if submission.reattached:
            log(
                f"Re-attached to {provider.name} fine-tuning job {job.job_id} (status {job.status}) for "
                f"task {request.task}, dataset {request.dataset_hash}: no new job was paid for."
            )
        else:
            log(f"Started {provider.name} fine-tuning job {job.job_id} for task {request.task}.")
        return _poll_until_done(provider, job, log, backoff)
    except Exception:
        # An error leaves the job alone: a re-run re-attaches to it.
        raise
    except BaseException:
        # An interruption (KeyboardInterrupt; Dagster's run termination also derives from
        # BaseException only): nobody will wait for the job any more, so stop paying for it.
        _cancel_after_interruption(provider, request, jobs, progress, log)
        raise


@dataclass
class _Progress:
    """How far submitting got, for the cancellation after an interruption."""

    job_id: str | None = None
    create_called: bool = False


class _Backoff:
    """Bounded exponential waits between calls to the provider, under one overall deadline."""

    def __init__(
        self,
        timeout_s: float,
        initial_s: float,
        max_s: float,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.timeout_s = timeout_s
        self._deadline = clock() + timeout_s
        self._delay_s, self._max_s = initial_s, max_s
        self._sleep, self._clock = sleep, clock

    def wait(self, at_least_s: float | None = None) -> bool:
        """Sleeps before the next call; False, without sleeping, once the deadline has passed. A
        provider's ``retry-after`` (``at_least_s``) counts only within [0, the time left]."""
        remaining_s = self._deadline - self._clock()
        if remaining_s <= 0:
            return False
        asked_s = at_least_s if at_least_s is not None and math.isfinite(at_least_s) else 0.0
        self._sleep(min(max(self._delay_s, asked_s, 0.0), remaining_s))
        self._delay_s = min(self._delay_s * 2, self._max_s)
        return True


def _submit(
    provider: FineTuningProvider,
    request: FineTuneRequest,
    jobs: FineTuningJobStore,
    log: Log,
    backoff: _Backoff,
    progress: _Progress,
    unreachable_hint: str | None,
) -> Submission:
    # Submitting again is safe: the record and the provider are asked before anything is created.
    while True:
        try:
            return _submit_once(provider, request, jobs, progress)
        except ProviderUnavailable as error:
            if error.unreachable and unreachable_hint:
                raise ProviderUnreachable(unreachable_hint) from None
            log(f"Fine-tuning provider unavailable while submitting, trying again: {error}")
            if not backoff.wait(error.retry_after_s):
                raise FineTuningTimeout(job_id=None, timeout_s=backoff.timeout_s, last_status=None) from None


def _submit_once(
    provider: FineTuningProvider, request: FineTuneRequest, jobs: FineTuningJobStore, progress: _Progress
) -> Submission:
    """Re-attach to the recorded job, else to the one the provider finds by key, else create one
    between a committed intent and its recorded id."""
    record = jobs.get(request.idempotency_key)
    if record is not None and record.job_id is not None:
        job = provider.status(record.job_id)
        if job.status not in (FAILED, CANCELLED):
            progress.job_id = job.job_id
            return Submission(job=job, reattached=True)
    found = provider.find(request)
    if found is not None:
        jobs.record_created(request, provider.name, found.job_id)
        progress.job_id = found.job_id
        return Submission(job=found, reattached=True)
    if record is not None and record.job_id is None:
        raise FineTuningNeedsAttention(
            key=record.key,
            task=record.task,
            provider=record.provider,
            intended_at=record.updated_at,
            dagster_run_id=record.dagster_run_id,
        )
    training_file_id, validation_file_id = provider.upload_files(request)
    jobs.record_intent(request, provider.name)
    progress.create_called = True
    try:
        job = provider.create(request, training_file_id, validation_file_id)
    except FineTuningFailed:
        jobs.clear_intent(request.idempotency_key)  # refused: no job was made
        raise
    except ProviderUnavailable as error:
        if error.not_applied:
            jobs.clear_intent(request.idempotency_key)
        raise
    progress.job_id = job.job_id
    jobs.record_created(request, provider.name, job.job_id)
    return Submission(job=job, reattached=False)


def _poll_until_done(provider: FineTuningProvider, job: FineTuneJob, log: Log, backoff: _Backoff) -> FineTuneResult:
    seen_event_ids: set[str] = set()
    while True:
        retry_after_s = None
        try:
            job = provider.status(job.job_id)
            # Read after the status, so a finished job's last events are logged before it returns.
            for event in provider.new_events(job.job_id, seen_event_ids):
                seen_event_ids.add(event.id)
                log(_event_line(job.job_id, event))
            if job.status == SUCCEEDED:
                return provider.result(job.job_id)
            if job.status in (FAILED, CANCELLED):
                raise FineTuningFailed(
                    code=job.error_code or job.status,
                    message=job.error_message or f"the provider reports the job as {job.status}",
                    job_id=job.job_id,
                )
        except ProviderUnavailable as error:
            retry_after_s = error.retry_after_s
            log(f"Fine-tuning provider unavailable while polling job {job.job_id}, asking again: {error}")
        if not backoff.wait(retry_after_s):
            raise FineTuningTimeout(job_id=job.job_id, timeout_s=backoff.timeout_s, last_status=job.status)


def _cancel_after_interruption(
    provider: FineTuningProvider, request: FineTuneRequest, jobs: FineTuningJobStore, progress: _Progress, log: Log
) -> None:
    """Cancels the job of an interrupted run, or says why not, without hiding the interruption.
    Interrupted in the create call, the job may exist unseen: the provider is asked for it."""
    with _further_interruptions_ignored():
        job_id = progress.job_id
        if job_id is None and not progress.create_called:
            return  # interrupted before anything was paid for
        try:
            if job_id is None:
                found = provider.find(request)
                if found is None:
                    log(
                        "Run interrupted while creating the fine-tuning job, and the provider lists no job with its "
                        "key: the intent stays recorded, and the next run asks a person to check."
                    )
                    return
                job_id = found.job_id
                jobs.record_created(request, provider.name, job_id)
            job = provider.cancel(job_id)
        except Exception as error:
            subject = f"fine-tuning job {job_id}" if job_id else "the fine-tuning job being created"
            log(f"Run interrupted, but {subject} could not be cancelled ({error}); cancel it by hand.")
        else:
            log(f"Run interrupted: cancelled fine-tuning job {job_id} (status {job.status}).")


@contextmanager
def _further_interruptions_ignored() -> Iterator[None]:
    """The run is already being interrupted; a second SIGINT or SIGTERM (Dagster forwards the
    signal the process group already got) must not cut the cancellation or its log line short.
    Python runs signal handlers in the main thread only, so only there can they be held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number, handler in previous.items():
        if handler is not None:  # None: a handler not installed from Python, left alone
            signal.signal(number, signal.SIG_IGN)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)


def _event_line(job_id: str, event: JobEvent) -> str:
    return f"[{job_id}] {event.level}: {event.message}"
