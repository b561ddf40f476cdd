"""Seeded simulation of repeatedly evaluated A/B experiments on synthetic posts (a simulation).

It measures what the decision rule promises: with an A/A experiment evaluated at many looks, the
sequential rule (:func:`~ftp_assets.domain.ab_stats.decide` on the always-valid interval) promotes
at most ``alpha`` of experiments, while the same rule on the fixed-horizon interval ("naive
peeking") promotes more; and at the sample that
:func:`~ftp_assets.domain.ab_stats.required_sample_total` plans, a true lift of the minimum
detectable effect is promoted with the planned power. Used by ``benchmarks/ab_simulation.py`` and
the tests, so both measure the same thing.

Posts are drawn per look as whole arrays, reduced to each arm's sufficient statistics and summed
cumulatively over looks; only the analysis of each (experiment, look) runs in Python, through the
real :func:`analyze` and :func:`decide`. Arms are drawn as independent Bernoulli(share) per post,
which is what the routing hash amounts to (its uniformity is tested in ``test_routing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from ftp_assets.domain.ab_stats import DEFAULT_SEQUENTIAL_TUNING, Analysis, ArmStats, analyze, decide

_SIMULATED_START = datetime(2025, 1, 6, tzinfo=UTC)


@dataclass(frozen=True)
class AudienceModel:
    """How synthetic posts perform.

    Each post has its own engagement probability, Beta-distributed around ``engagement_rate``
    (posts differ in quality; ``rate_concentration`` is a + b of the Beta, so a larger value
    means more alike posts); impressions are Poisson around a lognormal reach; engagements are
    binomial in the impressions.
    """

    engagement_rate: float = 0.05
    rate_concentration: float = 40.0
    median_impressions: float = 300.0
    impressions_log_sd: float = 1.0

    def draw_posts(
        self, rng: np.random.Generator, relative_lift: np.ndarray | float, size: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Engagements and impressions of ``size`` posts whose expected rate is scaled by 1 + lift."""
        mean_rate = self.engagement_rate * (1 + np.asarray(relative_lift))
        post_rate = rng.beta(mean_rate * self.rate_concentration, (1 - mean_rate) * self.rate_concentration, size)
        reach = self.median_impressions * np.exp(self.impressions_log_sd * rng.standard_normal(size))
        impressions = rng.poisson(reach)
        return rng.binomial(impressions, post_rate), impressions


@dataclass(frozen=True)
class ExperimentDesign:
    """The settings an experiment is analyzed and decided with."""

    alpha: float = 0.05
    challenger_share: float = 0.1
    minimum_detectable_effect: float = 0.2
    power: float = 0.8
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING
    minimum_lift: float = 0.0
    max_duration_hours: float = 168.0

    def analyze(self, control: ArmStats, treatment: ArmStats) -> Analysis:
        return analyze(
            control,
            treatment,
            alpha=self.alpha,
            challenger_share=self.challenger_share,
            minimum_detectable_effect=self.minimum_detectable_effect,
            power=self.power,
            sequential_tuning=self.sequential_tuning,
        )


@dataclass(frozen=True)
class RuleOutcome:
    """How many simulated experiments one decision rule promoted and rejected."""

    experiments: int
    promoted: int
    rejected: int

    @property
    def promotion_rate(self) -> float:
        return self.promoted / self.experiments

    @property
    def promotion_rate_standard_error(self) -> float:
        """Binomial standard error of the promotion rate."""
        rate = self.promotion_rate
        return math.sqrt(rate * (1 - rate) / self.experiments)


@dataclass(frozen=True)
class SimulationResult:
    total_posts: int
    looks: int
    sequential: RuleOutcome  # decide() on the always-valid interval: the rule we ship
    naive: RuleOutcome  # the same rule on the fixed-horizon interval at the same looks


def cumulative_arm_sums(
    rng: np.random.Generator,
    audience: AudienceModel,
    *,
    experiments: int,
    looks: int,
    posts_per_look: int,
    challenger_share: float,
    true_lift: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Champion and challenger sufficient statistics at each look, shape (experiments, looks, 6).

    The last axis is (n, Σx, Σy, Σx², Σy², Σxy), the fields of :class:`ArmStats`, cumulative over
    looks: look k holds every post published up to it.
    """
    control = np.empty((experiments, looks, 6))
    treatment = np.empty((experiments, looks, 6))
    for look in range(looks):
        in_treatment = rng.random((experiments, posts_per_look)) < challenger_share
        x, y = audience.draw_posts(rng, true_lift * in_treatment, (experiments, posts_per_look))
        x, y = x.astype(np.float64), y.astype(np.float64)
        per_post = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)
        treatment[:, look] = np.einsum("ep,epk->ek", in_treatment.astype(np.float64), per_post)
        control[:, look] = per_post.sum(axis=1) - treatment[:, look]
    return np.cumsum(control, axis=1), np.cumsum(treatment, axis=1)


def planned_total_posts(
    rng: np.random.Generator, audience: AudienceModel, design: ExperimentDesign, *, pilot_posts: int = 50_000
) -> int:
    """The sample the analysis itself asks for, from an A/A pilot (as a team would use history)."""
    control, treatment = cumulative_arm_sums(
        rng,
        audience,
        experiments=1,
        looks=1,
        posts_per_look=pilot_posts,
        challenger_share=design.challenger_share,
        true_lift=0.0,
    )
    pilot = design.analyze(ArmStats(*control[0, 0]), ArmStats(*treatment[0, 0]))
    if pilot.required_sample_total is None:
        raise ValueError(f"an A/A pilot of {pilot_posts} posts cannot plan a sample: {pilot.insufficient_data_reason}")
    return pilot.required_sample_total


def simulate_experiments(
    rng: np.random.Generator,
    audience: AudienceModel,
    design: ExperimentDesign,
    *,
    true_lift: float,
    experiments: int,
    looks: int,
    total_posts: int,
) -> SimulationResult:
    """Evaluate each experiment at ``looks`` evenly spaced looks until a rule decides.

    Looks are spread over the maximum duration, the last one at the deadline, so an experiment
    that has not been promoted by then is rejected. Each rule stops at its first decision.
    """
    posts_per_look = math.ceil(total_posts / looks)
    control, treatment = cumulative_arm_sums(
        rng,
        audience,
        experiments=experiments,
        looks=looks,
        posts_per_look=posts_per_look,
        challenger_share=design.challenger_share,
        true_lift=true_lift,
    )
    final: dict[str, list[str]] = {"sequential": [], "naive": []}
    for experiment in range(experiments):
        open_rules = set(final)
        for look in range(looks):
            analysis = design.analyze(ArmStats(*control[experiment, look]), ArmStats(*treatment[experiment, look]))
            now = _SIMULATED_START + timedelta(hours=design.max_duration_hours * (look + 1) / looks)
            for rule in tuple(open_rules):
                if rule == "naive" and analysis.insufficient_data_reason is None:
                    judged = replace(analysis, ci_lower=analysis.fixed_ci_lower, ci_upper=analysis.fixed_ci_upper)
                else:
                    judged = analysis
                decision = decide(
                    judged,
                    minimum_lift=design.minimum_lift,
                    started_at=_SIMULATED_START,
                    now=now,
                    max_duration_hours=design.max_duration_hours,
                ).decision
                if decision != "continue":
                    final[rule].append(decision)
                    open_rules.remove(rule)
            if not open_rules:
                break
    outcomes = {
        rule: RuleOutcome(experiments, decisions.count("promote"), decisions.count("reject"))
        for rule, decisions in final.items()
    }
    return SimulationResult(total_posts=posts_per_look * looks, looks=looks, **outcomes)
