"""Runs one fine-tuning job to the end through any :class:`FineTuningProvider`."""

from __future__ import annotations

import time
from collections.abc import Callable

from ftp_assets.providers.base import (
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
)


def run_fine_tune(
    provider: FineTuningProvider,
    request: FineTuneRequest,
    *,
    log: Callable[[str], None],
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
    job fails or is cancelled, :class:`FineTuningTimeout` after ``timeout_s``. An interruption that
    is not an ``Exception`` (KeyboardInterrupt, Dagster's run termination) cancels the job and is
    re-raised.
    """
    if estimated_cost_usd > budget_usd:
        raise BudgetExceeded(estimated_cost_usd=estimated_cost_usd, budget_usd=budget_usd)
    deadline = clock() + timeout_s
    submission = provider.submit(request)
    job = submission.job
    if submission.reattached:
        log(
            f"Re-attached to {provider.name} fine-tuning job {job.job_id} (status {job.status}) for "
            f"task {request.task}, dataset {request.dataset_hash}: no new job was paid for."
        )
    else:
        log(f"Started {provider.name} fine-tuning job {job.job_id} for task {request.task}.")
    try:
        return _poll_until_done(
            provider,
            job,
            log=log,
            deadline=deadline,
            timeout_s=timeout_s,
            poll_initial_s=poll_initial_s,
            poll_max_s=poll_max_s,
            sleep=sleep,
            clock=clock,
        )
    except Exception:
        # An error while polling leaves the job alone: a re-run re-attaches to it.
        raise
    except BaseException:
        # Not an error but an interruption (KeyboardInterrupt, Dagster's run termination, which
        # derives from BaseException): nobody will wait for the job, so stop paying for it.
        _cancel_after_interruption(provider, job.job_id, log)
        raise


def _poll_until_done(
    provider: FineTuningProvider,
    job: FineTuneJob,
    *,
    log: Callable[[str], None],
    deadline: float,
    timeout_s: float,
    poll_initial_s: float,
    poll_max_s: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> FineTuneResult:
    seen_event_ids: set[str] = set()
    delay_s = poll_initial_s
    while True:
        wait_s = delay_s
        try:
            job = provider.status(job.job_id)
            # Read after the status, so a terminal job's last events are logged before returning.
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
            wait_s = max(delay_s, error.retry_after_s or 0)
            log(f"Fine-tuning provider unavailable, asking again in {wait_s:g} s: {error}")
        remaining_s = deadline - clock()
        if remaining_s <= 0:
            raise FineTuningTimeout(job_id=job.job_id, timeout_s=timeout_s, last_status=job.status)
        sleep(min(wait_s, remaining_s))
        delay_s = min(delay_s * 2, poll_max_s)


def _cancel_after_interruption(provider: FineTuningProvider, job_id: str, log: Callable[[str], None]) -> None:
    """Cancel the job of an interrupted run; say why not when that fails, without hiding the
    interruption itself."""
    try:
        job = provider.cancel(job_id)
    except Exception as error:
        log(f"Run interrupted, but fine-tuning job {job_id} could not be cancelled ({error}); cancel it by hand.")
    else:
        log(f"Run interrupted: cancelled fine-tuning job {job_id} (status {job.status}).")


def _event_line(job_id: str, event: JobEvent) -> str:
    return f"[{job_id}] {event.level}: {event.message}"
