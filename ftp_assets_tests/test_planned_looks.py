"""The planned-looks analysis against ab_stats, group_sequential, sequential_srm, statsmodels and hand sums."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import special
from scipy import stats as scipy_stats

from ftp_assets.domain.ab_stats import ArmStats, analyze, decide
from ftp_assets.domain.experiment_plan import ArmSums, Covariates, ExperimentPlan, LookData, PhaseLook
from ftp_assets.domain.group_sequential import SpendingFunction, efficacy_boundaries, final_boundary
from ftp_assets.domain.planned_looks import analyze_looks, information_of, planned_information
from ftp_assets.domain.sequential_srm import sequential_srm
from ftp_demo.ab_simulation import AudienceModel

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
OBRIEN_FLEMING = SpendingFunction("obrien_fleming")
COVARIATES = Covariates(
    persona_rates={"a": 0.04, "b": 0.06},
    weekday_rates=(0.05,) * 7,
    hour_rates=(0.05,) * 24,
    overall_rate=0.05,
    posts=1234,
    since=START - timedelta(days=14),
    until=START,
)


def posts(seed: int, n: int, lift: float = 0.0, rate: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    return AudienceModel(engagement_rate=rate).draw_posts(np.random.default_rng(seed), lift, (n,))


def arm(seed: int, n: int, lift: float = 0.0, rate: float = 0.05) -> ArmSums:
    return ArmSums.from_arrays(*posts(seed, n, lift, rate))


def make_plan(**changes) -> ExperimentPlan:
    values = dict(
        rule="group_sequential",
        alpha=0.025,
        maximum_information=500.0,
        maximum_information_basis="test",
        started_at=START,
        initial_share=0.1,
        ramped_share=0.1,  # no ramp unless a test asks for one
    )
    values.update(changes)
    return ExperimentPlan(**values)


def at(hours: float, *phases: PhaseLook) -> LookData:
    return LookData(START + timedelta(hours=hours), tuple(phases))


class Posts:
    """One arm pair's per-post data; ``look`` takes the first posts of each, as cumulative sums."""

    def __init__(self, seed: int, n_control: int, n_treatment: int, lift: float = 0.0) -> None:
        self.control = posts(seed, n_control)
        self.treatment = posts(seed + 1000, n_treatment, lift)

    def phase(self, n_control: int, n_treatment: int, share: float = 0.1) -> PhaseLook:
        control = ArmSums.from_arrays(self.control[0][:n_control], self.control[1][:n_control])
        treatment = ArmSums.from_arrays(self.treatment[0][:n_treatment], self.treatment[1][:n_treatment])
        return PhaseLook(share, control, treatment)


# --- the always-valid rule is ab_stats' rule ------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "lift", "n_control", "n_treatment", "hours", "expected"),
    [
        (1, 0.6, 2700, 300, 48, "promote"),
        (2, -0.5, 2700, 300, 48, "reject"),
        (3, 0.0, 900, 100, 48, "continue"),
        (4, 0.0, 900, 100, 170, "reject"),  # past the deadline
    ],
)
def test_always_valid_rule_with_one_phase_reproduces_ab_stats(seed, lift, n_control, n_treatment, hours, expected):
    plan = make_plan(rule="always_valid", alpha=0.05, maximum_information=None, sequential_tuning=3000.0)
    control, treatment = arm(seed, n_control), arm(seed + 100, n_treatment, lift)
    result = analyze_looks(plan, [at(hours, PhaseLook(0.1, control, treatment))])
    reference = analyze(control.stats(), treatment.stats(), alpha=0.05, challenger_share=0.1, sequential_tuning=3000.0)
    assert result.lift == pytest.approx(reference.lift, abs=1e-12, rel=1e-12)
    assert result.standard_error == pytest.approx(reference.lift_standard_error, abs=1e-12, rel=1e-12)
    assert result.ci_lower == pytest.approx(reference.ci_lower, abs=1e-12, rel=1e-12)
    assert result.ci_upper == pytest.approx(reference.ci_upper, abs=1e-12, rel=1e-12)
    assert result.statistic == pytest.approx(reference.lift / reference.lift_standard_error, rel=1e-12)
    assert result.variance_reduction == pytest.approx(0.0, abs=1e-12)
    assert result.boundary is None and result.information_fraction is None
    assert result.srm_p_value > plan.srm_alpha and reference.srm_p_value > 0.001
    ab_decision = decide(reference, started_at=START, now=result.evaluated_at, max_duration_hours=168)
    assert result.decision == ab_decision.decision == expected
    assert result.ramp_to is None


# --- group sequential -------------------------------------------------------------------------------


def obrien_fleming_spent(alpha: float, t: float) -> float:
    """sfLDOF written out with scipy.stats.norm."""
    return 2 - 2 * scipy_stats.norm.cdf(scipy_stats.norm.ppf(1 - alpha / 2) / math.sqrt(t))


DATA = Posts(seed=10, n_control=5000, n_treatment=600)
COUNTS = [(450, 50), (900, 100), (1350, 150), (1800, 200)]
PLAN = make_plan(maximum_information=0.09 * 4000)  # looks at fractions 0.125, 0.25, 0.375, 0.5


def looks_at(counts, first_hour: float = 10.0, step: float = 10.0) -> list[LookData]:
    return [at(first_hour + step * k, DATA.phase(c, t)) for k, (c, t) in enumerate(counts)]


def test_each_counted_look_has_the_efficacy_boundary_at_its_information_fraction():
    looks = looks_at(COUNTS)
    result = analyze_looks(PLAN, looks)
    fractions = [(c + t) * 0.1 * 0.9 / PLAN.maximum_information for c, t in COUNTS]
    expected = efficacy_boundaries(fractions, PLAN.alpha, OBRIEN_FLEMING)
    assert [row.look_number for row in result.boundaries] == [1, 2, 3, 4]
    assert [row.information_fraction for row in result.boundaries] == pytest.approx(fractions, rel=1e-12)
    assert [row.boundary for row in result.boundaries] == pytest.approx(expected, rel=1e-9)
    assert [row.alpha_spent for row in result.boundaries] == pytest.approx(
        [obrien_fleming_spent(PLAN.alpha, t) for t in fractions], rel=1e-9
    )
    assert result.information == pytest.approx(0.09 * 2000, rel=1e-12)
    assert result.information == pytest.approx(information_of(looks[-1]), rel=1e-15)
    assert result.boundary == result.boundaries[-1].boundary
    assert result.final is False
    reference = analyze(looks[-1].phases[0].control.stats(), looks[-1].phases[0].treatment.stats())
    assert result.statistic == pytest.approx(reference.lift / reference.lift_standard_error, rel=1e-12)
    assert result.decision == "continue"
    # The same boundaries whether the history is analyzed at once or look by look.
    for k in range(1, len(looks) + 1):
        assert analyze_looks(PLAN, looks[:k]).boundary == pytest.approx(expected[k - 1], rel=1e-12)


def test_the_look_at_the_deadline_spends_all_that_is_left():
    looks = [*looks_at(COUNTS[:3]), at(168, DATA.phase(*COUNTS[3]))]
    result = analyze_looks(PLAN, looks)
    fractions = [(c + t) * 0.09 / PLAN.maximum_information for c, t in COUNTS]
    assert result.final is True
    assert result.alpha_spent == PLAN.alpha
    assert result.information_fraction == pytest.approx(0.5)
    assert result.boundary == pytest.approx(final_boundary(fractions[:3], fractions[3], PLAN.alpha), rel=1e-9)
    assert result.boundary < efficacy_boundaries(fractions, PLAN.alpha)[-1]
    assert [row.boundary for row in result.boundaries[:3]] == pytest.approx(
        efficacy_boundaries(fractions[:3], PLAN.alpha), rel=1e-9
    )
    assert result.statistic < result.boundary
    assert result.decision == "reject"
    assert "maximum duration" in result.reason


def test_at_the_deadline_a_statistic_between_the_final_and_the_regular_boundary_promotes():
    strong = Posts(seed=21, n_control=1800, n_treatment=200, lift=0.8)
    looks = [at(10, strong.phase(900, 100)), at(168, strong.phase(1800, 200))]
    fractions = [1000 * 0.09 / PLAN.maximum_information, 2000 * 0.09 / PLAN.maximum_information]
    regular = efficacy_boundaries(fractions, PLAN.alpha)[-1]
    last = final_boundary(fractions[:1], fractions[1], PLAN.alpha)
    base = analyze_looks(PLAN, looks)
    # minimum_lift puts the statistic halfway between the two boundaries.
    minimum_lift = base.lift - (regular + last) / 2 * base.standard_error
    assert minimum_lift > 0
    result = analyze_looks(replace(PLAN, minimum_lift=minimum_lift), looks)
    assert result.boundary == pytest.approx(last, rel=1e-9)
    assert last < result.statistic < regular
    assert result.decision == "promote" and result.final is True


def test_a_repeated_look_without_new_posts_spends_nothing_until_the_deadline():
    looks = looks_at(COUNTS[:3])
    without = analyze_looks(PLAN, looks)
    repeated = [*looks, replace(looks[-1], evaluated_at=looks[-1].evaluated_at + timedelta(hours=5))]
    with_repeat = analyze_looks(PLAN, repeated)
    assert with_repeat.boundaries == without.boundaries
    assert with_repeat.boundary == without.boundary
    assert with_repeat.alpha_spent == without.alpha_spent
    assert with_repeat.statistic == without.statistic
    assert with_repeat.look_number == 4 and with_repeat.final is False
    assert with_repeat.decision == without.decision

    at_deadline = [*looks, replace(looks[-1], evaluated_at=START + timedelta(hours=168))]
    final = analyze_looks(PLAN, at_deadline)
    fractions = [(c + t) * 0.09 / PLAN.maximum_information for c, t in COUNTS[:3]]
    assert final.final is True
    assert [row.look_number for row in final.boundaries] == [1, 2, 3]
    assert final.boundary == pytest.approx(final_boundary(fractions[:2], fractions[2], PLAN.alpha), rel=1e-9)
    assert final.alpha_spent == PLAN.alpha
    assert final.boundary < without.boundary
    assert final.decision == ("promote" if final.statistic >= final.boundary else "reject")


def test_a_look_with_fewer_than_two_posts_in_an_arm_spends_nothing():
    early = at(2, DATA.phase(30, 1))
    alone = analyze_looks(PLAN, [early])
    assert alone.decision == "continue" and alone.boundaries == () and alone.boundary is None
    assert "at least 2 per arm" in alone.insufficient_data_reason
    assert alone.information == 0  # a phase without an estimate adds no information

    result = analyze_looks(PLAN, [early, *looks_at(COUNTS[:2])])
    fractions = [(c + t) * 0.09 / PLAN.maximum_information for c, t in COUNTS[:2]]
    assert [row.look_number for row in result.boundaries] == [2, 3]
    assert [row.boundary for row in result.boundaries] == pytest.approx(
        efficacy_boundaries(fractions, PLAN.alpha), rel=1e-9
    )
    assert analyze_looks(PLAN, [early]).final is False
    late = analyze_looks(PLAN, [at(168, DATA.phase(30, 1))])
    assert late.decision == "reject" and "without enough data" in late.reason


def test_promotion_exactly_when_the_statistic_reaches_the_boundary():
    strong = Posts(seed=20, n_control=1800, n_treatment=200, lift=0.8)
    looks = [at(10, strong.phase(900, 100)), at(20, strong.phase(1800, 200))]
    base = analyze_looks(PLAN, looks)
    # minimum_lift moves the statistic and nothing else: put it just either side of the boundary.
    margin = base.lift - base.boundary * base.standard_error
    assert margin > 0
    below = analyze_looks(replace(PLAN, minimum_lift=margin * (1 + 1e-6)), looks)
    above = analyze_looks(replace(PLAN, minimum_lift=margin * (1 - 1e-6)), looks)
    assert below.boundary == above.boundary == base.boundary
    assert below.statistic < below.boundary <= above.statistic
    assert above.statistic == pytest.approx((base.lift - margin * (1 - 1e-6)) / base.standard_error, rel=1e-12)
    assert above.decision == "promote"
    assert below.decision == "continue"


def test_a_look_at_the_maximum_information_is_final_before_the_deadline():
    small = make_plan(maximum_information=0.09 * 1500)
    looks = looks_at(COUNTS)  # fractions 1/3, 2/3, 1, 4/3
    at_one = analyze_looks(small, looks[:3])
    assert at_one.information_fraction == pytest.approx(1.0)
    assert at_one.final is True and at_one.alpha_spent == small.alpha
    fractions = [(c + t) * 0.09 / small.maximum_information for c, t in COUNTS]
    assert at_one.boundary == pytest.approx(efficacy_boundaries(fractions[:3], small.alpha)[-1], rel=1e-9)
    assert at_one.boundary == pytest.approx(final_boundary(fractions[:2], fractions[2], small.alpha), rel=1e-9)
    assert at_one.statistic < at_one.boundary
    assert at_one.decision == "reject"
    assert "planned maximum information is reached" in at_one.reason

    under = analyze_looks(small, looks[:2])
    assert under.final is False and under.alpha_spent < small.alpha


# --- regression adjustment ------------------------------------------------------------------------


def mean_metric_data(seed: int, n_control: int, n_treatment: int, correlation: float, width: int = 2):
    """Outcomes x (y ≡ 1) and covariates w whose first column correlates with x."""
    rng = np.random.default_rng(seed)
    n = n_control + n_treatment
    w = rng.normal(0.05, 0.01, size=(n, width))
    signal = (w[:, 0] - 0.05) / 0.01
    x = 3 + correlation * signal + math.sqrt(1 - correlation**2) * rng.standard_normal(n)
    treated = np.r_[np.zeros(n_control), np.ones(n_treatment)]
    x = x + 0.2 * treated
    return x, w, treated


def mean_metric_phase(x, w, treated) -> PhaseLook:
    c, t = treated == 0, treated == 1
    return PhaseLook(
        0.1, ArmSums.from_arrays(x[c], np.ones(c.sum()), w[c]), ArmSums.from_arrays(x[t], np.ones(t.sum()), w[t])
    )


def test_adjusted_difference_of_a_mean_metric_is_the_ols_treatment_coefficient():
    x, w, treated = mean_metric_data(seed=30, n_control=1800, n_treatment=200, correlation=0.6, width=3)
    plan = make_plan(covariates=COVARIATES)
    result = analyze_looks(plan, [at(24, mean_metric_phase(x, w, treated))])
    phase = result.phases[0]
    fit = sm.OLS(x, np.column_stack([np.ones_like(x), treated, w])).fit()
    assert phase.rate_treatment - phase.rate_control == pytest.approx(fit.params[1], abs=1e-9)
    assert phase.lift == pytest.approx(phase.rate_treatment / phase.rate_control - 1, rel=1e-12)
    assert phase.unadjusted_lift == pytest.approx(x[treated == 1].mean() / x[treated == 0].mean() - 1, rel=1e-12)
    assert result.adjustment.startswith("regression-adjusted (CUPED)")
    assert "1234 posts" in result.adjustment


def test_a_constant_covariate_alongside_varying_ones_is_left_out_of_the_fit():
    x, w, treated = mean_metric_data(seed=31, n_control=1800, n_treatment=200, correlation=0.6, width=2)
    with_constant = np.column_stack([w, np.full(x.size, 0.0371)])  # e.g. one weekday all phase long
    result = analyze_looks(make_plan(covariates=COVARIATES), [at(24, mean_metric_phase(x, with_constant, treated))])
    fit = sm.OLS(x, np.column_stack([np.ones_like(x), treated, w])).fit()
    phase = result.phases[0]
    assert phase.rate_treatment - phase.rate_control == pytest.approx(fit.params[1], abs=1e-9)


def test_ratio_metric_adjustment_matches_a_per_post_fit_of_the_linearized_rate():
    rng = np.random.default_rng(32)
    arms = []
    for n, lift in ((1800, 0.0), (200, 0.1)):
        x, y = posts(int(rng.integers(1 << 30)), n, lift)
        w = np.column_stack([x / np.maximum(y, 1) + rng.normal(0, 0.02, n), rng.normal(0.05, 0.01, n)])
        arms.append((x.astype(float), y.astype(float), w))
    result = analyze_looks(
        make_plan(covariates=COVARIATES),
        [at(24, PhaseLook(0.1, ArmSums.from_arrays(*arms[0]), ArmSums.from_arrays(*arms[1])))],
    )
    # The definition, per post: m = (x − R·y)/ȳ per arm; θ by least squares on within-arm centred w.
    m = [(x - x.sum() / y.sum() * y) / y.mean() for x, y, _ in arms]
    centred = [w - w.mean(axis=0) for _, _, w in arms]
    theta = np.linalg.lstsq(np.vstack(centred), np.concatenate(m), rcond=None)[0]
    both_mean = np.vstack([w for _, _, w in arms]).mean(axis=0)
    rates, variances = [], []
    for (x, y, w), m_arm in zip(arms, m, strict=True):
        rates.append(x.sum() / y.sum() - theta @ (w.mean(axis=0) - both_mean))
        residual = m_arm - (w - w.mean(axis=0)) @ theta
        variances.append(residual.var(ddof=1) / x.size)
    phase = result.phases[0]
    assert (phase.rate_control, phase.rate_treatment) == pytest.approx(rates, rel=1e-9)
    lift = rates[1] / rates[0] - 1
    lift_variance = variances[1] / rates[0] ** 2 + variances[0] * rates[1] ** 2 / rates[0] ** 4
    assert phase.lift == pytest.approx(lift, rel=1e-9)
    assert phase.standard_error == pytest.approx(math.sqrt(lift_variance), rel=1e-7)
    assert result.variance_reduction > 0.3  # the post's own noisy rate explains much of m


def test_variance_reduction_is_about_the_squared_correlation():
    x, w, treated = mean_metric_data(seed=33, n_control=3600, n_treatment=400, correlation=0.8)
    result = analyze_looks(make_plan(covariates=COVARIATES), [at(24, mean_metric_phase(x, w, treated))])
    # The pooled within-arm correlation of the outcome with the covariates (multiple R² by OLS).
    within = [np.flatnonzero(treated == g) for g in (0, 1)]
    x_centred = np.concatenate([x[i] - x[i].mean() for i in within])
    w_centred = np.vstack([w[i] - w[i].mean(axis=0) for i in within])
    r_squared = sm.OLS(x_centred, w_centred).fit().rsquared
    assert r_squared == pytest.approx(0.64, abs=0.04)
    assert result.variance_reduction == pytest.approx(r_squared, abs=0.02)
    assert result.standard_error == pytest.approx(result.unadjusted_standard_error * math.sqrt(1 - r_squared), rel=0.03)
    assert "less variance from the covariates" in result.reason


def test_covariates_constant_within_arms_leave_the_lift_unadjusted_exact_values():
    x, _, treated = mean_metric_data(seed=34, n_control=1800, n_treatment=200, correlation=0.0)
    # Binary fractions: the within-arm scatter Σww − ΣwΣwᵀ/n is exactly zero.
    w = np.where(treated[:, None] == 1, [0.5, 0.25, 0.125], [0.25, 0.125, 0.0625])
    result = analyze_looks(make_plan(covariates=COVARIATES), [at(24, mean_metric_phase(x, w, treated))])
    phase = result.phases[0]
    assert phase.lift == phase.unadjusted_lift
    assert result.adjustment == "unadjusted: the covariates did not vary within the arms (or adjusted a rate to zero)"


def test_covariates_constant_within_arms_leave_the_lift_unadjusted_realistic_rates():
    x, _, treated = mean_metric_data(seed=34, n_control=1800, n_treatment=200, correlation=0.0)
    w = np.where(treated[:, None] == 1, [0.0408, 0.0497, 0.0571], [0.0371, 0.0452, 0.0519])
    result = analyze_looks(make_plan(covariates=COVARIATES), [at(24, mean_metric_phase(x, w, treated))])
    phase = result.phases[0]
    assert phase.lift == pytest.approx(phase.unadjusted_lift, rel=1e-9)
    assert result.adjustment == "unadjusted: the covariates did not vary within the arms (or adjusted a rate to zero)"


@pytest.mark.parametrize(("note", "expected"), [("", "the plan has no covariates"), ("too few posts", "too few posts")])
def test_a_plan_without_covariates_says_why_it_is_unadjusted(note, expected):
    result = analyze_looks(make_plan(covariates_note=note), looks_at(COUNTS[:1]))
    assert result.adjustment == f"unadjusted: {expected}"
    assert result.standard_error == result.unadjusted_standard_error


def test_a_plan_without_covariates_reports_the_unadjusted_lift_it_says_it_reports():
    x, w, treated = mean_metric_data(seed=30, n_control=1800, n_treatment=200, correlation=0.6, width=3)
    result = analyze_looks(make_plan(), [at(24, mean_metric_phase(x, w, treated))])
    assert result.adjustment == "unadjusted: the plan has no covariates"
    assert result.lift == pytest.approx(result.phases[0].unadjusted_lift, rel=1e-12)


# --- phases -----------------------------------------------------------------------------------------

RAMP_PLAN = make_plan(rule="always_valid", alpha=0.05, maximum_information=None, ramped_share=0.5)


def trend_phases(seed: int) -> tuple[PhaseLook, PhaseLook]:
    """An A/A experiment over a falling trend: high rates at share 0.1, then low rates at 0.5."""
    first = PhaseLook(0.1, arm(seed, 1800, rate=0.08), arm(seed + 1, 200, rate=0.08))
    second = PhaseLook(0.5, arm(seed + 2, 1000, rate=0.04), arm(seed + 3, 1000, rate=0.04))
    return first, second


def test_phases_are_combined_by_their_balance_never_pooled():
    first, second = trend_phases(seed=40)
    result = analyze_looks(RAMP_PLAN, [at(24, first), at(48, first, second)])
    per_phase = [analyze(p.control.stats(), p.treatment.stats(), challenger_share=p.share) for p in (first, second)]
    weights = np.array([2000 * 0.1 * 0.9, 2000 * 0.5 * 0.5])
    assert [p.information for p in result.phases] == pytest.approx(weights, rel=1e-12)
    assert result.information == pytest.approx(weights.sum(), rel=1e-12)
    weights = weights / weights.sum()
    assert [p.lift for p in result.phases] == pytest.approx([a.lift for a in per_phase], rel=1e-12)
    assert result.lift == pytest.approx(weights @ [a.lift for a in per_phase], rel=1e-12)
    assert result.standard_error == pytest.approx(
        math.sqrt(weights**2 @ [a.lift_standard_error**2 for a in per_phase]), rel=1e-12
    )
    pooled = analyze(
        ArmStats(*(a + b for a, b in zip(astuple(first.control), astuple(second.control), strict=True))),
        ArmStats(*(a + b for a, b in zip(astuple(first.treatment), astuple(second.treatment), strict=True))),
        challenger_share=0.5,
    )
    assert pooled.lift < -0.15  # Simpson: the challenger got more of the low-rate phase
    assert abs(result.lift) < 2.5 * result.standard_error
    assert result.n_control == 2800 and result.n_treatment == 1200
    assert result.ramp_to is None  # already ramped
    assert result.srm_p_value > RAMP_PLAN.srm_alpha


def astuple(sums: ArmSums) -> tuple[float, ...]:
    return (sums.n, sums.sum_x, sums.sum_y, sums.sum_x2, sums.sum_y2, sums.sum_xy)


def srm_p_value_by_hand(counts: list[tuple[int, int]], share: float, concentration: float) -> float:
    """Lindon & Malek's Beta-binomial Bayes factor for two arms, with scipy's betaln."""
    a, b = concentration * (1 - share), concentration * share
    p = 1.0
    for control, treatment in counts:
        log_bf = (
            special.betaln(a + control, b + treatment)
            - special.betaln(a, b)
            - control * math.log(1 - share)
            - treatment * math.log(share)
        )
        p = min(p, math.exp(min(0.0, -log_bf)))
    return p


def test_a_sample_ratio_mismatch_in_one_phase_rejects_naming_it():
    first = PhaseLook(0.1, arm(50, 1800), arm(51, 200))
    history = [(600, 400), (1300, 700)]
    looks = [at(24, first)] + [
        at(30 + k, first, PhaseLook(0.5, arm(52, c), arm(53, t))) for k, (c, t) in enumerate(history)
    ]
    result = analyze_looks(RAMP_PLAN, looks)
    assert result.decision == "reject"
    assert result.reason.startswith("sample ratio mismatch in phase 2")
    assert result.phases[0].srm_p_value > RAMP_PLAN.srm_alpha
    expected = sequential_srm([c for c, _ in history], [t for _, t in history], 0.5, RAMP_PLAN.srm_prior_concentration)
    assert result.phases[1].srm_p_value == pytest.approx(expected.p_value, rel=1e-9)
    assert result.phases[1].srm_p_value == pytest.approx(
        srm_p_value_by_hand(history, 0.5, RAMP_PLAN.srm_prior_concentration), rel=1e-6
    )
    assert result.srm_p_value == result.phases[1].srm_p_value < RAMP_PLAN.srm_alpha
    assert result.phases[0].srm_p_value == pytest.approx(
        srm_p_value_by_hand([(1800, 200)] * 3, 0.1, RAMP_PLAN.srm_prior_concentration), rel=1e-6
    )


# --- harm stop and ramp ---------------------------------------------------------------------------


def test_an_interval_below_zero_rejects_before_the_final_look():
    worse = Posts(seed=60, n_control=2700, n_treatment=300, lift=-0.5)
    looks = [at(10, worse.phase(1350, 150)), at(20, worse.phase(2700, 300))]
    plan = make_plan(maximum_information=0.09 * 20_000)
    result = analyze_looks(plan, looks)
    reference = analyze(
        looks[-1].phases[0].control.stats(),
        looks[-1].phases[0].treatment.stats(),
        alpha=plan.guardrail_alpha,
        sequential_tuning=plan.sequential_tuning,
    )
    assert result.final is False and result.information_fraction == pytest.approx(0.15)
    assert result.ci_upper == pytest.approx(reference.ci_upper, rel=1e-12)
    assert result.ci_upper < 0
    assert result.decision == "reject"
    assert "lies below zero" in result.reason


RAMPING = make_plan(ramped_share=0.5, ramp_min_challenger_posts=200, maximum_information=2000.0)
AA = Posts(seed=70, n_control=1800, n_treatment=200)


def test_the_first_phase_ramps_once_the_challenger_has_enough_posts_without_harm():
    result = analyze_looks(RAMPING, [at(20, AA.phase(1800, 200))])
    assert result.decision == "continue"
    assert result.ci_upper > 0
    assert result.ramp_to == RAMPING.ramped_share
    assert "rises to 50%" in result.reason


def test_no_ramp_below_the_minimum_after_the_ramp_or_without_one():
    assert analyze_looks(RAMPING, [at(20, AA.phase(1791, 199))]).ramp_to is None
    first = AA.phase(1800, 200)
    second = PhaseLook(0.5, arm(71, 100), arm(72, 100))
    two = analyze_looks(RAMPING, [at(20, first), at(30, first, second)])
    assert two.decision == "continue" and two.ramp_to is None
    assert analyze_looks(replace(RAMPING, ramped_share=0.1), [at(20, first)]).ramp_to is None
    assert analyze_looks(RAMPING, [at(168, first)]).ramp_to is None  # the deadline comes first
    # Right after the ramp only grace-window posts mature: the look repeats the ramp look's data
    # (its new phase is still empty) and must not ask for the ramp again.
    empty = PhaseLook(0.5, ArmSums(), ArmSums())
    repeat = analyze_looks(RAMPING, [at(20, first), at(21, first, empty)])
    assert repeat.look_number == 2 and repeat.ramp_to is None and "rises" not in repeat.reason


# --- input checks -----------------------------------------------------------------------------------


def test_inputs_that_cannot_come_from_an_experiment_are_refused():
    phase = DATA.phase(900, 100)
    ramp = make_plan(ramped_share=0.5)
    second = PhaseLook(0.5, arm(80, 50), arm(81, 50))
    with_covariates = PhaseLook(
        0.1, ArmSums.from_arrays([1, 2], [10, 10], [[0.1], [0.2]]), ArmSums.from_arrays([1, 2], [10, 10])
    )
    cases = [
        (PLAN, []),
        (PLAN, [at(20, phase), at(10, phase)]),
        (PLAN, [at(10, phase), at(10, phase)]),
        (PLAN, [at(10, PhaseLook(0.2, phase.control, phase.treatment))]),
        (ramp, [at(10, phase, PhaseLook(0.4, second.control, second.treatment))]),
        (ramp, [at(10, phase, second), at(20, phase)]),
        (PLAN, [at(10)]),
        (PLAN, [at(10, with_covariates)]),
    ]
    for plan, looks in cases:
        with pytest.raises(ValueError):
            analyze_looks(plan, looks)


# --- planned information ------------------------------------------------------------------------------


def test_planned_information_at_a_fixed_share():
    settings = dict(max_duration_hours=168, maturity_hours=24, ramp_min_challenger_posts=200, ramp_grace_minutes=60)
    information, basis = planned_information(100, initial_share=0.1, ramped_share=0.1, **settings)
    assert information == pytest.approx(100 * 144 * 0.09)
    assert "all at share 0.1" in basis
    # A ramp that cannot happen before the window closes counts as no ramp.
    late, _ = planned_information(1, initial_share=0.1, ramped_share=0.5, **settings)
    assert late == pytest.approx(1 * 144 * 0.09)


def test_planned_information_with_a_ramp():
    information, basis = planned_information(
        100,
        max_duration_hours=168,
        maturity_hours=24,
        initial_share=0.1,
        ramped_share=0.5,
        ramp_min_challenger_posts=200,
        ramp_grace_minutes=60,
    )
    # 200 challenger posts at 10 an hour take 20 h and mature 24 h later: the switch is at 44 h.
    # Posts of [0, 43) h run at 0.1, those of [45, 144) h at 0.5 (144 h: the last to mature by 168 h).
    assert information == pytest.approx(100 * 43 * 0.09 + 100 * 99 * 0.25)
    assert "until about 44 h" in basis and "then 0.5" in basis and "grace 2 h" in basis


def test_planned_information_refuses_impossible_settings():
    settings = dict(initial_share=0.1, ramped_share=0.5, ramp_min_challenger_posts=200, ramp_grace_minutes=60)
    with pytest.raises(ValueError):
        planned_information(0, max_duration_hours=168, maturity_hours=24, **settings)
    with pytest.raises(ValueError):
        planned_information(10, max_duration_hours=24, maturity_hours=24, **settings)


def test_counts_that_shrink_between_looks_are_scored_not_refused():
    # A matured post deleted (or corrected into impossible counts) after a look: the phase's
    # counts shrink; the experiment must still be able to decide.
    first, second = AA.phase(1800, 200), AA.phase(1790, 199)
    result = analyze_looks(RAMPING, [at(20, first), at(30, second)])
    assert result.decision in ("continue", "promote", "reject") and result.srm_p_value > RAMPING.srm_alpha
