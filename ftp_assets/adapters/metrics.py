"""The loop's Prometheus metrics: their catalogue, and the push of one group to a Pushgateway.

Dagster's runs are short-lived pods, so each step pushes what it knows to the Pushgateway
(FTP_PUSHGATEWAY_URL) and Prometheus scrapes the gateway. Each push *replaces* one group, keyed
by ``job="ftp_assets"``, the ``stage`` that pushed it and (for per-task stages) the ``task``:
a bounded set of groups, so no series is left behind by a run id or a week. A figure that no
longer holds (an experiment's lift once it is decided) is simply absent from the next push.

Counters are totals read from a durable source at push time (the experiments table, MLflow, the
Dagster instance), never incremented by a pod, so a lost push loses nothing. Moments are
``*_timestamp_seconds`` gauges: ages are computed in PromQL (``time() - ...``), so a pushed value
never goes stale. docs/observability.md lists every metric; a test keeps it and this catalogue equal.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.registry import Collector

from ftp_assets.adapters.posts_db import redacted

PUSH_JOB = "ftp_assets"
# The label every per-task metric carries (from the grouping key) and the stages that push.
TASK_LABEL = "task"
Stage = Literal["selection", "dataset", "spend", "training", "experiment", "registry", "runs"]


@dataclass(frozen=True)
class MetricSpec:
    """One published metric: its name as Prometheus shows it, kind, unit and labels (besides
    ``task`` and the grouping key's ``job`` and ``stage``)."""

    name: str
    kind: Literal["gauge", "counter"]
    stage: Stage
    unit: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def per_task(self) -> bool:
        return self.stage != "runs"


def _gauge(name: str, stage: Stage, unit: str, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(name, "gauge", stage, unit, help, labels)


def _counter(name: str, stage: Stage, unit: str, help: str, *labels: str) -> MetricSpec:
    if not name.endswith("_total"):
        raise ValueError(f"a counter's name ends in _total: {name}")
    return MetricSpec(name, "counter", stage, unit, help, labels)


CATALOGUE: tuple[MetricSpec, ...] = (
    # engaged_posts
    _gauge("ftp_posts_in_window", "selection", "posts", "The task's posts in the latest selection window."),
    _gauge("ftp_posts_selected", "selection", "posts", "Posts kept by the latest selection (engaged and clean)."),
    _gauge(
        "ftp_posts_rejected",
        "selection",
        "posts",
        "Engaged posts the latest selection rejected, per cleaning rule.",
        "reason",
    ),
    _gauge(
        "ftp_selection_window_end_timestamp_seconds",
        "selection",
        "seconds",
        "End of the latest selection window (Unix time).",
    ),
    # training_jsonl and its enough_examples check
    _gauge(
        "ftp_training_examples",
        "dataset",
        "examples",
        "Examples in the latest training files, per split (training, validation).",
        "split",
    ),
    _gauge("ftp_training_tokens", "dataset", "tokens", "Tokens of one epoch of the latest training file."),
    _gauge(
        "ftp_training_examples_minimum",
        "dataset",
        "examples",
        "The enough_examples check's minimum: with fewer examples no training starts.",
    ),
    _gauge(
        "ftp_training_data_sufficient",
        "dataset",
        "boolean",
        "1 when the latest dataset passed the enough_examples check, 0 when it did not.",
    ),
    # fine_tuned_model, before its job (so that the first job's cost is an increase) and after
    _counter(
        "ftp_fine_tuning_cost_dollars_total",
        "spend",
        "US dollars",
        "Cost of every fine-tuning job of the task recorded in MLflow (each job once; 0 for the "
        "provider about to be paid for the first time); increase(...[7d]) is the week's spend.",
        "provider",
    ),
    _gauge(
        "ftp_fine_tuning_weekly_budget_dollars",
        "spend",
        "US dollars",
        "The task's weekly fine-tuning budget (the fine_tuning resource's weekly_budget_usd), which the "
        "weekly-cost alert compares the week's spend with; each job is also held to budget_usd by the cost guard.",
    ),
    # fine_tuned_model, after its job
    _gauge(
        "ftp_fine_tuning_estimated_cost_dollars",
        "training",
        "US dollars",
        "The cost guard's estimate of the latest fine-tuning job.",
        "provider",
    ),
    _gauge(
        "ftp_fine_tuning_cost_dollars",
        "training",
        "US dollars",
        "Cost of the latest fine-tuning job: the provider's bill, or (self-hosted) GPU time at the "
        "self_hosted_training resource's gpu_hour_usd.",
        "provider",
    ),
    _gauge("ftp_training_trained_tokens", "training", "tokens", "Tokens the latest job trained on (all epochs)."),
    _gauge("ftp_training_duration_seconds", "training", "seconds", "Wall time of the latest fine-tuning job."),
    _gauge(
        "ftp_training_loss",
        "training",
        "loss",
        "Final loss of the latest job, per split (train, validation).",
        "split",
    ),
    _gauge(
        "ftp_training_last_success_timestamp_seconds",
        "training",
        "seconds",
        "When the task's latest fine-tuning job finished and its model was registered (Unix time).",
    ),
    _gauge(
        "ftp_challenger_registry_version",
        "training",
        "version",
        "Registry version of the latest registered challenger.",
    ),
    # ab_experiment, ab_test_result, registered_model, rollback: the experiments table's picture
    _counter("ftp_experiments_started_total", "experiment", "experiments", "Experiments ever started for the task."),
    _counter(
        "ftp_experiment_decisions_total",
        "experiment",
        "experiments",
        "Experiments closed, per outcome (promoted, rejected, superseded, cancelled).",
        "outcome",
    ),
    _gauge(
        "ftp_challengers_rejected_in_a_row",
        "experiment",
        "experiments",
        "Rejected challengers since the task's last promotion (cancelled and superseded ones skipped).",
    ),
    _gauge("ftp_experiment_running", "experiment", "boolean", "1 while an experiment of the task runs."),
    _gauge(
        "ftp_experiment_started_timestamp_seconds",
        "experiment",
        "seconds",
        "When the running experiment started (Unix time); absent when none runs.",
    ),
    _gauge(
        "ftp_experiment_deadline_timestamp_seconds",
        "experiment",
        "seconds",
        "When the running experiment's maximum duration ends (Unix time); absent when none runs.",
    ),
    _gauge(
        "ftp_experiment_challenger_share",
        "experiment",
        "ratio",
        "Share of the running experiment's traffic the challenger serves now.",
    ),
    _gauge(
        "ftp_experiment_posts",
        "experiment",
        "posts",
        "Matured posts the latest look counted, per arm (champion, challenger).",
        "arm",
    ),
    _gauge(
        "ftp_experiment_lift",
        "experiment",
        "ratio",
        "Relative lift of the challenger's engagement rate at the latest look of the task's latest "
        "experiment, running or decided (0.05 is +5%).",
    ),
    _gauge(
        "ftp_experiment_lift_lower",
        "experiment",
        "ratio",
        "Lower end of the latest look's interval of the lift.",
    ),
    _gauge(
        "ftp_experiment_lift_upper",
        "experiment",
        "ratio",
        "Upper end of the latest look's interval of the lift.",
    ),
    _gauge(
        "ftp_experiment_statistic",
        "experiment",
        "z",
        "The latest look's test statistic (planned experiments).",
    ),
    _gauge(
        "ftp_experiment_boundary",
        "experiment",
        "z",
        "The latest look's efficacy boundary (group-sequential plans); absent when nothing is left to spend.",
    ),
    _gauge(
        "ftp_experiment_information_fraction",
        "experiment",
        "ratio",
        "Share of the planned maximum information the latest look observed.",
    ),
    _gauge(
        "ftp_experiment_last_look_timestamp_seconds",
        "experiment",
        "seconds",
        "When the task's latest experiment was last evaluated (Unix time).",
    ),
    _gauge(
        "ftp_experiment_last_decision_timestamp_seconds",
        "experiment",
        "seconds",
        "When the task's latest experiment was closed (Unix time).",
    ),
    # registered_model, rollback: the MLflow registry
    _gauge(
        "ftp_champion_registry_version",
        "registry",
        "version",
        "Registry version of the task's champion; absent before the first promotion.",
    ),
    _gauge(
        "ftp_last_promotion_timestamp_seconds",
        "registry",
        "seconds",
        "When a challenger of the task was last promoted to champion (Unix time).",
    ),
    # the run-failure sensor, from the Dagster instance (no task)
    _counter(
        "ftp_run_failures_total",
        "runs",
        "runs",
        "Failed runs of each of the code location's jobs, counted in the Dagster instance.",
        "dagster_job",
    ),
    _gauge(
        "ftp_run_last_failure_timestamp_seconds",
        "runs",
        "seconds",
        "When each job's latest failed run ended (Unix time).",
        "dagster_job",
    ),
)
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}


@dataclass(frozen=True)
class Sample:
    """One value of a catalogued metric, with its own labels (the grouping key adds the rest)."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class MetricsError(ValueError):
    """A sample that the catalogue does not describe."""


def _families(stage: Stage, samples: Iterable[Sample]) -> list[Metric]:
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for sample in samples:
        spec = METRICS.get(sample.name)
        if spec is None or spec.stage != stage:
            raise MetricsError(f"{sample.name} is not a metric of the {stage} stage")
        if set(sample.labels) != set(spec.labels):
            raise MetricsError(f"{sample.name} takes the labels {spec.labels}, got {tuple(sample.labels)}")
        family = families.get(spec.name)
        if family is None:
            documentation = f"{spec.help} Unit: {spec.unit}."
            if spec.kind == "counter":
                # The family's name drops _total; the sample is published as ..._total.
                family = CounterMetricFamily(spec.name[: -len("_total")], documentation, labels=spec.labels)
            else:
                family = GaugeMetricFamily(spec.name, documentation, labels=spec.labels)
            families[spec.name] = family
        family.add_metric([sample.labels[label] for label in spec.labels], float(sample.value))
    return list(families.values())


class _Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def grouping_key(stage: Stage, task: str | None) -> dict[str, str]:
    if (task is None) != (stage == "runs"):
        raise MetricsError(f"the {stage} stage is pushed {'without' if stage == 'runs' else 'per'} task")
    return {"stage": stage} if task is None else {"stage": stage, TASK_LABEL: task}


def url_problem(url: str) -> str:
    """Why ``url`` is not a Pushgateway address (http or https, a host, a numeric port), in words
    that quote no part of it; empty when it is one."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        parts.port  # noqa: B018 (parsed for its ValueError)
    except ValueError:
        return "FTP_PUSHGATEWAY_URL is not a URL with a host and a numeric port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "FTP_PUSHGATEWAY_URL must be an http:// or https:// URL with a host"
    return ""


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL as it may be shown (:func:`redacted`: no user, password or query), and its user and
    password (unquoted) for HTTP basic auth. Only called on URLs that :func:`url_problem` passed."""
    if "://" not in url:
        url = f"http://{url}"  # prometheus-client's own default for "host:port"
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return redacted(url), None, None
    return redacted(url), unquote(parts.username or ""), unquote(parts.password or "")


def push(gateway_url: str, stage: Stage, task: str | None, samples: Iterable[Sample], *, timeout_s: float = 5.0) -> str:
    """Replaces the stage's group (of ``task``) on the Pushgateway with ``samples``; returns an
    empty string, or a one-line reason the push failed (the metrics never fail a step). A sample
    the catalogue does not describe raises :class:`MetricsError`: that is our bug, not an outage.
    A user and password in the URL are sent by HTTP basic auth, and never shown."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(_families(stage, samples)))
    key = grouping_key(stage, task)
    problem = url_problem(gateway_url)
    if problem:
        return f"the {stage} metrics were not pushed: {problem}"
    url, username, password = _split_credentials(gateway_url)

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable[[], None]:
        if username is None:
            return default_handler(url, method, timeout, headers, data)
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    try:
        push_to_gateway(url, job=PUSH_JOB, grouping_key=key, registry=registry, timeout=timeout_s, handler=handler)
    except Exception as error:  # an outage, or a malformed URL whose message may quote it: never raised
        return f"the {stage} metrics were not pushed to {url}: {_reason(error)}"
    return ""


def readiness(gateway_url: str, *, timeout_s: float = 5.0) -> str:
    """Empty when the Pushgateway says it is ready (a GET: nothing is pushed); else why not."""
    problem = url_problem(gateway_url)
    if problem:
        return problem
    url, username, password = _split_credentials(gateway_url)
    request = urllib.request.Request(url.rstrip("/") + "/-/ready")
    if username is not None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return "" if answer.status == 200 else f"it answered {answer.status}"
    except urllib.error.HTTPError as error:
        return f"it answered {error.code}"
    except Exception as error:  # as in push: never the URL
        return f"it does not answer ({_reason(error)})"


def _reason(error: Exception) -> str:
    """What went wrong, never the URL it was given."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if type(error) is OSError:  # prometheus-client's own: "error talking to pushgateway: 401 Unauthorized"
        return str(error)
    return type(error).__name__
