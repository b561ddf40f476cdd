"""What a run-failure notification says, and the run-failure counts, from plain values.

The sensor (``ftp_assets/observability/sensors.py``) reads the failed run from the Dagster
instance; this module turns what it read into a :class:`FailureNotice` (the error's first
sentence, with every secret it may quote replaced by ``***``) and into the payload a webhook
takes: Slack's incoming webhook shape (``{"text": ...}``) or a structured JSON object.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ftp_assets.adapters.metrics import Sample

MASK = "***"
# The error's first sentence is cut here (an ellipsis marks the cut).
FIRST_SENTENCE_LIMIT = 300
# A password read out of a secret URL is masked on its own when it is at least this long: a
# shorter one would mask every occurrence of two letters in the message.
MIN_BARE_PASSWORD_LENGTH = 4

# The user and password of a URL: scheme://user:password@host (the last @ before the host).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#'\"<>]*)@")
# key=value and "key": value secrets of DSNs, query strings and logged configurations.
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)"
    r"['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s&;,'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass(frozen=True)
class FailureNotice:
    """One failed run as a notification tells it; every text already scrubbed."""

    job: str
    run_id: str
    run_url: str | None  # absent without FTP_DAGSTER_UI_URL
    assets: tuple[str, ...]
    partition: str | None
    error: str


def first_sentence(text: str, *, limit: int = FIRST_SENTENCE_LIMIT) -> str:
    """The first non-blank line of ``text`` up to its first sentence end (". ", "! ", "? "),
    at most ``limit`` characters (cut with an ellipsis)."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    end = _SENTENCE_END.search(line)
    sentence = line[: end.end()] if end else line
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rstrip() + "…"
    return sentence


def _credential_parts(secret: str) -> list[str]:
    """The password of a secret URL (``postgresql://user:pass@host/db``), to mask on its own."""
    match = _URL_CREDENTIALS.search(secret)
    if not match:
        return []
    _, _, password = match.group("userinfo").partition(":")
    return [password] if len(password) >= MIN_BARE_PASSWORD_LENGTH else []


def scrubbed(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret value, the password of each secret URL, the user and password
    of any URL, key=value secrets (password=..., token=...) and bearer tokens replaced by ``***``."""
    values = {value for value in secrets if value}
    values |= {part for value in list(values) for part in _credential_parts(value)}
    # Longest first: a secret that contains another is masked whole.
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _URL_CREDENTIALS.sub(lambda match: f"{match.group('scheme')}{MASK}@", text)
    text = _KEY_VALUE.sub(lambda match: f"{match.group('key')}{MASK}", text)
    return _BEARER.sub(lambda match: f"{match.group('key')}{MASK}", text)


# Error classes whose name adds nothing to their message.
_PLAIN_ERRORS = frozenset({"Exception", "Failure"})


def error_text(cls_name: str, message: str) -> str:
    """An error as a person reads it: ``Class: message`` with the class's module path dropped
    (and no class at all for a plain ``Exception`` or Dagster ``Failure``)."""
    text = message.strip()
    head, separator, rest = text.partition(": ")
    if separator and (head == cls_name or head.endswith(f".{cls_name}")):
        text = rest if cls_name in _PLAIN_ERRORS else f"{cls_name}: {rest}"
    return text


def run_url(ui_url: str, run_id: str) -> str | None:
    """The run's page in the Dagster UI, or None without a UI address."""
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None


def failure_notice(
    *,
    job: str,
    run_id: str,
    ui_url: str,
    assets: Sequence[str],
    partition: str | None,
    error: str,
    secrets: Iterable[str],
) -> FailureNotice:
    """The notice of a failed run: the error cut to its first sentence, every text scrubbed."""
    values = [value for value in secrets if value]

    def clean(text: str) -> str:
        return scrubbed(text, values)

    return FailureNotice(
        job=clean(job),
        run_id=run_id,
        run_url=run_url(ui_url, run_id),
        assets=tuple(clean(asset) for asset in assets),
        partition=clean(partition) if partition else None,
        # Scrubbed before the cut, so that no cut leaves the start of a secret behind.
        error=first_sentence(clean(error)) or "(no error message)",
    )


def notice_text(notice: FailureNotice) -> str:
    """The notification's text: what failed, the error, and the run's link (or its id)."""
    what = f"Dagster run {notice.run_id} of job {notice.job} failed"
    details = []
    if notice.assets:
        details.append(f"{'asset' if len(notice.assets) == 1 else 'assets'} {', '.join(notice.assets)}")
    if notice.partition:
        details.append(f"partition {notice.partition}")
    if details:
        what += f" ({'; '.join(details)})"
    lines = [what + ".", f"Error: {notice.error}"]
    if notice.run_url:
        lines.append(f"Run: {notice.run_url}")
    return "\n".join(lines)


def _slack_escaped(text: str) -> str:
    # Slack's text markup reserves these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notice: FailureNotice) -> dict[str, Any]:
    """What a Slack incoming webhook takes."""
    return {"text": _slack_escaped(notice_text(notice))}


def json_payload(notice: FailureNotice) -> dict[str, Any]:
    """The generic webhook's JSON object: the text and each field (``run_url`` only with a UI address)."""
    payload: dict[str, Any] = {
        "text": notice_text(notice),
        "job": notice.job,
        "run_id": notice.run_id,
        "assets": list(notice.assets),
        "partition": notice.partition,
        "error": notice.error,
    }
    if notice.run_url:
        payload["run_url"] = notice.run_url
    return payload


def notification_payload(notice: FailureNotice, webhook_format: str) -> dict[str, Any]:
    """The payload of FTP_ALERT_WEBHOOK_FORMAT (``slack`` or ``json``)."""
    return slack_payload(notice) if webhook_format == "slack" else json_payload(notice)


@dataclass(frozen=True)
class JobFailures:
    """The failed runs of one job in the Dagster instance."""

    job: str
    failed_runs: int
    last_failure_at: float | None  # Unix time the latest failed run ended; None without one


def run_failure_samples(failures: Iterable[JobFailures]) -> list[Sample]:
    """The ``runs`` stage's samples: each job's count (0 included, so that ``increase()`` sees
    the first failure) and, for a job that has failed, when its latest failure ended."""
    samples = []
    for job in sorted(failures, key=lambda failure: failure.job):
        labels = {"dagster_job": job.job}
        samples.append(Sample("ftp_run_failures_total", float(job.failed_runs), labels))
        if job.last_failure_at is not None:
            samples.append(Sample("ftp_run_last_failure_timestamp_seconds", job.last_failure_at, labels))
    return samples
