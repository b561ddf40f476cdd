"""Runs one fine-tuning job to the end through any :class:`FineTuningProvider`."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ftp_assets.adapters.providers.base import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    BudgetExceeded,
    FineTuneJob,
    FineTuneRequest,
    FineTuneResult,
    FineTuningFailed,
    FineTuningProvider,
    FineTuningTimeout,
    JobEvent,
    ProviderUnavailable,
    Submission,
)

Log = Callable[[str], None]


def run_fine_tune(
    provider: FineTuningProvider,
    request: FineTuneRequest,
    *,
    log: Log,
    estimated_cost_usd: float,
    budget_usd: float,
    timeout_s: float = 86_400,
    poll_initial_s: float = 5,
    poll_max_s: float = 60,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> FineTuneResult:
    """Submit ``request`` (or re-attach to its job), stream the job's events to ``log`` once each,
    and return the result when the job succeeds.

    Raises :class:`BudgetExceeded` before anything is uploaded, :class:`FineTuningFailed` when the
    provider refuses the request or the job fails or is cancelled, :class:`FineTuningTimeout`
    after ``timeout_s``. An interruption that is not an ``Exception`` (KeyboardInterrupt,
    Dagster's run termination) cancels the job and is re-raised.
    """
    if estimated_cost_usd > budget_usd:
        raise BudgetExceeded(estimated_cost_usd=estimated_cost_usd, budget_usd=budget_usd)
    backoff = _Backoff(timeout_s, poll_initial_s, poll_max_s, sleep, clock)
    submission = _submit(provider, request, log, backoff)
    job = submission.job
    if submission.reattached:
        log(
            f"Re-attached to {provider.name} fine-tuning job {job.job_id} (status {job.status}) for "
            f"task {request.task}, dataset {request.dataset_hash}: no new job was paid for."
        )
    else:
        log(f"Started {provider.name} fine-tuning job {job.job_id} for task {request.task}.")
    try:
        return _poll_until_done(provider, job, log, backoff)
    except Exception:
        # An error while polling leaves the job alone: a re-run re-attaches to it.
        raise
    except BaseException:
        # An interruption (KeyboardInterrupt; Dagster's run termination also derives from
        # BaseException only): nobody will wait for the job any more, so stop paying for it.
        _cancel_after_interruption(provider, job.job_id, log)
        raise


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
        """Sleeps before the next call; False, without sleeping, once the deadline has passed."""
        remaining_s = self._deadline - self._clock()
        if remaining_s <= 0:
            return False
        self._sleep(min(max(self._delay_s, at_least_s or 0), remaining_s))
        self._delay_s = min(self._delay_s * 2, self._max_s)
        return True


def _submit(provider: FineTuningProvider, request: FineTuneRequest, log: Log, backoff: _Backoff) -> Submission:
    # Submitting again is safe: submit looks the job up before it creates anything.
    while True:
        try:
            return provider.submit(request)
        except ProviderUnavailable as error:
            log(f"Fine-tuning provider unavailable while submitting, trying again: {error}")
            if not backoff.wait(error.retry_after_s):
                raise FineTuningTimeout(job_id=None, timeout_s=backoff.timeout_s, last_status=None) from None


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


def _cancel_after_interruption(provider: FineTuningProvider, job_id: str, log: Log) -> None:
    """Cancels the job of an interrupted run, or says why not, without hiding the interruption."""
    with _further_interruptions_ignored():
        try:
            job = provider.cancel(job_id)
        except Exception as error:
            log(f"Run interrupted, but fine-tuning job {job_id} could not be cancelled ({error}); cancel it by hand.")
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
