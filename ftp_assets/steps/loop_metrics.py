"""The loop's metrics from what each step produced or the stores hold: plain functions from
results to :class:`~ftp_assets.adapters.metrics.Sample` lists, one per pushed stage."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from ftp_assets.adapters.experiments_store import (
    CANCELLED,
    PROMOTED,
    REJECTED,
    RUNNING,
    SUPERSEDED,
    ExperimentOutcome,
    ExperimentStore,
    LookRecord,
)
from ftp_assets.adapters.metrics import Sample
from ftp_assets.steps.data_path import EngagedPosts, TrainingDataset
from ftp_assets.steps.fine_tune import FineTuning

# The closed experiments' outcomes, always published (a zero is a fact, not a gap).
OUTCOMES = (PROMOTED, REJECTED, SUPERSEDED, CANCELLED)


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def _number(value: object) -> float | None:
    """A finite number, or None (JSON nulls, infinities: nothing to publish)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def selection_samples(result: EngagedPosts) -> list[Sample]:
    """``engaged_posts``: the window's volume, what was kept, and each rule's rejections."""
    return [
        Sample("ftp_posts_in_window", result.funnel["in_window"]),
        Sample("ftp_posts_selected", result.rows),
        *(Sample("ftp_posts_rejected", count, {"reason": reason}) for reason, count in result.rejected.items()),
        Sample("ftp_selection_window_end_timestamp_seconds", _seconds(result.window_end)),
    ]


def dataset_samples(dataset: TrainingDataset, *, minimum_examples: int, sufficient: bool) -> list[Sample]:
    """``training_jsonl`` as its enough_examples check judged it."""
    return [
        Sample("ftp_training_examples", dataset.training_examples, {"split": "training"}),
        Sample("ftp_training_examples", dataset.validation_examples, {"split": "validation"}),
        Sample("ftp_training_tokens", dataset.training_tokens),
        Sample("ftp_training_examples_minimum", minimum_examples),
        Sample("ftp_training_data_sufficient", 1 if sufficient else 0),
    ]


def spend_samples(costs_by_provider: Mapping[str, float], *, provider: str, weekly_budget_usd: float) -> list[Sample]:
    """The task's total fine-tuning spend per provider (``costs_by_provider``, from MLflow: it
    survives any pod), with 0 for ``provider`` before its first job, so that ``increase()`` counts
    that job too, and the weekly budget the alert compares the week's spend with."""
    totals = {provider: 0.0, **costs_by_provider}
    return [
        *(
            Sample("ftp_fine_tuning_cost_dollars_total", total, {"provider": name})
            for name, total in sorted(totals.items())
        ),
        Sample("ftp_fine_tuning_weekly_budget_dollars", weekly_budget_usd),
    ]


def training_samples(trained: FineTuning, *, finished_at: datetime) -> list[Sample]:
    """``fine_tuned_model``: the latest job's cost, size, time and losses, and the challenger it registered."""
    provider = {"provider": trained.provider}
    result = trained.result
    samples = [
        Sample("ftp_fine_tuning_estimated_cost_dollars", trained.estimated_cost_usd, provider),
        Sample("ftp_fine_tuning_cost_dollars", trained.actual_cost_usd, provider),
        Sample("ftp_training_trained_tokens", result.trained_tokens or 0),
        Sample("ftp_training_duration_seconds", result.duration_s),
        Sample("ftp_training_last_success_timestamp_seconds", _seconds(finished_at)),
        Sample("ftp_challenger_registry_version", float(trained.model.registry_version)),
    ]
    for split, loss in (("train", result.final_train_loss), ("validation", result.final_valid_loss)):
        value = _number(loss)
        if value is not None:
            samples.append(Sample("ftp_training_loss", value, {"split": split}))
    return samples


def rejected_in_a_row(history: Iterable[ExperimentOutcome]) -> int:
    """Rejections since the last promotion, newest first; a cancelled or superseded experiment
    (no verdict on its challenger) neither counts nor breaks the run."""
    count = 0
    for outcome in sorted(history, key=lambda o: o.decided_at or o.started_at, reverse=True):
        if outcome.status == PROMOTED:
            break
        if outcome.status == REJECTED:
            count += 1
    return count


def experiment_samples(store: ExperimentStore, task: str, *, legacy_max_duration: timedelta) -> list[Sample]:
    """The experiments table's picture of the task: totals by outcome, rejections in a row, the
    running experiment, and the latest recorded look of the latest experiment.
    ``legacy_max_duration`` is the deadline of an experiment started before plans (which records
    no looks: its lift is in the run's metadata only)."""
    history = store.history(task)
    statuses = Counter(outcome.status for outcome in history)
    decided = [outcome.decided_at for outcome in history if outcome.status != RUNNING and outcome.decided_at]
    samples = [
        Sample("ftp_experiments_started_total", len(history)),
        *(Sample("ftp_experiment_decisions_total", statuses[outcome], {"outcome": outcome}) for outcome in OUTCOMES),
        Sample("ftp_challengers_rejected_in_a_row", rejected_in_a_row(history)),
    ]
    if decided:
        samples.append(Sample("ftp_experiment_last_decision_timestamp_seconds", _seconds(max(decided))))
    running = store.running(task)
    samples.append(Sample("ftp_experiment_running", 1 if running else 0))
    if running is not None:
        duration = timedelta(hours=running.plan.max_duration_hours) if running.plan else legacy_max_duration
        share = running.phases[-1].share if running.phases else running.challenger_share
        samples += [
            Sample("ftp_experiment_started_timestamp_seconds", _seconds(running.started_at)),
            Sample("ftp_experiment_deadline_timestamp_seconds", _seconds(running.started_at + duration)),
            Sample("ftp_experiment_challenger_share", share),
        ]
    # The latest experiment's latest look, running or decided: a decision made at its first look
    # with data still shows what it saw.
    latest = running.experiment_id if running else (history[-1].experiment_id if history else None)
    looks = store.looks(latest) if latest else []
    return samples + (look_samples(looks[-1]) if looks else [])


def look_samples(look: LookRecord) -> list[Sample]:
    """A recorded look's figures: posts per arm, the lift with its interval, the statistic
    against the boundary, the information observed."""
    figures = look.analysis or {}
    samples = [
        Sample("ftp_experiment_last_look_timestamp_seconds", _seconds(look.evaluated_at)),
        Sample("ftp_experiment_posts", sum(phase.control.n for phase in look.data.phases), {"arm": "champion"}),
        Sample("ftp_experiment_posts", sum(phase.treatment.n for phase in look.data.phases), {"arm": "challenger"}),
    ]
    for name, value in (
        ("ftp_experiment_lift", figures.get("lift")),
        ("ftp_experiment_lift_lower", figures.get("ci_lower")),
        ("ftp_experiment_lift_upper", figures.get("ci_upper")),
        ("ftp_experiment_statistic", look.statistic),
        ("ftp_experiment_boundary", look.boundary),
        ("ftp_experiment_information_fraction", look.information_fraction),
    ):
        number = _number(value)
        if number is not None:
            samples.append(Sample(name, number))
    return samples


def registry_samples(champion_version: str | None, history: Iterable[ExperimentOutcome]) -> list[Sample]:
    """The champion's registry version (none before the first promotion) and when a challenger
    was last promoted."""
    samples = []
    if champion_version is not None:
        samples.append(Sample("ftp_champion_registry_version", float(champion_version)))
    promoted = [o.decided_at for o in history if o.status == PROMOTED and o.decided_at is not None]
    if promoted:
        samples.append(Sample("ftp_last_promotion_timestamp_seconds", _seconds(max(promoted))))
    return samples
