"""Group-sequential boundaries against published tables, scipy's multivariate normal and simulation."""

from __future__ import annotations

import inspect
import itertools
import math
import sys
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats
from statsmodels.stats.power import NormalIndPower

from ftp_assets.domain.group_sequential import (
    OBRIEN_FLEMING_LIKE,
    POCOCK_LIKE,
    Plan,
    SpendingFunction,
    alpha_spent,
    classical_boundaries,
    crossing_probabilities,
    efficacy_boundaries,
    final_boundary,
    fixed_design_information,
    hwang_shih_decani,
    inflation_factor,
    look,
    power,
    required_information,
)

FIVE_LOOKS = [0.2, 0.4, 0.6, 0.8, 1.0]


def simulated_z_paths(rng: np.random.Generator, fractions: list[float], n: int, drift: float = 0.0) -> np.ndarray:
    """Z statistics at ``fractions`` of ``n`` Brownian paths with drift: the canonical joint distribution."""
    increments = np.diff([0.0, *fractions])
    score = np.cumsum(rng.normal(drift * increments, np.sqrt(increments), size=(n, len(fractions))), axis=1)
    return score / np.sqrt(fractions)


# --- spending functions ------------------------------------------------------------------------


def test_spending_functions_follow_the_gsdesign_formulas():
    # sfLDOF, sfLDPocock and sfHSD (gsDesign reference pages), written out with scipy.stats.norm.
    alpha, t = 0.025, 0.37
    assert OBRIEN_FLEMING_LIKE.cumulative(alpha, t) == pytest.approx(
        2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)), rel=1e-12
    )
    assert POCOCK_LIKE.cumulative(alpha, t) == pytest.approx(alpha * math.log(1 + (math.e - 1) * t), rel=1e-12)
    assert hwang_shih_decani(-4).cumulative(alpha, t) == pytest.approx(
        alpha * (1 - math.exp(4 * t)) / (1 - math.exp(4)), rel=1e-12
    )
    assert hwang_shih_decani(0).cumulative(alpha, t) == pytest.approx(alpha * t)
    assert hwang_shih_decani(1e-9).cumulative(alpha, t) == pytest.approx(alpha * t, rel=1e-6)


@pytest.mark.parametrize("spending", [OBRIEN_FLEMING_LIKE, POCOCK_LIKE, hwang_shih_decani(-4), hwang_shih_decani(2)])
def test_spending_functions_rise_from_zero_to_alpha_and_stay_there(spending):
    grid = np.linspace(0, 1.5, 301)
    spent = [spending.cumulative(0.05, t) for t in grid]
    assert spent[0] == 0
    assert np.all(np.diff(spent) >= 0)
    assert spent[200] == 0.05  # t = 1
    assert spent[-1] == 0.05  # beyond the planned maximum: nothing more to spend


def test_spending_function_rejects_a_misplaced_parameter():
    with pytest.raises(ValueError, match="gamma"):
        SpendingFunction("pocock", gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        SpendingFunction("hwang_shih_decani")
    assert hwang_shih_decani(-4).describe() == "hwang_shih_decani(γ=-4)"


# --- published boundaries ----------------------------------------------------------------------


def test_lan_demets_obrien_fleming_boundaries_match_gsdesign():
    # gsDesign(k = 5, test.type = 1, alpha = 0.025, sfu = sfLDOF): upper bounds (also ldbounds).
    published = [4.877, 3.357, 2.680, 2.290, 2.031]
    assert efficacy_boundaries(FIVE_LOOKS, 0.025) == pytest.approx(published, abs=1e-3)


# Jennison & Turnbull (2000), Tables 2.1 and 2.3: two-sided tests of level 0.05, K equally spaced looks.
@pytest.mark.parametrize(
    ("looks", "obrien_fleming", "pocock"),
    [(2, 1.977, 2.178), (3, 2.004, 2.289), (4, 2.024, 2.361), (5, 2.040, 2.413)],
)
def test_classical_constants_match_jennison_and_turnbull(looks, obrien_fleming, pocock):
    constant, _ = classical_boundaries(looks, 0.05, "obrien_fleming", two_sided=True)
    assert constant == pytest.approx(obrien_fleming, abs=1e-3)
    constant, boundaries = classical_boundaries(looks, 0.05, "pocock", two_sided=True)
    assert constant == pytest.approx(pocock, abs=1e-3)
    assert boundaries == [constant] * looks


def test_classical_obrien_fleming_boundaries_for_five_looks():
    _, boundaries = classical_boundaries(5, 0.05, "obrien_fleming", two_sided=True)
    assert boundaries == pytest.approx([4.562, 3.226, 2.634, 2.281, 2.040], abs=1e-3)


def test_one_look_is_the_fixed_design():
    assert efficacy_boundaries([1.0], 0.025) == pytest.approx([stats.norm.isf(0.025)], abs=1e-12)
    assert classical_boundaries(1, 0.05, "pocock", two_sided=True)[0] == pytest.approx(stats.norm.isf(0.025))


# --- the recursion against an independent integration -------------------------------------------


@pytest.mark.parametrize(
    ("fractions", "spending"),
    [([0.3, 1.0], OBRIEN_FLEMING_LIKE), ([0.25, 0.6, 1.0], POCOCK_LIKE), ([0.1, 0.45, 0.7], hwang_shih_decani(-2))],
)
def test_boundaries_hold_the_spent_alpha_under_scipy_multivariate_normal(fractions, spending):
    # P(no crossing) = P(Z_k < b_k for all k), Corr(Z_j, Z_k) = sqrt(t_j / t_k): scipy's Genz integration.
    alpha = 0.05
    boundaries = efficacy_boundaries(fractions, alpha, spending)
    t = np.array(fractions)
    correlation = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    distribution = stats.multivariate_normal(mean=np.zeros(len(t)), cov=correlation, abseps=1e-8, releps=1e-8, seed=1)
    no_crossing = distribution.cdf(np.array(boundaries))
    assert 1 - no_crossing == pytest.approx(alpha_spent(fractions, alpha, spending)[-1], abs=2e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.02, 1.0), min_size=1, max_size=8, unique=True).map(sorted),
    st.sampled_from([OBRIEN_FLEMING_LIKE, POCOCK_LIKE, hwang_shih_decani(-4), hwang_shih_decani(1)]),
)
def test_each_look_spends_exactly_its_increment(fractions, spending):
    # Irregular, skipped and early-stopped schedules: only the fractions observed matter.
    assume(all(b - a >= 1e-3 for a, b in itertools.pairwise(fractions)))
    alpha = 0.025
    boundaries = efficacy_boundaries(fractions, alpha, spending)
    upper, _ = crossing_probabilities(fractions, boundaries)
    spent = alpha_spent(fractions, alpha, spending)
    assert np.cumsum(upper) == pytest.approx(spent, rel=1e-5, abs=1e-12)
    finite = [b for b in boundaries if math.isfinite(b)]
    assert all(b > 0 for b in finite)


def test_fifty_looks_take_well_under_a_second_and_spend_alpha():
    fractions = [k / 50 for k in range(1, 51)]
    started = time.perf_counter()
    boundaries = efficacy_boundaries(fractions, 0.025)
    assert time.perf_counter() - started < 0.5
    upper, _ = crossing_probabilities(fractions, boundaries)
    assert sum(upper) == pytest.approx(0.025, rel=1e-6)
    assert boundaries[0] == pytest.approx(stats.norm.isf(OBRIEN_FLEMING_LIKE.cumulative(0.025, 0.02)), abs=1e-9)


def test_crossing_rate_of_simulated_brownian_paths_at_irregular_looks_is_alpha():
    rng = np.random.default_rng(20250314)
    fractions = [0.07, 0.11, 0.2, 0.26, 0.4, 0.43, 0.61, 0.75, 0.8, 0.93, 1.0, 1.08]
    alpha, n = 0.025, 400_000
    for spending in (OBRIEN_FLEMING_LIKE, POCOCK_LIKE):
        boundaries = np.array(efficacy_boundaries(fractions, alpha, spending))
        crossed = (simulated_z_paths(rng, fractions, n) >= boundaries).any(axis=1)
        tolerance = 4 * math.sqrt(alpha * (1 - alpha) / n)
        assert abs(crossed.mean() - alpha) < tolerance, spending


# --- looks past the planned maximum and a final look --------------------------------------------


def test_a_look_past_the_maximum_spends_the_remainder_and_later_looks_have_nothing_left():
    fractions = [0.5, 1.2, 1.4]
    boundaries = efficacy_boundaries(fractions, 0.025)
    assert alpha_spent(fractions, 0.025) == [OBRIEN_FLEMING_LIKE.cumulative(0.025, 0.5), 0.025, 0.025]
    assert boundaries[2] == math.inf
    upper, _ = crossing_probabilities(fractions, boundaries)
    assert sum(upper) == pytest.approx(0.025, rel=1e-6)


@pytest.mark.parametrize("final_fraction", [0.7, 1.0, 1.3])
def test_a_final_look_spends_everything_left(final_fraction):
    earlier = [0.3, 0.55]
    boundary = final_boundary(earlier, final_fraction, 0.025)
    fractions = [*earlier, final_fraction]
    upper, _ = crossing_probabilities(fractions, [*efficacy_boundaries(earlier, 0.025), boundary])
    assert sum(upper) == pytest.approx(0.025, rel=1e-6)
    if final_fraction == 1.0:
        assert boundary == pytest.approx(efficacy_boundaries(fractions, 0.025)[-1], abs=1e-9)


def test_fractions_must_be_positive_and_increasing():
    for bad in ([], [0.0, 1.0], [0.5, 0.5], [0.6, 0.4], [math.nan]):
        with pytest.raises(ValueError, match="fraction"):
            efficacy_boundaries(bad, 0.025)
    with pytest.raises(ValueError, match="alpha"):
        efficacy_boundaries([1.0], 1.5)


# --- the plan and its looks ----------------------------------------------------------------------


def test_looks_of_a_plan_reproduce_the_boundaries_and_the_spent_alpha():
    plan = Plan(maximum_information=20_000, alpha=0.025)
    informations = [3_000, 7_000, 12_500, 20_000]
    statistics = [1.2, 2.9, 2.8, 2.1]
    boundaries = efficacy_boundaries([i / 20_000 for i in informations], 0.025)
    looks = [look(plan, informations[k], statistics[k], informations[:k]) for k in range(len(informations))]
    assert [x.boundary for x in looks] == pytest.approx(boundaries, rel=1e-12)
    assert [x.fraction for x in looks] == [0.15, 0.35, 0.625, 1.0]
    assert [x.crosses for x in looks] == [s >= b for s, b in zip(statistics, boundaries, strict=True)]
    assert looks[-1].alpha_spent_cumulative == 0.025
    assert looks[1].alpha_spent_cumulative == pytest.approx(OBRIEN_FLEMING_LIKE.cumulative(0.025, 0.35))


def test_a_final_look_before_the_maximum_spends_all_of_alpha():
    plan = Plan(maximum_information=10_000, spending=POCOCK_LIKE)
    last = look(plan, 6_000, 2.2, [2_000, 4_000], final=True)
    assert last.alpha_spent_cumulative == plan.alpha
    assert last.boundary == pytest.approx(final_boundary([0.2, 0.4], 0.6, plan.alpha, POCOCK_LIKE))
    assert last.boundary < efficacy_boundaries([0.2, 0.4, 0.6], plan.alpha, POCOCK_LIKE)[-1]


def test_plan_rejects_impossible_settings():
    with pytest.raises(ValueError, match="maximum_information"):
        Plan(maximum_information=0)
    with pytest.raises(ValueError, match="alpha"):
        Plan(maximum_information=1, alpha=0)
    with pytest.raises(ValueError, match="statistic"):
        look(Plan(maximum_information=1), 0.5, math.nan)


# --- sample size --------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "target_power", "effect"), [(0.025, 0.9, 0.1), (0.05, 0.8, 0.03)])
def test_fixed_design_information_matches_statsmodels(alpha, target_power, effect):
    # A one-sample z test (ratio=0): nobs is the information of a unit-variance effect estimate.
    expected = NormalIndPower().solve_power(
        effect_size=effect, alpha=alpha, power=target_power, ratio=0, alternative="larger"
    )
    assert fixed_design_information(alpha, target_power, effect) == pytest.approx(expected, rel=1e-6)
    assert required_information(alpha, target_power, effect) == pytest.approx(expected, rel=1e-6)


# Jennison & Turnbull (2000), Tables 2.2 and 2.4: maximum sample size over the fixed design's, two-sided
# alpha = 0.05, power 0.9, five equally spaced looks.
@pytest.mark.parametrize(("shape", "published"), [("obrien_fleming", 1.026), ("pocock", 1.207)])
def test_classical_inflation_factors_match_jennison_and_turnbull(shape, published):
    _, boundaries = classical_boundaries(5, 0.05, shape, two_sided=True)
    lowers = [-b for b in boundaries]
    fixed_drift = stats.norm.isf(0.025) + stats.norm.isf(0.1)

    def shortfall(drift: float) -> float:
        upper, lower = crossing_probabilities(FIVE_LOOKS, boundaries, lowers, drift=drift)
        return sum(upper) + sum(lower) - 0.9

    drift = optimize.brentq(shortfall, 2.0, 6.0, xtol=1e-10)
    assert (drift / fixed_drift) ** 2 == pytest.approx(published, abs=1e-3)


def test_spending_inflation_reaches_its_power_in_simulation():
    alpha, target_power, effect = 0.025, 0.9, 0.05
    factor = inflation_factor(FIVE_LOOKS, alpha, target_power)
    assert 1.0 < factor < 1.03  # spends little early: close to classical O'Brien-Fleming's 1.026
    maximum = required_information(alpha, target_power, effect, information_fractions=FIVE_LOOKS)
    assert maximum == pytest.approx(factor * fixed_design_information(alpha, target_power, effect))
    drift = effect * math.sqrt(maximum)
    assert power(FIVE_LOOKS, alpha, drift) == pytest.approx(target_power, abs=1e-6)

    rng = np.random.default_rng(7)
    n = 200_000
    crossed = (simulated_z_paths(rng, FIVE_LOOKS, n, drift) >= np.array(efficacy_boundaries(FIVE_LOOKS, alpha))).any(
        axis=1
    )
    assert abs(crossed.mean() - target_power) < 4 * math.sqrt(0.9 * 0.1 / n)


def test_a_schedule_of_hundreds_of_looks_needs_no_deep_recursion():
    # Each evaluation starts with an empty cache and a look every few minutes makes hundreds of
    # looks: the prefixes are solved in a loop, within a small stack.
    fractions = [0.001 * 1.023**k for k in range(300)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        boundaries = efficacy_boundaries(fractions, 0.025)
    finally:
        sys.setrecursionlimit(limit)
    assert len(boundaries) == 300 and boundaries[-1] == pytest.approx(efficacy_boundaries(fractions, 0.025)[-1])
    assert 1.9 < boundaries[-1] < 2.3
