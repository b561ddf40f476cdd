"""Statistics of the live A/B experiment between the champion and the challenger model.

Pure Python (numpy/scipy), usable from a notebook::

    from ftp_assets.domain.ab_stats import ArmStats, analyze, decide

    control = ArmStats(n=5210, sum_x=13104, sum_y=262311, sum_x2=..., sum_y2=..., sum_xy=...)
    treatment = ArmStats.from_arrays(engagements, impressions)
    analysis = analyze(control, treatment, challenger_share=0.1)
    decision = decide(analysis, started_at=start, now=datetime.now(UTC))

The unit is the post (the generation), which is also the unit of randomization. Each arm arrives
as sufficient statistics over its posts: ``n`` and the sums of x (engagements), y (impressions),
x², y² and x·y. The metric is the engagement rate Σx/Σy, a ratio of two per-post means, so its
variance comes from the delta method rather than from treating impressions as independent trials
(Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics"). A plain mean metric is
the special case y ≡ 1 (:meth:`ArmStats.for_mean_metric`).

The effect is the relative lift ``rate_treatment / rate_control - 1``, with the delta-method
standard error and Welch-Satterthwaite degrees of freedom that GrowthBook's gbstats uses for
relative effects (``TwoSidedTTest``). The decision uses an always-valid interval instead of the
fixed-horizon one, because the experiment is evaluated every time new outcomes arrive: checking a
fixed-horizon interval at every look promotes more than ``alpha`` of A/A experiments, and more
with every extra look (``benchmarks/ab_simulation.py`` measures both).

Degenerate data (fewer than two posts in an arm, no impressions, no control engagements, zero
variance) is a normal state early in an experiment, not an error: :func:`analyze` then returns an
:class:`Analysis` whose ``insufficient_data_reason`` says why and whose effect fields are ``None``,
and :func:`decide` answers ``continue`` with that reason (``reject`` once the maximum duration has
passed). Inputs that cannot come from real posts (negative counts, sums that imply a negative
variance) and invalid settings raise ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypedDict

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

# GrowthBook's default tuning parameter for sequential testing: the total sample (both arms) at
# which the confidence sequence is tightest. Set it near the expected size of the experiment.
DEFAULT_SEQUENTIAL_TUNING = 5000.0

# Relative tolerance for sums that, because of float rounding, imply a slightly negative variance.
_ROUNDING_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm: post count and, over its posts, the sums of x, y, x², y², xy.

    x is a post's engagements and y its impressions. Values from a database (``Decimal``, numpy
    scalars) are converted; ``n`` must be a whole number.
    """

    n: int
    sum_x: float
    sum_y: float
    sum_x2: float
    sum_y2: float
    sum_xy: float

    def __post_init__(self) -> None:
        n = float(self.n)
        if not n.is_integer() or n < 0:
            raise ValueError(f"n must be a non-negative whole number, got {self.n!r}")
        object.__setattr__(self, "n", int(n))
        for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, value)
        if self.n == 0 and any((self.sum_x, self.sum_y, self.sum_x2, self.sum_y2, self.sum_xy)):
            raise ValueError("an arm with n = 0 posts must have all sums 0")
        if self.sum_y < 0 or self.sum_x2 < 0 or self.sum_y2 < 0:
            raise ValueError(
                f"sum_y, sum_x2 and sum_y2 cannot be negative, got {self.sum_y}, {self.sum_x2}, {self.sum_y2}"
            )
        if self.n >= 2:
            self._check_moments_are_possible()

    def _check_moments_are_possible(self) -> None:
        var_x, var_y, cov_xy = self._sample_moments()
        scale_x, scale_y = self.sum_x2 / self.n, self.sum_y2 / self.n
        if var_x < -_ROUNDING_TOLERANCE * scale_x or var_y < -_ROUNDING_TOLERANCE * scale_y:
            raise ValueError("the sums imply a negative variance: sum_x2 < sum_x**2 / n or sum_y2 < sum_y**2 / n")
        # Cauchy-Schwarz: without it the rate's delta-method variance could come out negative.
        if cov_xy**2 > max(var_x, 0.0) * max(var_y, 0.0) + _ROUNDING_TOLERANCE * scale_x * scale_y:
            raise ValueError("the sums imply a covariance of x and y larger than their variances allow")

    @classmethod
    def from_arrays(cls, x: ArrayLike, y: ArrayLike) -> ArmStats:
        """Sufficient statistics of per-post engagements ``x`` and impressions ``y`` (same length)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
        return cls(
            n=x.size,
            sum_x=x.sum(),
            sum_y=y.sum(),
            sum_x2=(x * x).sum(),
            sum_y2=(y * y).sum(),
            sum_xy=(x * y).sum(),
        )

    @classmethod
    def for_mean_metric(cls, *, n: int, mean: float, sd: float) -> ArmStats:
        """A mean metric as the ratio case with y ≡ 1, from its count, mean and sample sd."""
        sum_x = n * mean
        return cls(n=n, sum_x=sum_x, sum_y=n, sum_x2=(n - 1) * sd**2 + n * mean**2, sum_y2=n, sum_xy=sum_x)

    @property
    def rate(self) -> float | None:
        """Σx/Σy, or None when the arm has no impressions."""
        return self.sum_x / self.sum_y if self.sum_y > 0 else None

    def _sample_moments(self) -> tuple[float, float, float]:
        """Sample variances of x and y and their covariance (n - 1 denominators); needs n >= 2."""
        n = self.n
        var_x = (self.sum_x2 - self.sum_x**2 / n) / (n - 1)
        var_y = (self.sum_y2 - self.sum_y**2 / n) / (n - 1)
        cov_xy = (self.sum_xy - self.sum_x * self.sum_y / n) / (n - 1)
        return var_x, var_y, cov_xy

    def rate_unit_variance(self) -> float:
        """Per-post delta-method variance of the rate; divided by n it is the rate's variance.

        Var(x̄/ȳ) ≈ Var(x − r·y) / (n·μy²) with r = Σx/Σy, which expands to Deng et al.'s
        (σx² − 2r·σxy + r²·σy²) / (n·μy²). Needs n >= 2 and Σy > 0.
        """
        rate = self.sum_x / self.sum_y
        # Σ(x − r·y)²: the residuals sum to zero, so this is (n − 1) times their sample variance.
        squared_residuals = self.sum_x2 - 2 * rate * self.sum_xy + rate**2 * self.sum_y2
        if squared_residuals <= _ROUNDING_TOLERANCE * self.sum_x2:
            return 0.0  # every post has the same rate; what is left is float rounding
        mean_y = self.sum_y / self.n
        return squared_residuals / (self.n - 1) / mean_y**2


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyze` found; the settings it used are echoed for the record.

    ``treatment`` is the challenger, ``control`` the champion. Effect fields are ``None`` exactly
    when ``insufficient_data_reason`` is set. Intervals are two-sided at level ``1 - alpha``.
    """

    n_control: int
    n_treatment: int
    rate_control: float | None
    rate_treatment: float | None
    rate_control_variance: float | None  # delta-method variance of the rate estimate
    rate_treatment_variance: float | None
    lift: float | None  # rate_treatment / rate_control - 1
    lift_standard_error: float | None
    degrees_of_freedom: float | None  # Welch-Satterthwaite, for the fixed-horizon test
    p_value: float | None  # fixed horizon, two-sided, for information
    fixed_ci_lower: float | None
    fixed_ci_upper: float | None
    ci_lower: float | None  # always valid: the decision uses these two
    ci_upper: float | None
    chance_to_beat: float | None  # P(lift > 0 | data): flat prior, normal approximation
    srm_p_value: float
    required_sample_total: int | None  # posts over both arms at the configured split
    remaining_sample_total: int | None  # required minus posts so far, never negative
    alpha: float
    challenger_share: float
    minimum_detectable_effect: float
    power: float
    sequential_tuning: float
    insufficient_data_reason: str | None


class _AnalysisSettings(TypedDict):
    """The fields of :class:`Analysis` that :func:`analyze` fills in whether or not the data suffices."""

    n_control: int
    n_treatment: int
    rate_control: float | None
    rate_treatment: float | None
    srm_p_value: float
    alpha: float
    challenger_share: float
    minimum_detectable_effect: float
    power: float
    sequential_tuning: float


@dataclass(frozen=True)
class Decision:
    """What to do with the challenger, and why, in words fit for metadata and logs."""

    decision: Literal["promote", "reject", "continue"]
    reason: str


def sample_ratio_mismatch_p_value(n_control: int, n_treatment: int, challenger_share: float) -> float:
    """Chi-square goodness-of-fit p-value of the post counts against the configured split.

    1.0 when there are no posts yet (nothing contradicts the split), as GrowthBook's ``check_srm``.
    """
    total = n_control + n_treatment
    if total == 0:
        return 1.0
    expected = (total * (1 - challenger_share), total * challenger_share)
    statistic = sum((observed - e) ** 2 / e for observed, e in zip((n_control, n_treatment), expected, strict=True))
    # scipy.stats.chisquare with one degree of freedom, without its per-call overhead (the
    # simulations call this at every look).
    return float(special.chdtrc(1, statistic))


def always_valid_multiplier(n_total: float, alpha: float, sequential_tuning: float) -> float:
    """Half-width of the always-valid interval in units of the estimate's standard error.

    GrowthBook's sequential testing: the asymptotic confidence sequence of Waudby-Smith, Arbour,
    Sinha, Kennedy & Ramdas (2023), "Time-uniform central limit theory and asymptotic confidence
    sequences", eq. 9 (two-sided half-width for a per-observation variance s² = se²·n), with the
    mixing parameter rho from eq. 161, chosen so the sequence is tightest at
    ``n_total = sequential_tuning``. Like GrowthBook it is normal-asymptotic: no degrees of freedom.
    """
    log_alpha = math.log(alpha)
    rho_squared = (-2 * log_alpha + math.log(-2 * log_alpha + 1)) / sequential_tuning
    u = n_total * rho_squared
    return math.sqrt(2 * (u + 1) / u * math.log(math.sqrt(u + 1) / alpha))


def required_sample_total(
    relative_unit_variance: float,
    *,
    minimum_detectable_effect: float,
    challenger_share: float,
    alpha: float,
    power: float,
    sequential_tuning: float,
) -> int:
    """Smallest total of posts (both arms, at the configured split) to promote a true lift.

    It is honest for the sequential rule: it is the sample at which the always-valid lower bound
    clears zero with probability ``power`` when the true lift is ``minimum_detectable_effect``,
    i.e. MDE / se(N) >= k(N) + z_power, where k is :func:`always_valid_multiplier` and
    se(N)² = (1 + MDE)² · v / (N · share · (1 - share)) with ``v = relative_unit_variance`` (the
    per-post variance of the rate divided by the rate squared, assumed equal in both arms).
    Promotion against a ``minimum_lift`` above zero needs more.
    """
    z_power = special.ndtri(power)
    effect_variance_times_n = (1 + minimum_detectable_effect) ** 2 * relative_unit_variance
    effect_variance_times_n /= challenger_share * (1 - challenger_share)

    def shortfall(log_n_total: float) -> float:
        n_total = math.exp(log_n_total)
        standard_error = math.sqrt(effect_variance_times_n / n_total)
        return (always_valid_multiplier(n_total, alpha, sequential_tuning) + z_power) * standard_error - (
            minimum_detectable_effect
        )

    # shortfall decreases in n: k(n)/sqrt(n) and z/sqrt(n) both fall (z > 0 since power >= 0.5).
    # The search starts at 4 posts, two per arm, the least an analysis can use.
    smallest, largest = math.log(4), math.log(1e15)
    if shortfall(smallest) <= 0:
        return 4
    if shortfall(largest) > 0:
        raise ValueError(f"a minimum detectable effect of {minimum_detectable_effect} needs more than 1e15 posts")
    return math.ceil(math.exp(optimize.brentq(shortfall, smallest, largest, xtol=1e-9)))


def analyze(
    control: ArmStats,
    treatment: ArmStats,
    *,
    alpha: float = 0.05,
    challenger_share: float = 0.1,
    minimum_detectable_effect: float = 0.1,
    power: float = 0.8,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> Analysis:
    """Analyze the champion (``control``) against the challenger (``treatment``).

    ``challenger_share`` is the configured fraction of posts routed to the challenger (for the SRM
    test and the sample size); ``minimum_detectable_effect`` is a relative lift (0.1 = +10%) that
    the experiment should detect with probability ``power``; ``sequential_tuning`` is the total
    number of posts at which the always-valid interval is tightest (see
    :func:`always_valid_multiplier`).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not 0 < challenger_share < 1:
        raise ValueError(f"challenger_share must lie in (0, 1) for an experiment, got {challenger_share!r}")
    if not minimum_detectable_effect > 0:
        raise ValueError(f"minimum_detectable_effect must be positive, got {minimum_detectable_effect!r}")
    if not 0.5 <= power < 1:
        raise ValueError(f"power must lie in [0.5, 1), got {power!r}")
    if not sequential_tuning > 0:
        raise ValueError(f"sequential_tuning must be positive, got {sequential_tuning!r}")

    settings = _AnalysisSettings(
        n_control=control.n,
        n_treatment=treatment.n,
        rate_control=control.rate,
        rate_treatment=treatment.rate,
        srm_p_value=sample_ratio_mismatch_p_value(control.n, treatment.n, challenger_share),
        alpha=alpha,
        challenger_share=challenger_share,
        minimum_detectable_effect=minimum_detectable_effect,
        power=power,
        sequential_tuning=sequential_tuning,
    )
    reason = insufficient_data_reason(control, treatment)
    if reason is not None:
        return _analysis_without_effect(settings, reason)
    rate_control, rate_treatment = control.rate, treatment.rate
    if rate_control is None or rate_treatment is None:
        # insufficient_data_reason answers for an arm without impressions, the only case without a rate.
        raise RuntimeError("both arms have impressions here, so both must have a rate")
    unit_variance_control = control.rate_unit_variance()
    unit_variance_treatment = treatment.rate_unit_variance()
    # gbstats TwoSidedTTest, relative case: Var(b/a - 1) ≈ Var(b)/a² + Var(a)·b²/a⁴.
    lift_variance = unit_variance_treatment / (rate_control**2 * treatment.n) + (
        unit_variance_control * rate_treatment**2 / (rate_control**4 * control.n)
    )
    if not lift_variance > 0:
        return _analysis_without_effect(
            settings, "zero variance: within each arm every post has the same engagement rate"
        )

    lift = rate_treatment / rate_control - 1
    standard_error = math.sqrt(lift_variance)
    degrees_of_freedom = _welch_degrees_of_freedom(
        unit_variance_control / control.n, control.n, unit_variance_treatment / treatment.n, treatment.n
    )
    # scipy.special's t-distribution functions: the same as scipy.stats.t, without its per-call
    # overhead, which matters in the 10,000-look simulations.
    fixed_half_width = float(special.stdtrit(degrees_of_freedom, 1 - alpha / 2)) * standard_error
    p_value = 2 * float(special.stdtr(degrees_of_freedom, -abs(lift) / standard_error))
    n_total = control.n + treatment.n
    always_valid_half_width = always_valid_multiplier(n_total, alpha, sequential_tuning) * standard_error
    # The champion's relative per-post variance stands for both arms when planning the sample.
    required = required_sample_total(
        unit_variance_control / rate_control**2,
        minimum_detectable_effect=minimum_detectable_effect,
        challenger_share=challenger_share,
        alpha=alpha,
        power=power,
        sequential_tuning=sequential_tuning,
    )
    return Analysis(
        **settings,
        rate_control_variance=unit_variance_control / control.n,
        rate_treatment_variance=unit_variance_treatment / treatment.n,
        lift=lift,
        lift_standard_error=standard_error,
        degrees_of_freedom=degrees_of_freedom,
        p_value=p_value,
        fixed_ci_lower=lift - fixed_half_width,
        fixed_ci_upper=lift + fixed_half_width,
        ci_lower=lift - always_valid_half_width,
        ci_upper=lift + always_valid_half_width,
        # Posterior of the lift under a flat prior and the normal approximation: N(lift, se²).
        chance_to_beat=float(special.ndtr(lift / standard_error)),
        required_sample_total=required,
        remaining_sample_total=max(required - n_total, 0),
        insufficient_data_reason=None,
    )


def decide(
    analysis: Analysis,
    *,
    minimum_lift: float = 0.0,
    srm_threshold: float = 0.001,
    started_at: datetime,
    now: datetime,
    max_duration_hours: float = 168,
) -> Decision:
    """The experiment's decision, checked in this order:

    1. ``reject`` on a sample-ratio mismatch (SRM p < ``srm_threshold``): the arms are not
       comparable, so no lift can be trusted, and an SRM never leads to promotion;
    2. ``continue`` while the data is insufficient (``reject`` once the maximum duration passed);
    3. ``promote`` when the always-valid interval lies entirely above ``minimum_lift``;
    4. ``reject`` when it lies entirely below zero;
    5. ``reject`` when ``max_duration_hours`` have passed since ``started_at`` without promotion;
    6. ``continue`` otherwise.
    """
    if not minimum_lift >= 0:
        # A negative bar could put an interval both above the bar and below zero.
        raise ValueError(f"minimum_lift must be >= 0, got {minimum_lift!r}")
    if not 0 < srm_threshold < 1:
        raise ValueError(f"srm_threshold must lie in (0, 1), got {srm_threshold!r}")
    if not max_duration_hours > 0:
        raise ValueError(f"max_duration_hours must be positive, got {max_duration_hours!r}")
    elapsed_hours = (now - started_at).total_seconds() / 3600
    if elapsed_hours < 0:
        raise ValueError(f"now ({now.isoformat()}) is before started_at ({started_at.isoformat()})")
    timed_out = elapsed_hours >= max_duration_hours
    timeout_note = f"the maximum duration of {max_duration_hours:g} h has passed ({elapsed_hours:.1f} h)"

    if analysis.srm_p_value < srm_threshold:
        return Decision(
            "reject",
            f"sample ratio mismatch: {analysis.n_control} champion and {analysis.n_treatment} challenger posts "
            f"do not match the configured challenger share {analysis.challenger_share:g} "
            f"(chi-square p = {analysis.srm_p_value:.3g} < {srm_threshold:g}); the arms are not comparable",
        )
    if analysis.insufficient_data_reason is not None:
        if timed_out:
            return Decision("reject", f"{timeout_note} without enough data: {analysis.insufficient_data_reason}")
        return Decision("continue", f"not enough data yet: {analysis.insufficient_data_reason}")

    lift, ci_lower, ci_upper = analysis.lift, analysis.ci_lower, analysis.ci_upper
    if lift is None or ci_lower is None or ci_upper is None:
        raise ValueError("an Analysis without insufficient_data_reason must have its lift and interval set")
    level = f"{1 - analysis.alpha:.0%}"
    interval = f"[{ci_lower:+.2%}, {ci_upper:+.2%}]"
    estimate = f"lift {lift:+.2%}, always-valid {level} interval {interval}"
    if ci_lower > minimum_lift:
        return Decision(
            "promote",
            f"{estimate} lies above the minimum lift {minimum_lift:+.2%}; SRM p = {analysis.srm_p_value:.3g}",
        )
    if ci_upper < 0:
        return Decision("reject", f"{estimate} lies below zero: the challenger is worse")
    if timed_out:
        return Decision("reject", f"{timeout_note} without promotion: {estimate}")
    return Decision(
        "continue",
        f"{estimate} is inconclusive; about {analysis.remaining_sample_total} more posts (both arms) "
        f"to detect a {analysis.minimum_detectable_effect:+.0%} lift with {analysis.power:.0%} power",
    )


def _analysis_without_effect(settings: _AnalysisSettings, reason: str) -> Analysis:
    """The :class:`Analysis` of data that does not suffice for an effect, saying why."""
    return Analysis(
        **settings,
        rate_control_variance=None,
        rate_treatment_variance=None,
        lift=None,
        lift_standard_error=None,
        degrees_of_freedom=None,
        p_value=None,
        fixed_ci_lower=None,
        fixed_ci_upper=None,
        ci_lower=None,
        ci_upper=None,
        chance_to_beat=None,
        required_sample_total=None,
        remaining_sample_total=None,
        insufficient_data_reason=reason,
    )


def insufficient_data_reason(control: ArmStats, treatment: ArmStats) -> str | None:
    for arm, stats_ in (("champion", control), ("challenger", treatment)):
        if stats_.n < 2:
            return f"the {arm} arm has {stats_.n} posts; at least 2 per arm are needed"
        if stats_.sum_y == 0:
            return f"the {arm} arm's {stats_.n} posts have no impressions yet"
    if control.sum_x == 0:
        return "the champion arm has no engagements yet, so a relative lift is undefined"
    if treatment.sum_x == 0:
        # The delta method gives a zero standard error at a zero rate: no interval to trust yet.
        return "the challenger arm has no engagements yet, so its rate has no usable variance"
    return None


def _welch_degrees_of_freedom(
    variance_control: float, n_control: int, variance_treatment: float, n_treatment: int
) -> float:
    """Welch-Satterthwaite degrees of freedom from the variances of the two arms' estimates."""
    return (variance_control + variance_treatment) ** 2 / (
        variance_control**2 / (n_control - 1) + variance_treatment**2 / (n_treatment - 1)
    )
