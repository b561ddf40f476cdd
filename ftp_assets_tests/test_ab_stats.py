"""The experiment statistics against published numbers, independent implementations and simulation."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import special
from scipy import stats as scipy_stats
from statsmodels.stats._delta_method import NonlinearDeltaCov
from statsmodels.stats.proportion import proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from ftp_assets.domain.ab_stats import (
    Analysis,
    ArmStats,
    always_valid_multiplier,
    analyze,
    decide,
    required_sample_total,
    sample_ratio_mismatch_p_value,
)
from ftp_demo.ab_simulation import (
    AudienceModel,
    ExperimentDesign,
    planned_total_posts,
    simulate_experiments,
)

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def simulated_posts(seed: int, n: int, lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return AudienceModel().draw_posts(rng, lift, (n,))


def linearized(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-post influence values of Σx/Σy: their sample variance is the rate's unit variance."""
    return (x - x.sum() / y.sum() * y) / y.mean()


# GrowthBook's published test of the relative-lift Welch t-test (gbstats,
# tests/frequentist/test_tests.py): a mean metric is the ratio case with y ≡ 1.
def test_relative_lift_welch_test_matches_growthbook_reference():
    control = ArmStats.for_mean_metric(n=3407, mean=0.41, sd=3.9)
    treatment = ArmStats.for_mean_metric(n=3461, mean=0.70, sd=6.2)
    analysis = analyze(control, treatment, alpha=0.05, challenger_share=0.5)
    assert analysis.lift == pytest.approx(0.70732, abs=5e-6)
    assert analysis.lift_standard_error == pytest.approx(0.37879, abs=5e-6)
    assert analysis.fixed_ci_lower == pytest.approx(-0.03526, abs=5e-6)
    assert analysis.fixed_ci_upper == pytest.approx(1.44989, abs=5e-6)
    assert analysis.p_value == pytest.approx(0.06191, abs=5e-6)


def test_rate_variance_equals_statsmodels_robust_ratio_regression():
    # Σx/Σy is the WLS slope of x on y through the origin with weights 1/y, and its HC1
    # sandwich variance is the delta-method variance: an independent route to the same number.
    x, y = simulated_posts(seed=1, n=3000)
    keep = y > 0
    x, y = x[keep], y[keep]
    fit = sm.WLS(x, y, weights=1 / y).fit(cov_type="HC1")
    arm = ArmStats.from_arrays(x, y)
    analysis = analyze(arm, arm)
    assert analysis.rate_control == pytest.approx(fit.params[0], rel=1e-12)
    assert analysis.rate_control_variance == pytest.approx(fit.bse[0] ** 2, rel=1e-9)


def test_lift_standard_error_interval_and_p_value_match_statsmodels_delta_method():
    x_control, y_control = simulated_posts(seed=2, n=4000)
    x_treatment, y_treatment = simulated_posts(seed=3, n=500, lift=0.1)
    analysis = analyze(ArmStats.from_arrays(x_control, y_control), ArmStats.from_arrays(x_treatment, y_treatment))

    # statsmodels' numerical delta method on the four arm means and their estimated covariance.
    def lift_of_means(means):
        return (means[2] / means[3]) / (means[0] / means[1]) - 1

    covariance = np.zeros((4, 4))
    covariance[:2, :2] = np.cov(x_control, y_control) / x_control.size
    covariance[2:, 2:] = np.cov(x_treatment, y_treatment) / x_treatment.size
    means = np.array([x_control.mean(), y_control.mean(), x_treatment.mean(), y_treatment.mean()])
    delta = NonlinearDeltaCov(lift_of_means, means, covariance)
    # Welch degrees of freedom by statsmodels on the per-post linearized values.
    _, _, welch_df = CompareMeans(
        DescrStatsW(linearized(x_treatment, y_treatment)), DescrStatsW(linearized(x_control, y_control))
    ).ttest_ind(usevar="unequal")
    lower, upper = np.squeeze(delta.conf_int(alpha=0.05, use_t=True, df=welch_df))
    standard_error = float(np.squeeze(delta.se_vectorized()))

    assert analysis.lift == pytest.approx(delta.predicted(), rel=1e-12)
    assert analysis.lift_standard_error == pytest.approx(standard_error, rel=1e-6)
    assert analysis.degrees_of_freedom == pytest.approx(welch_df, rel=1e-9)
    assert (analysis.fixed_ci_lower, analysis.fixed_ci_upper) == pytest.approx((lower, upper), rel=1e-6)
    expected_p = 2 * scipy_stats.t.sf(abs(analysis.lift) / standard_error, welch_df)
    assert analysis.p_value == pytest.approx(expected_p, rel=1e-6)


def test_mean_metric_degrees_of_freedom_match_statsmodels_welch_test():
    rng = np.random.default_rng(4)
    control, treatment = rng.exponential(1.0, 300), rng.exponential(1.4, 80)
    ones_control, ones_treatment = np.ones_like(control), np.ones_like(treatment)
    analysis = analyze(ArmStats.from_arrays(control, ones_control), ArmStats.from_arrays(treatment, ones_treatment))
    _, _, welch_df = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).ttest_ind(usevar="unequal")
    assert analysis.degrees_of_freedom == pytest.approx(welch_df, rel=1e-9)


def test_delta_method_standard_errors_match_a_large_simulation():
    replications, posts_per_arm = 4000, 600
    rng = np.random.default_rng(5)
    audience = AudienceModel()
    x_control, y_control = audience.draw_posts(rng, 0.0, (replications, posts_per_arm))
    x_treatment, y_treatment = audience.draw_posts(rng, 0.2, (replications, posts_per_arm))
    rate_control = x_control.sum(axis=1) / y_control.sum(axis=1)
    lift = (x_treatment.sum(axis=1) / y_treatment.sum(axis=1)) / rate_control - 1
    analyses = [
        analyze(
            ArmStats.from_arrays(x_control[r], y_control[r]),
            ArmStats.from_arrays(x_treatment[r], y_treatment[r]),
            challenger_share=0.5,
        )
        for r in range(replications)
    ]
    # The average estimated variance against the variance across replications (~2% noise).
    rate_variance = np.mean([a.rate_control_variance for a in analyses])
    lift_variance = np.mean([a.lift_standard_error**2 for a in analyses])
    assert math.sqrt(rate_variance) == pytest.approx(rate_control.std(ddof=1), rel=0.1)
    assert math.sqrt(lift_variance) == pytest.approx(lift.std(ddof=1), rel=0.1)


@given(
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=0, max_value=10**7),
    st.floats(min_value=0.01, max_value=0.99),
)
def test_srm_p_value_equals_the_one_proportion_z_test(n_control, n_treatment, share):
    # With two cells the chi-square statistic is the square of statsmodels' z statistic.
    assume(n_control + n_treatment > 0)
    observed = sample_ratio_mismatch_p_value(n_control, n_treatment, share)
    _, z_test_p = proportions_ztest(n_treatment, n_control + n_treatment, value=share, prop_var=share)
    assert observed == pytest.approx(z_test_p, rel=1e-6, abs=1e-300)
    assert observed == pytest.approx(sample_ratio_mismatch_p_value(n_treatment, n_control, 1 - share), rel=1e-9)


def test_sample_ratio_mismatch_blocks_a_winning_challenger():
    control = ArmStats.from_arrays(*simulated_posts(seed=6, n=5500))
    treatment = ArmStats.from_arrays(*simulated_posts(seed=7, n=4500, lift=0.5))
    analysis = analyze(control, treatment, challenger_share=0.5)
    assert analysis.ci_lower > 0  # the lift alone would promote
    assert analysis.srm_p_value < 1e-20
    decision = decide(analysis, started_at=START, now=START + timedelta(hours=24))
    assert decision.decision == "reject"
    assert "sample ratio mismatch" in decision.reason


@st.composite
def arms(draw, min_posts=10, max_posts=60):
    """Sufficient statistics of a few posts: impressions up to 5000, engagements up to those."""
    size = draw(st.integers(min_value=min_posts, max_value=max_posts))
    impressions = draw(st.lists(st.integers(min_value=0, max_value=5000), min_size=size, max_size=size))
    rates = draw(st.lists(st.floats(min_value=0, max_value=1), min_size=size, max_size=size))
    engagements = [math.floor(y * rate) for y, rate in zip(impressions, rates, strict=True)]
    return ArmStats.from_arrays(engagements, impressions)


settings_strategy = st.fixed_dictionaries(
    {
        "alpha": st.sampled_from([0.01, 0.05, 0.1]),
        "challenger_share": st.floats(min_value=0.01, max_value=0.99),
        "sequential_tuning": st.floats(min_value=10, max_value=1e6),
    }
)


@given(arms(), arms(), settings_strategy)
def test_intervals_contain_the_estimate_and_the_always_valid_one_contains_the_fixed_one(control, treatment, settings):
    analysis = analyze(control, treatment, **settings)
    assume(analysis.insufficient_data_reason is None)
    assert analysis.fixed_ci_lower <= analysis.lift <= analysis.fixed_ci_upper
    assert analysis.ci_lower <= analysis.lift <= analysis.ci_upper
    # Holds whenever each arm has >= 10 posts: the Welch t quantile is then below the smallest
    # always-valid multiplier (about 3.0 at alpha 0.05, 3.6 at 0.01).
    assert analysis.ci_lower <= analysis.fixed_ci_lower
    assert analysis.ci_upper >= analysis.fixed_ci_upper
    assert 0 <= analysis.p_value <= 1
    assert (analysis.chance_to_beat > 0.5) == (analysis.lift > 0)


@given(arms(), arms())
def test_swapping_arms_inverts_the_rate_ratio(control, treatment):
    forward = analyze(control, treatment)
    backward = analyze(treatment, control)
    assume(forward.insufficient_data_reason is None and backward.insufficient_data_reason is None)
    assert math.log1p(backward.lift) == pytest.approx(-math.log1p(forward.lift), rel=1e-9, abs=1e-12)
    assert backward.degrees_of_freedom == pytest.approx(forward.degrees_of_freedom, rel=1e-9)
    if forward.lift > 0:
        assert backward.lift < 0


@pytest.mark.parametrize(
    ("control", "treatment", "reason_fragment"),
    [
        (ArmStats.from_arrays([3], [100]), ArmStats.from_arrays([3, 4], [100, 90]), "at least 2 per arm"),
        (ArmStats.from_arrays([0, 0], [0, 0]), ArmStats.from_arrays([3, 4], [100, 90]), "no impressions"),
        (ArmStats.from_arrays([0, 0], [50, 70]), ArmStats.from_arrays([3, 4], [100, 90]), "no engagements"),
        (ArmStats.from_arrays([3, 4], [100, 90]), ArmStats.from_arrays([0, 0], [50, 70]), "no engagements"),
        (ArmStats.from_arrays([5, 10], [100, 200]), ArmStats.from_arrays([6, 3], [100, 50]), "zero variance"),
    ],
)
def test_degenerate_data_is_reported_and_the_decision_continues(control, treatment, reason_fragment):
    analysis = analyze(control, treatment, challenger_share=0.5)
    assert reason_fragment in analysis.insufficient_data_reason
    assert analysis.lift is None and analysis.ci_lower is None and analysis.remaining_sample_total is None
    during = decide(analysis, started_at=START, now=START + timedelta(hours=1))
    assert during.decision == "continue" and reason_fragment in during.reason
    after = decide(analysis, started_at=START, now=START + timedelta(hours=168))
    assert after.decision == "reject" and reason_fragment in after.reason


@pytest.mark.parametrize(
    "fields",
    [
        dict(n=-1, sum_x=0, sum_y=0, sum_x2=0, sum_y2=0, sum_xy=0),
        dict(n=2.5, sum_x=1, sum_y=1, sum_x2=1, sum_y2=1, sum_xy=1),
        dict(n=0, sum_x=1, sum_y=0, sum_x2=0, sum_y2=0, sum_xy=0),
        dict(n=3, sum_x=30, sum_y=300, sum_x2=10, sum_y2=30000, sum_xy=3000),  # Σx² < (Σx)²/n
        dict(n=3, sum_x=3, sum_y=300, sum_x2=5, sum_y2=40000, sum_xy=1000),  # |cov| > sd·sd
        dict(n=3, sum_x=3, sum_y=-3, sum_x2=5, sum_y2=5, sum_xy=1),
        dict(n=3, sum_x=math.nan, sum_y=3, sum_x2=5, sum_y2=5, sum_xy=1),
    ],
)
def test_impossible_sufficient_statistics_are_rejected(fields):
    with pytest.raises(ValueError):
        ArmStats(**fields)


def test_sufficient_statistics_from_a_database_are_converted():
    # PostgreSQL's SUM over bigint arrives as Decimal.
    arm = ArmStats(
        n=Decimal(3), sum_x=Decimal(6), sum_y=Decimal(60), sum_x2=Decimal(14), sum_y2=Decimal(1400), sum_xy=Decimal(140)
    )
    assert arm == ArmStats.from_arrays([1, 2, 3], [10, 20, 30])
    assert isinstance(arm.n, int) and isinstance(arm.sum_x, float)


@pytest.mark.parametrize(
    "settings",
    [
        dict(alpha=0),
        dict(alpha=1),
        dict(challenger_share=0),
        dict(challenger_share=1),
        dict(minimum_detectable_effect=0),
        dict(power=0.4),
        dict(power=1),
        dict(sequential_tuning=0),
    ],
)
def test_invalid_settings_are_rejected(settings):
    arm = ArmStats.from_arrays([1, 2, 3], [10, 20, 30])
    with pytest.raises(ValueError):
        analyze(arm, arm, **settings)


@given(
    st.floats(min_value=0.05, max_value=20),
    st.floats(min_value=0.02, max_value=1.0),
    st.floats(min_value=0.01, max_value=0.99),
    st.floats(min_value=0.5, max_value=0.99),
)
def test_required_sample_is_the_smallest_that_reaches_the_power(relative_variance, effect, share, power):
    plan = dict(minimum_detectable_effect=effect, challenger_share=share, alpha=0.05, sequential_tuning=5000.0)
    n_total = required_sample_total(relative_variance, power=power, **plan)

    def promotion_probability(n):
        # P(lower always-valid bound > 0) when the true lift is the effect, normal approximation.
        standard_error = (1 + effect) * math.sqrt(relative_variance / (n * share * (1 - share)))
        return special.ndtr(effect / standard_error - always_valid_multiplier(n, 0.05, 5000.0))

    assert promotion_probability(n_total) >= power - 1e-9
    if n_total > 4:
        assert promotion_probability(n_total - 1) < power


def test_remaining_sample_is_what_the_plan_needs_beyond_the_posts_so_far():
    control = ArmStats.from_arrays(*simulated_posts(seed=8, n=900))
    treatment = ArmStats.from_arrays(*simulated_posts(seed=9, n=100))
    analysis = analyze(control, treatment, minimum_detectable_effect=0.2)
    assert analysis.required_sample_total > 1000
    assert analysis.remaining_sample_total == analysis.required_sample_total - 1000
    more_power = analyze(control, treatment, minimum_detectable_effect=0.2, power=0.95)
    smaller_effect = analyze(control, treatment, minimum_detectable_effect=0.1)
    assert more_power.required_sample_total > analysis.required_sample_total
    assert smaller_effect.required_sample_total > 3 * analysis.required_sample_total


@pytest.fixture(scope="module")
def running_analysis() -> Analysis:
    control = ArmStats.from_arrays(*simulated_posts(seed=10, n=2000))
    treatment = ArmStats.from_arrays(*simulated_posts(seed=11, n=220))
    return analyze(control, treatment)


def with_interval(analysis: Analysis, lower: float, upper: float, srm_p_value: float = 0.5) -> Analysis:
    return replace(analysis, ci_lower=lower, ci_upper=upper, srm_p_value=srm_p_value)


@pytest.mark.parametrize(
    ("lower", "upper", "hours", "minimum_lift", "expected"),
    [
        (0.01, 0.30, 10, 0.0, "promote"),
        (0.01, 0.30, 10, 0.02, "continue"),  # above zero but not above the minimum lift
        (0.03, 0.30, 10, 0.02, "promote"),
        (-0.30, -0.01, 10, 0.0, "reject"),
        (-0.10, 0.10, 10, 0.0, "continue"),
        (-0.10, 0.10, 168, 0.0, "reject"),  # the maximum duration has passed
        (0.01, 0.30, 168, 0.0, "promote"),  # a win at the deadline still counts
    ],
)
def test_decision_rule(running_analysis, lower, upper, hours, minimum_lift, expected):
    decision = decide(
        with_interval(running_analysis, lower, upper),
        minimum_lift=minimum_lift,
        started_at=START,
        now=START + timedelta(hours=hours),
    )
    assert decision.decision == expected
    assert decision.reason


@given(
    st.floats(min_value=-1, max_value=1),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=0.000999),
    st.floats(min_value=0, max_value=400),
)
def test_a_sample_ratio_mismatch_is_never_promoted(running_analysis, lower, width, srm_p_value, hours):
    analysis = with_interval(running_analysis, lower, lower + width, srm_p_value)
    decision = decide(analysis, started_at=START, now=START + timedelta(hours=hours))
    assert decision.decision == "reject"
    assert "sample ratio mismatch" in decision.reason


@given(
    st.floats(min_value=-1, max_value=1),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=0.2),
)
def test_promotion_needs_the_whole_always_valid_interval_above_the_minimum_lift(running_analysis, lower, width, bar):
    analysis = with_interval(running_analysis, lower, lower + width)
    timing = dict(started_at=START, now=START + timedelta(hours=5))
    decision = decide(analysis, minimum_lift=bar, **timing)
    assert (decision.decision == "promote") == (lower > bar)
    # The fixed-horizon interval never enters the decision.
    assert decide(replace(analysis, fixed_ci_lower=1.0), minimum_lift=bar, **timing) == decision


@pytest.mark.parametrize(
    "arguments",
    [
        dict(minimum_lift=-0.01, started_at=START, now=START),
        dict(srm_threshold=0, started_at=START, now=START),
        dict(max_duration_hours=0, started_at=START, now=START),
        dict(started_at=START, now=START - timedelta(seconds=1)),
    ],
)
def test_invalid_decision_arguments_are_rejected(running_analysis, arguments):
    with pytest.raises(ValueError):
        decide(running_analysis, **arguments)


# The reason for the design: an A/A experiment evaluated at every look. The sequential rule keeps
# false promotions at or below alpha; the same rule on the fixed-horizon interval does not.
# With heavy-tailed posts at a 10% share, the lift statistic is skewed so that fixed intervals err
# mostly toward rejection; the peeking inflation of promotions shows clearly at 20 looks.
def test_repeated_looks_at_an_aa_experiment_promote_at_most_alpha_only_with_the_sequential_rule():
    rng = np.random.default_rng(20250106)
    audience, design = AudienceModel(), ExperimentDesign()
    total_posts = planned_total_posts(rng, audience, design)
    result = simulate_experiments(
        rng, audience, design, true_lift=0.0, experiments=1000, looks=20, total_posts=total_posts
    )
    assert result.sequential.promotion_rate <= design.alpha
    assert result.naive.promotion_rate > design.alpha


def test_the_planned_sample_promotes_a_true_minimum_detectable_lift_with_the_planned_power():
    rng = np.random.default_rng(20250107)
    audience, design = AudienceModel(), ExperimentDesign(minimum_detectable_effect=0.2, power=0.8)
    total_posts = planned_total_posts(rng, audience, design)
    result = simulate_experiments(
        rng, audience, design, true_lift=0.2, experiments=1000, looks=10, total_posts=total_posts
    )
    assert result.sequential.promotion_rate >= design.power
