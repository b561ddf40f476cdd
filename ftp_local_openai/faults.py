"""Faults the service injects on request, switchable while it runs (Python or ``/_admin/faults``)."""

from __future__ import annotations

import threading

from pydantic import BaseModel, ConfigDict, Field

MAX_LATENCY_SECONDS = 30.0  # longer than any client's sensible timeout; a shutdown cuts it short


class FaultSettings(BaseModel):
    """The body of ``POST /_admin/faults``; fields left out are left as they are."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_next: int | None = Field(None, ge=0)
    retry_after: float = Field(1.0, gt=0)
    fail_next_responses: int | None = Field(None, ge=0)
    latency_seconds: float | None = Field(None, ge=0, le=MAX_LATENCY_SECONDS)
    fail_next_job: bool | None = None
    drop_metadata: bool | None = None


class FaultController:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def rate_limit_next(self, count: int, retry_after: float = 1.0) -> None:
        """The next ``count`` API responses are 429s asking the client to wait ``retry_after`` s."""
        with self._lock:
            self._rate_limited, self._retry_after = count, retry_after

    def fail_next_responses(self, count: int) -> None:
        """The next ``count`` API responses are 500s."""
        with self._lock:
            self._server_errors = count

    def set_latency(self, seconds: float) -> None:
        """Every API response is delayed this long (0 turns it off), up to MAX_LATENCY_SECONDS."""
        if not 0 <= seconds <= MAX_LATENCY_SECONDS:
            raise ValueError(f"latency must be between 0 and {MAX_LATENCY_SECONDS:g} s, got {seconds:g}")
        with self._lock:
            self.latency_seconds = seconds

    def fail_next_job(self) -> None:
        """The next job to start running fails halfway with a server error."""
        with self._lock:
            self._fail_next_job = True

    def drop_metadata(self, enabled: bool = True) -> None:
        """Job ``metadata`` is ignored on create and absent (and not filtered on) in lists, as
        some OpenAI-compatible APIs do."""
        with self._lock:
            self.drops_metadata = enabled

    def clear(self) -> None:
        with self._lock:
            self._rate_limited, self._retry_after, self._server_errors = 0, 1.0, 0
            self.latency_seconds = 0.0
            self._fail_next_job = False
            self.drops_metadata = False

    def apply(self, settings: FaultSettings) -> None:
        if settings.rate_limit_next is not None:
            self.rate_limit_next(settings.rate_limit_next, settings.retry_after)
        if settings.fail_next_responses is not None:
            self.fail_next_responses(settings.fail_next_responses)
        if settings.latency_seconds is not None:
            self.set_latency(settings.latency_seconds)
        if settings.fail_next_job:
            self.fail_next_job()
        if settings.drop_metadata is not None:
            self.drop_metadata(settings.drop_metadata)

    def state(self) -> dict:
        with self._lock:
            return {
                "rate_limit_next": self._rate_limited,
                "retry_after": self._retry_after,
                "fail_next_responses": self._server_errors,
                "latency_seconds": self.latency_seconds,
                "fail_next_job": self._fail_next_job,
                "drop_metadata": self.drops_metadata,
            }

    def take_response_fault(self) -> tuple[int, float | None] | None:
        """(status, retry-after seconds) for the response about to be sent, or None for none."""
        with self._lock:
            if self._rate_limited:
                self._rate_limited -= 1
                return 429, self._retry_after
            if self._server_errors:
                self._server_errors -= 1
                return 500, None
            return None

    def take_job_failure(self) -> bool:
        with self._lock:
            armed, self._fail_next_job = self._fail_next_job, False
            return armed
