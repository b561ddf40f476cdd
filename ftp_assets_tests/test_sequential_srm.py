"""The sequential sample-ratio check: its closed form, its level under many looks, and its power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ftp_assets.domain.ab_stats import sample_ratio_mismatch_p_value
from ftp_assets.domain.sequential_srm import (
    DEFAULT_PRIOR_CONCENTRATION,
    SrmState,
    log_bayes_factor,
    sequential_srm,
    srm_look,
)


def chi_square_p_values(counts_control: np.ndarray, counts_treatment: np.ndarray, share: float) -> np.ndarray:
    """The fixed-horizon chi-square SRM p-value (ab_stats), vectorized over experiments and looks."""
    total = counts_control + counts_treatment
    expected_control, expected_treatment = total * (1 - share), total * share
    statistic = (counts_control - expected_control) ** 2 / expected_control
    statistic += (counts_treatment - expected_treatment) ** 2 / expected_treatment
    return stats.chi2.sf(statistic, df=1)


def simulated_cumulative_counts(
    rng: np.random.Generator, experiments: int, looks: int, units_per_look: int, true_share: float
) -> tuple[np.ndarray, np.ndarray]:
    treatment = np.cumsum(rng.binomial(units_per_look, true_share, size=(experiments, looks)), axis=1)
    control = units_per_look * np.arange(1, looks + 1) - treatment
    return control, treatment


# --- the closed form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "null", "concentration"),
    [([530, 470], [0.5, 0.5], 1000.0), ([905, 95], [0.9, 0.1], 50.0), ([12, 30, 9], [0.2, 0.5, 0.3], 3.0)],
)
def test_bayes_factor_is_the_dirichlet_multinomial_over_the_multinomial_probability(counts, null, concentration):
    n = sum(counts)
    prior = concentration * np.array(null)
    expected = stats.dirichlet_multinomial.logpmf(counts, prior, n) - stats.multinomial.logpmf(counts, n, null)
    assert float(log_bayes_factor(counts, null, concentration)) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_closed_form_equals_the_product_of_posterior_predictive_ratios_unit_by_unit():
    arms = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]
    null, concentration = np.array([0.3, 0.7]), 4.0
    counts = np.zeros(2)
    log_product = 0.0
    for arm in arms:
        predictive = (concentration * null[arm] + counts[arm]) / (concentration + counts.sum())
        log_product += math.log(predictive / null[arm])
        counts[arm] += 1
        assert float(log_bayes_factor(counts, null, concentration)) == pytest.approx(log_product, rel=1e-12)


def test_batches_of_any_size_give_the_unit_by_unit_value():
    # ssrm-test's batched update: the Dirichlet-multinomial posterior predictive of each batch over
    # its multinomial probability, the posterior carried from batch to batch.
    batches = np.array([[40, 12], [3, 0], [55, 20], [0, 0], [17, 9]])
    null, concentration = np.array([0.75, 0.25]), 20.0
    posterior = concentration * null
    log_product = 0.0
    for batch in batches:
        n = int(batch.sum())
        if n:
            log_product += stats.dirichlet_multinomial.logpmf(batch, posterior, n)
            log_product -= stats.multinomial.logpmf(batch, n, null)
        posterior = posterior + batch
    assert float(log_bayes_factor(batches.sum(axis=0), null, concentration)) == pytest.approx(log_product, rel=1e-10)


def test_log_bayes_factor_is_vectorized_over_leading_axes():
    counts = np.array([[[10, 5], [20, 12]], [[7, 7], [30, 2]]])
    values = log_bayes_factor(counts, [0.6, 0.4], 10.0)
    assert values.shape == (2, 2)
    assert values[1, 1] == pytest.approx(float(log_bayes_factor([30, 2], [0.6, 0.4], 10.0)))


# --- the look history --------------------------------------------------------------------------


def test_p_value_is_the_running_minimum_of_the_inverse_bayes_factor():
    control, treatment = [450, 900, 1_400, 1_800], [40, 130, 160, 200]
    result = sequential_srm(control, treatment, challenger_share=0.1)
    inverse = [
        math.exp(-float(log_bayes_factor([c, t], [0.9, 0.1], DEFAULT_PRIOR_CONCENTRATION)))
        for c, t in zip(control, treatment, strict=True)
    ]
    assert result.p_value == pytest.approx(min(1.0, *inverse))
    assert result.bayes_factor == pytest.approx(1 / inverse[-1])
    assert result.state == SrmState(1_800, 200, result.p_value)


def test_looks_one_at_a_time_from_the_stored_state_match_the_whole_history():
    control, treatment = [100, 260, 390, 500], [98, 240, 420, 515]
    state = SrmState()
    for c, t in zip(control, treatment, strict=True):
        result = srm_look(state, c, t, challenger_share=0.5)
        state = result.state
    assert result == sequential_srm(control, treatment, challenger_share=0.5)


def test_the_p_value_never_rises():
    # A mismatch early, then a correct split that dilutes it: the Bayes factor falls, the p-value stays.
    early = sequential_srm([700], [300], challenger_share=0.5)
    later = sequential_srm([700, 10_300], [300, 9_700], challenger_share=0.5)
    assert later.bayes_factor < early.bayes_factor
    assert later.p_value == early.p_value < 1e-6


def test_no_looks_and_no_units_contradict_nothing():
    assert sequential_srm([], [], 0.1).p_value == 1.0
    result = sequential_srm([0], [0], 0.1)
    assert (result.p_value, result.bayes_factor) == (1.0, 1.0)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="shrink"):
        srm_look(SrmState(10, 10, 1.0), 9, 12, 0.5)
    with pytest.raises(ValueError, match="challenger_share"):
        sequential_srm([1], [1], 1.0)
    with pytest.raises(ValueError, match="whole"):
        SrmState(1.5, 0)  # type: ignore[arg-type]  # a count from a database may be a float
    with pytest.raises(ValueError, match="non-negative whole"):
        log_bayes_factor([3, -1], [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        log_bayes_factor([3, 1], [0.5, 0.6])
    with pytest.raises(ValueError, match="same length"):
        sequential_srm([1, 2], [1], 0.5)


# --- level under many looks, against the chi-square at every look ------------------------------


def test_vectorized_chi_square_is_the_ab_stats_check():
    assert chi_square_p_values(np.array([912]), np.array([88]), 0.1)[0] == pytest.approx(
        sample_ratio_mismatch_p_value(912, 88, 0.1), rel=1e-12
    )


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_correct_split_keeps_the_level_at_every_look_while_the_chi_square_does_not(share):
    rng = np.random.default_rng(14 if share == 0.1 else 15)
    experiments, looks, units_per_look = 20_000, 50, 200
    control, treatment = simulated_cumulative_counts(rng, experiments, looks, units_per_look, share)
    counts = np.stack([control, treatment], axis=-1)
    log_bf = log_bayes_factor(counts, [1 - share, share])
    anytime_p = np.minimum(1.0, np.exp(-np.maximum.accumulate(log_bf, axis=1)))[:, -1]
    smallest_chi_square_p = chi_square_p_values(control, treatment, share).min(axis=1)
    for alpha in (0.05, 0.001):
        sequential_rate = float(np.mean(anytime_p < alpha))
        chi_square_rate = float(np.mean(smallest_chi_square_p < alpha))
        tolerance = 3 * math.sqrt(alpha * (1 - alpha) / experiments)
        assert sequential_rate <= alpha + tolerance, (alpha, sequential_rate)
        # The fixed-horizon check at each of the 50 looks rejects a correct split several times too often.
        assert chi_square_rate > 3 * alpha, (alpha, chi_square_rate)


def test_the_whole_history_api_agrees_with_the_vectorized_simulation():
    rng = np.random.default_rng(3)
    control, treatment = simulated_cumulative_counts(rng, 1, 20, 150, 0.1)
    log_bf = log_bayes_factor(np.stack([control[0], treatment[0]], axis=-1), [0.9, 0.1])
    result = sequential_srm(control[0].tolist(), treatment[0].tolist(), 0.1)
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_bf.max())), rel=1e-12)


# --- power --------------------------------------------------------------------------------------


def test_a_45_55_split_at_a_planned_50_50_is_found_within_a_few_thousand_units():
    rng = np.random.default_rng(4555)
    experiments, looks, units_per_look = 2_000, 50, 100
    control, treatment = simulated_cumulative_counts(rng, experiments, looks, units_per_look, 0.45)
    log_bf = log_bayes_factor(np.stack([control, treatment], axis=-1), [0.5, 0.5])
    found_by = (np.maximum.accumulate(log_bf, axis=1) >= math.log(1 / 0.001)).mean(axis=0)
    # Measured with this seed: 0.8% by 1,000 units, 42% by 2,000, 84% by 3,000, 97% by 4,000, 99.7% by 5,000.
    assert found_by[9] < found_by[19] < found_by[29] < found_by[39] < found_by[49]
    assert found_by[29] > 0.75
    assert found_by[49] > 0.99
    # The expected counts themselves: 1,650 against 1,350.
    assert sequential_srm([1_650], [1_350], 0.5).mismatch(0.001)
    assert not sequential_srm([1_650], [1_350], 0.5, prior_concentration=10_000).mismatch(0.001)
