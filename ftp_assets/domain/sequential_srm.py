"""A sample-ratio-mismatch check that stays valid however often it is looked at.

The fixed-horizon chi-square check (:func:`ftp_assets.domain.ab_stats.sample_ratio_mismatch_p_value`)
is valid at one look. Evaluated at every look of an experiment with a correct split, it crosses
``p < alpha`` far more often than ``alpha`` and stops healthy experiments. This module implements
the sequential test of Lindon & Malek (2022), "Anytime-Valid Inference for Multinomial Count Data"
(NeurIPS; arXiv:2011.03567), the test behind Optimizely's ``ssrm-test`` package::

    from ftp_assets.domain.sequential_srm import sequential_srm, srm_look

    result = sequential_srm([510, 1_040, 1_530], [52, 101, 160], challenger_share=0.1)
    result.p_value, result.bayes_factor, result.state  # store the state with the look
    later = srm_look(result.state, 2_080, 215, challenger_share=0.1)  # the next look, counts so far

**The test.** Each unit falls in arm ``i`` with probability ``p_i``; the null hypothesis is the
planned split ``p = p0`` (for two arms ``p0 = (1 − share, share)``). The alternative mixes over
``p ~ Dirichlet(c·p0)``: centred on the plan, with concentration ``c``. After counts ``x`` (``n``
units in all) the Bayes factor of the mixture against the null is the ratio of the
Dirichlet-multinomial to the multinomial probability of ``x``; the multinomial coefficients cancel:

    log BF = [log B(c·p0 + x) − log B(c·p0)] − Σ_i x_i·log p0_i,   B(a) = Π Γ(a_i) / Γ(Σ a_i).

It depends on the counts so far only, so batches of any size (a look's new units) give the same
value as unit-by-unit updating, which is the product of the posterior-predictive ratios
``((c·p0_i + x_i) / (c + n)) / p0_i`` of each unit's arm. Under the null that product is a
nonnegative martingale with mean 1, so by Ville's inequality ``P(BF_n ≥ 1/α for some n) ≤ α``:
rejecting once the Bayes factor reaches ``1/α`` has level ``α`` at any number of looks, at any
times, chosen in any way. Equivalently the anytime-valid p-value ``min over looks of 1/BF`` (a
running minimum, so it never rises) is below ``α`` with probability at most ``α`` at any time.

**The concentration** ``c`` sets the mismatches the test is quickest to find: the prior sd of a
share is about ``√(p0_i(1 − p0_i)/(c + 1))``. The default 1,000 gives ±1.6 points at 50/50 and
±0.9 points at a 10% share, the size of the usual mismatch from a bot filter or a logging loss;
a 45/55 split where 50/50 was planned is found at α = 0.001 in most experiments by 3,000 units
and in nearly all by 5,000 (the tests measure it). ``ssrm-test`` defaults to 10,000, which is
slower for such a split. The p-value is valid for any ``c``; choose
it before the experiment starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

DEFAULT_PRIOR_CONCENTRATION = 1000.0


@dataclass(frozen=True)
class SrmState:
    """What the next look needs: the counts per arm so far and the running minimum p-value."""

    count_control: int = 0
    count_treatment: int = 0
    p_value: float = 1.0  # anytime-valid: min over the looks so far of 1/BF, capped at 1

    def __post_init__(self) -> None:
        for name in ("count_control", "count_treatment"):
            value = float(getattr(self, name))
            if not value.is_integer() or value < 0:
                raise ValueError(f"{name} must be a non-negative whole number, got {getattr(self, name)!r}")
            object.__setattr__(self, name, int(value))
        if not 0 <= self.p_value <= 1:
            raise ValueError(f"p_value must lie in [0, 1], got {self.p_value!r}")


@dataclass(frozen=True)
class SrmResult:
    """The check at the last look; ``state`` is what to store for the next one."""

    p_value: float  # anytime-valid p-value of the planned split: reject it when below alpha
    bayes_factor: float  # of the mixture against the planned split, at the last look (may be inf)
    log_bayes_factor: float
    state: SrmState

    def mismatch(self, alpha: float) -> bool:
        """Whether the planned split is rejected at level ``alpha``: ``p_value < alpha``."""
        _check_probability("alpha", alpha)
        return self.p_value < alpha


def log_bayes_factor(
    counts: Sequence[int] | np.ndarray,
    null_probabilities: Sequence[float] | np.ndarray,
    prior_concentration: float = DEFAULT_PRIOR_CONCENTRATION,
) -> np.ndarray:
    """Log Bayes factor of the Dirichlet(c·p0) mixture against the multinomial split ``p0``.

    ``counts`` has the arms on its last axis; leading axes (experiments, looks) are computed at
    once. Returns an array of the leading shape (a 0-d array for one vector of counts).
    """
    x = np.asarray(counts, dtype=np.float64)
    p0 = np.asarray(null_probabilities, dtype=np.float64)
    if p0.ndim != 1 or x.shape[-1:] != p0.shape:
        raise ValueError(f"counts must end in an axis of one count per arm ({p0.size}), got shape {x.shape}")
    if np.any(p0 <= 0) or not math.isclose(float(p0.sum()), 1.0, rel_tol=1e-9):
        raise ValueError(f"null_probabilities must be positive and sum to 1, got {p0.tolist()}")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("counts must be non-negative whole numbers")
    if not (math.isfinite(prior_concentration) and prior_concentration > 0):
        raise ValueError(f"prior_concentration must be positive, got {prior_concentration!r}")
    prior = prior_concentration * p0
    log_beta_posterior = special.gammaln(prior + x).sum(axis=-1) - special.gammaln(prior_concentration + x.sum(axis=-1))
    log_beta_prior = special.gammaln(prior).sum() - special.gammaln(prior_concentration)
    return log_beta_posterior - log_beta_prior - (x * np.log(p0)).sum(axis=-1)


def srm_look(
    state: SrmState,
    count_control: int,
    count_treatment: int,
    challenger_share: float,
    prior_concentration: float = DEFAULT_PRIOR_CONCENTRATION,
) -> SrmResult:
    """The check at a new look with the counts so far (cumulative), after the looks in ``state``.

    Counts can only grow between looks. The prior concentration and the share must be the ones
    the earlier looks used (a ramped share is a new phase: start it from ``SrmState()``).
    """
    _check_probability("challenger_share", challenger_share)
    if count_control < state.count_control or count_treatment < state.count_treatment:
        raise ValueError(
            f"counts so far cannot shrink: ({count_control}, {count_treatment}) after "
            f"({state.count_control}, {state.count_treatment})"
        )
    log_bf = float(
        log_bayes_factor(
            [count_control, count_treatment], [1 - challenger_share, challenger_share], prior_concentration
        )
    )
    p_value = min(state.p_value, math.exp(min(0.0, -log_bf)))
    bayes_factor = math.exp(log_bf) if log_bf < 709 else math.inf
    return SrmResult(
        p_value=p_value,
        bayes_factor=bayes_factor,
        log_bayes_factor=log_bf,
        state=SrmState(count_control, count_treatment, p_value),
    )


def sequential_srm(
    counts_control: Sequence[int],
    counts_treatment: Sequence[int],
    challenger_share: float,
    prior_concentration: float = DEFAULT_PRIOR_CONCENTRATION,
) -> SrmResult:
    """The check over a whole look history: each arm's counts so far at each look, in order.

    The p-value is the running minimum of ``1/BF`` over the looks; the Bayes factor is the last
    look's. With no looks it is the empty state (p-value 1, Bayes factor 1).
    """
    _check_probability("challenger_share", challenger_share)
    if len(counts_control) != len(counts_treatment):
        raise ValueError("one count per arm per look: the two sequences must have the same length")
    state = SrmState()
    result = SrmResult(p_value=1.0, bayes_factor=1.0, log_bayes_factor=0.0, state=state)
    for control, treatment in zip(counts_control, counts_treatment, strict=True):
        result = srm_look(result.state, control, treatment, challenger_share, prior_concentration)
    return result


def _check_probability(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
