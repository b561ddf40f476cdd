"""Group-sequential efficacy boundaries for an experiment evaluated at a few planned looks.

The experiment is looked at repeatedly; testing the fixed-horizon z statistic at every look would
promote more than ``alpha`` of A/A experiments. A group-sequential design instead gives each look
``k`` its own boundary ``b_k`` on the z statistic, chosen so that the probability, with no true
effect, of ever crossing a boundary is exactly ``alpha`` (one-sided: only a better challenger is
promoted). Usage::

    from ftp_assets.domain.group_sequential import Plan, look

    plan = Plan(alpha=0.025, maximum_information=20_000)  # e.g. posts, or 1/se² of the effect
    first = look(plan, information=4_000, statistic=1.7)
    second = look(plan, information=9_500, statistic=2.4, earlier_information=[4_000])
    second.crosses, second.boundary, second.alpha_spent_cumulative

**The statistics.** With information ``I_k`` at look ``k`` (the inverse variance of the effect
estimate, or anything proportional to it, such as the sample size) and maximum information
``I_max``, the information fraction is ``t_k = I_k / I_max``. Under the canonical joint
distribution (Jennison & Turnbull 2000, "Group Sequential Methods with Applications to Clinical
Trials", §3.1) the z statistics behave like Brownian motion observed at ``t_k``:
``Z_k·√t_k`` has independent increments, ``N(δ·Δt, Δt)``, where ``δ = θ·√I_max`` is the drift of an
effect ``θ``. So ``Corr(Z_j, Z_k) = √(t_j / t_k)`` and ``E[Z_k] = δ·√t_k``.

**Error spending** (Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials",
Biometrika 70:659-663). A spending function ``α(t)`` increases from ``α(0) = 0`` to ``α(1) = alpha``;
boundary ``k`` solves ``P(no crossing at looks 1..k-1, Z_k ≥ b_k) = α(t_k) − α(t_{k−1})`` under
``δ = 0``. Only the fractions actually observed are used, so irregular, skipped or extra looks
keep the overall rate at ``alpha``; the number of looks need not be fixed in advance. The
functions, as in gsDesign's ``sfLDOF``, ``sfLDPocock`` and ``sfHSD`` (for a one-sided level α):

* Lan-DeMets O'Brien-Fleming-like (the default): ``α(t) = 2 − 2·Φ(Φ⁻¹(1 − α/2) / √t)``. It spends
  almost nothing early, so the last boundary stays close to the fixed-horizon one.
* Lan-DeMets Pocock-like: ``α(t) = α·ln(1 + (e − 1)·t)``.
* Hwang, Shih & DeCani (1990): ``α(t) = α·(1 − e^{−γt}) / (1 − e^{−γ})``, and ``α·t`` at γ = 0
  (γ = −4 is close to O'Brien-Fleming, γ = 1 to Pocock).

A look past the planned maximum (``t > 1``) spends all that is left: ``α(t) = α`` for ``t ≥ 1``,
while the correlations keep the actual fractions (gsDesign's treatment of an overrunning trial).
Looks after that one have nothing left to spend: their boundary is ``+inf``.
:func:`final_boundary` spends the remainder at a look of any fraction, for an experiment stopped
early by its deadline.

**The numerical integration** is the recursion of Armitage, McPherson & Rowe (1969) in the form of
Jennison & Turnbull (2000), ch. 19: the sub-density ``f_k`` of ``Z_k`` on the paths that have not
crossed yet is carried on a grid over the continuation region (Simpson's rule), and
``f_k(z) = ∫ f_{k−1}(u)·√(t_k/Δ)·φ((z√t_k − u√t_{k−1} − δΔ)/√Δ) du`` with ``Δ = t_k − t_{k−1}``.
The crossing probability at look ``k`` is the same integral against the normal tail, so each
boundary is a one-dimensional root. The grid follows the narrowest kernel, so 50 looks take a
fraction of a second; the boundaries agree with published tables to 1e-3 (see the tests).

The classical designs with a constant shape (O'Brien & Fleming 1979: ``b_k = C·√(1/t_k)``; Pocock
1977: ``b_k = C``) are computed by the same recursion in :func:`classical_boundaries`, to check it
against Jennison & Turnbull's Tables 2.1 and 2.3.

The sample size of a group-sequential design is the fixed design's times an inflation factor
(Jennison & Turnbull §2.5): :func:`required_information` finds the maximum information at which
the boundaries reach the requested power.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special

SpendingFamily = Literal["obrien_fleming", "pocock", "hwang_shih_decani"]

# The grid over the continuation region: at most this spacing on the z scale, and at most this
# fraction of the standard deviation of the narrowest transition kernel it is integrated against.
_MAX_GRID_SPACING = 0.05
_GRID_SPACING_PER_KERNEL_SD = 0.25
# The sub-density is carried this many standard deviations either side of E[Z_k]: beyond it lies
# less than 1e-15 of the probability.
_GRID_HALF_WIDTH = 8.5
# Caps the work when two looks are almost at the same fraction (a kernel far narrower than 1e-4).
_MAX_GRID_POINTS = 4001
# Below this the spent increment is treated as nothing: the boundary is +inf at that look.
_NEGLIGIBLE_PROBABILITY = 1e-300


@dataclass(frozen=True)
class SpendingFunction:
    """A cumulative error-spending function ``α(t)`` for a one-sided level ``alpha``.

    ``gamma`` is the parameter of the Hwang-Shih-DeCani family and must be ``None`` otherwise.
    Use the module constants :data:`OBRIEN_FLEMING_LIKE`, :data:`POCOCK_LIKE`, or
    :func:`hwang_shih_decani`.
    """

    family: SpendingFamily = "obrien_fleming"
    gamma: float | None = None

    def __post_init__(self) -> None:
        if self.family not in ("obrien_fleming", "pocock", "hwang_shih_decani"):
            raise ValueError(f"unknown spending family {self.family!r}")
        if (self.family == "hwang_shih_decani") != (self.gamma is not None):
            raise ValueError("gamma is the parameter of the hwang_shih_decani family, and only of it")
        if self.gamma is not None and not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be finite, got {self.gamma!r}")

    def cumulative(self, alpha: float, fraction: float) -> float:
        """Error spent up to information fraction ``fraction``; ``alpha`` from ``fraction >= 1`` on."""
        _check_alpha(alpha)
        if not fraction >= 0:
            raise ValueError(f"an information fraction cannot be negative, got {fraction!r}")
        if fraction >= 1:
            return alpha
        if fraction == 0:
            return 0.0
        if self.family == "obrien_fleming":
            return float(2 * special.ndtr(-special.ndtri(1 - alpha / 2) / math.sqrt(fraction)))
        if self.family == "pocock":
            return alpha * math.log(1 + (math.e - 1) * fraction)
        gamma = self.gamma
        if gamma is None:
            raise RuntimeError("a hwang_shih_decani spending function always has gamma")
        if gamma == 0:
            return alpha * fraction
        return alpha * math.expm1(-gamma * fraction) / math.expm1(-gamma)

    def describe(self) -> str:
        """A short name for metadata: ``obrien_fleming``, ``pocock`` or ``hwang_shih_decani(γ=-4)``."""
        return self.family if self.gamma is None else f"{self.family}(γ={self.gamma:g})"


OBRIEN_FLEMING_LIKE = SpendingFunction("obrien_fleming")
POCOCK_LIKE = SpendingFunction("pocock")


def hwang_shih_decani(gamma: float) -> SpendingFunction:
    """The Hwang-Shih-DeCani spending function with parameter ``gamma``."""
    return SpendingFunction("hwang_shih_decani", gamma)


# ---------------------------------------------------------------------------------------------
# Spending and boundaries


def alpha_spent(
    information_fractions: Sequence[float], alpha: float, spending: SpendingFunction = OBRIEN_FLEMING_LIKE
) -> list[float]:
    """Cumulative error spent at each look: ``α(min(t_k, 1))``."""
    fractions = _checked_fractions(information_fractions)
    return [spending.cumulative(alpha, min(t, 1.0)) for t in fractions]


def efficacy_boundaries(
    information_fractions: Sequence[float], alpha: float, spending: SpendingFunction = OBRIEN_FLEMING_LIKE
) -> list[float]:
    """One-sided upper z boundaries at looks taken at ``information_fractions``.

    The fractions must be positive and strictly increasing; fractions above 1 (looks past the
    planned maximum) spend what is left of ``alpha`` at the first of them. A look with nothing to
    spend gets ``+inf``. The probability under no effect of crossing at least one boundary is
    ``α(min(t_K, 1))``: exactly ``alpha`` once a look reaches the planned maximum.
    """
    fractions = _checked_fractions(information_fractions)
    _check_alpha(alpha)
    return list(_spending_prefix(tuple(fractions), alpha, spending)[0])


def final_boundary(
    earlier_fractions: Sequence[float],
    final_fraction: float,
    alpha: float,
    spending: SpendingFunction = OBRIEN_FLEMING_LIKE,
) -> float:
    """Boundary of a final look that spends all of ``alpha`` left after the earlier looks.

    For an experiment that ends at a fraction other than 1: stopped by its deadline before the
    planned maximum (``final_fraction < 1``), or run past it. The earlier looks keep their
    spending-function boundaries, so the overall rate is exactly ``alpha``.
    """
    fractions = _checked_fractions([*earlier_fractions, final_fraction])
    _check_alpha(alpha)
    return _final_boundary(tuple(fractions), alpha, spending)


@functools.lru_cache(maxsize=1024)
def _final_boundary(fractions: tuple[float, ...], alpha: float, spending: SpendingFunction) -> float:
    """:func:`final_boundary`, cached: every experiment of a schedule ends with the same final look."""
    if len(fractions) == 1:
        return _first_boundary(alpha)
    earlier, recursion = _spending_prefix(fractions[:-1], alpha, spending)
    recursion = recursion.extended(fractions)
    recursion.advance(-math.inf, earlier[-1])
    return _boundary_at(recursion, alpha - spending.cumulative(alpha, min(fractions[-2], 1.0)))


# Prefixes of look schedules already solved, with the recursion's state at their last look: a
# new look extends its longest solved prefix step by step instead of solving every earlier look
# again. At most this many entries, each with a grid of at most _MAX_GRID_POINTS points, the
# least recently used dropped first.
_PREFIX_CACHE_SIZE = 1024
_PrefixKey = tuple[tuple[float, ...], float, SpendingFunction]
_prefixes: collections.OrderedDict[_PrefixKey, tuple[tuple[float, ...], _Recursion]] = collections.OrderedDict()
_prefixes_lock = threading.Lock()


def _spending_prefix(
    fractions: tuple[float, ...], alpha: float, spending: SpendingFunction
) -> tuple[tuple[float, ...], _Recursion]:
    """The spending-function boundaries of looks at ``fractions``, and the recursion ready to
    carry the sub-density past the last look. It is not carried yet: how finely to carry it
    depends on the next look's fraction (:meth:`_Recursion._spacing`), exactly as when all the
    fractions are known at once. A loop, not a recursion: a schedule may have hundreds of looks."""
    with _prefixes_lock:
        solved = len(fractions)
        while solved > 0 and (fractions[:solved], alpha, spending) not in _prefixes:
            solved -= 1
        if solved:
            _prefixes.move_to_end((fractions[:solved], alpha, spending))
            boundaries, recursion = _prefixes[fractions[:solved], alpha, spending]
        else:
            first = _first_boundary(spending.cumulative(alpha, min(fractions[0], 1.0)))
            boundaries, recursion, solved = (first,), _Recursion(fractions[:1], drift=0.0), 1
            _remember((fractions[:1], alpha, spending), (boundaries, recursion))
        for length in range(solved + 1, len(fractions) + 1):
            prefix = fractions[:length]
            recursion = recursion.extended(prefix)
            recursion.advance(-math.inf, boundaries[-1])
            increment = spending.cumulative(alpha, min(prefix[-1], 1.0)) - spending.cumulative(
                alpha, min(prefix[-2], 1.0)
            )
            boundaries = (*boundaries, _boundary_at(recursion, increment))
            _remember((prefix, alpha, spending), (boundaries, recursion))
        return boundaries, recursion


def _remember(key: _PrefixKey, value: tuple[tuple[float, ...], _Recursion]) -> None:
    _prefixes[key] = value
    if len(_prefixes) > _PREFIX_CACHE_SIZE:
        _prefixes.popitem(last=False)


def _first_boundary(target: float) -> float:
    if target <= _NEGLIGIBLE_PROBABILITY:
        return math.inf
    return float(-special.ndtri(target))  # not ndtri(1 - target): 1 - 1e-56 rounds to 1


def _boundary_at(recursion: _Recursion, target: float) -> float:
    """The boundary at the recursion's next look that spends ``target`` there."""
    if target <= _NEGLIGIBLE_PROBABILITY:
        return math.inf
    return _solve_boundary(recursion, target)


def crossing_probabilities(
    information_fractions: Sequence[float],
    upper: Sequence[float],
    lower: Sequence[float] | None = None,
    drift: float = 0.0,
) -> tuple[list[float], list[float]]:
    """Probabilities of stopping at each look by crossing ``upper`` (or ``lower``) first.

    ``drift`` is ``δ = θ·√I_max``, so ``E[Z_k] = δ·√t_k``. ``lower`` defaults to no lower
    boundary (``-inf``). Returns the per-look upper and lower crossing probabilities.
    """
    fractions = _checked_fractions(information_fractions)
    lowers = [-math.inf] * len(fractions) if lower is None else [float(a) for a in lower]
    uppers = [float(b) for b in upper]
    if len(uppers) != len(fractions) or len(lowers) != len(fractions):
        raise ValueError("one upper (and lower) boundary per information fraction is needed")
    if any(a >= b for a, b in zip(lowers, uppers, strict=True)):
        raise ValueError("each lower boundary must lie below its upper boundary")
    recursion = _Recursion(fractions, drift)
    upper_probabilities, lower_probabilities = [], []
    for k in range(len(fractions)):
        upper_probabilities.append(recursion.exit_upper(uppers[k]))
        lower_probabilities.append(recursion.exit_lower(lowers[k]))
        recursion.advance(lowers[k], uppers[k])
    return upper_probabilities, lower_probabilities


def classical_boundaries(
    number_of_looks: int,
    alpha: float,
    shape: Literal["obrien_fleming", "pocock"],
    *,
    two_sided: bool = False,
) -> tuple[float, list[float]]:
    """The constant ``C`` and the boundaries of a classical design with equally spaced looks.

    O'Brien & Fleming: ``b_k = C·√(K/k)``; Pocock: ``b_k = C``. ``alpha`` is the overall level: of
    ``|Z_k| ≥ b_k`` when ``two_sided`` (Jennison & Turnbull's tables), of ``Z_k ≥ b_k`` otherwise.
    """
    if number_of_looks < 1:
        raise ValueError(f"number_of_looks must be at least 1, got {number_of_looks!r}")
    _check_alpha(alpha)
    fractions = [k / number_of_looks for k in range(1, number_of_looks + 1)]
    shape_factors = [1 / math.sqrt(t) if shape == "obrien_fleming" else 1.0 for t in fractions]

    def excess(constant: float) -> float:
        uppers = [constant * s for s in shape_factors]
        lowers = [-b for b in uppers] if two_sided else None
        up, down = crossing_probabilities(fractions, uppers, lowers)
        return sum(up) + sum(down) - alpha

    constant = optimize.brentq(excess, 0.1, 10.0, xtol=1e-10)
    return constant, [constant * s for s in shape_factors]


# ---------------------------------------------------------------------------------------------
# Planning: power and the maximum information


def fixed_design_information(alpha: float, power: float, effect: float) -> float:
    """Information a single one-sided z test at level ``alpha`` needs for ``power`` at ``effect``.

    ``((z_{1−α} + z_{power}) / effect)²``, where ``effect`` is in the units whose estimate has
    variance 1/information.
    """
    _check_alpha(alpha)
    _check_power(power)
    if not effect > 0:
        raise ValueError(f"effect must be positive, got {effect!r}")
    return float(((special.ndtri(1 - alpha) + special.ndtri(power)) / effect) ** 2)


def power(
    information_fractions: Sequence[float],
    alpha: float,
    drift: float,
    spending: SpendingFunction = OBRIEN_FLEMING_LIKE,
) -> float:
    """Probability of crossing an efficacy boundary when ``E[Z_k] = drift·√t_k``."""
    boundaries = efficacy_boundaries(information_fractions, alpha, spending)
    upper, _ = crossing_probabilities(information_fractions, boundaries, drift=drift)
    return sum(upper)


def inflation_factor(
    information_fractions: Sequence[float],
    alpha: float,
    power: float,
    spending: SpendingFunction = OBRIEN_FLEMING_LIKE,
) -> float:
    """Maximum information of the group-sequential design over the fixed design's, at equal power.

    The looks are planned at ``information_fractions`` (the last normally 1). Finds the drift at
    which the boundaries give ``power`` and squares its ratio to ``z_{1−α} + z_{power}``.
    """
    _check_power(power)
    fractions = _checked_fractions(information_fractions)
    boundaries = efficacy_boundaries(fractions, alpha, spending)
    fixed_drift = float(special.ndtri(1 - alpha) + special.ndtri(power))

    def shortfall(drift: float) -> float:
        upper, _ = crossing_probabilities(fractions, boundaries, drift=drift)
        return sum(upper) - power

    drift = optimize.brentq(shortfall, fixed_drift * 0.5, fixed_drift * 3.0, xtol=1e-10)
    return (drift / fixed_drift) ** 2


def required_information(
    alpha: float,
    power: float,
    effect: float,
    *,
    information_fractions: Sequence[float] | None = None,
    spending: SpendingFunction = OBRIEN_FLEMING_LIKE,
) -> float:
    """Maximum information for ``power`` at ``effect``; the fixed design's without planned looks.

    With ``information_fractions``, the fixed design's information times :func:`inflation_factor`.
    """
    fixed = fixed_design_information(alpha, power, effect)
    if information_fractions is None:
        return fixed
    return fixed * inflation_factor(information_fractions, alpha, power, spending)


# ---------------------------------------------------------------------------------------------
# The plan and its looks: plain values, for the experiments table


@dataclass(frozen=True)
class Plan:
    """A group-sequential plan: one-sided ``alpha``, the maximum information and the spending.

    ``maximum_information`` is in the same units as each look's ``information`` (posts, or the
    inverse variance of the effect estimate): only their ratio is used.
    """

    maximum_information: float
    alpha: float = 0.025
    spending: SpendingFunction = OBRIEN_FLEMING_LIKE

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not (math.isfinite(self.maximum_information) and self.maximum_information > 0):
            raise ValueError(f"maximum_information must be positive, got {self.maximum_information!r}")


@dataclass(frozen=True)
class Look:
    """One look of a plan, as a row of a looks table would store it."""

    information: float
    fraction: float  # information / maximum_information; may exceed 1
    statistic: float  # the z statistic of the effect at this look
    boundary: float  # +inf when nothing is left to spend
    alpha_spent_cumulative: float
    crosses: bool  # statistic >= boundary: stop for efficacy


def look(
    plan: Plan,
    information: float,
    statistic: float,
    earlier_information: Sequence[float] = (),
    *,
    final: bool = False,
) -> Look:
    """The boundary at a look with ``information`` so far, and whether ``statistic`` crosses it.

    ``earlier_information`` lists the information of the earlier looks, in order (the function
    keeps no state: the caller stores the looks). The boundaries depend only on the fractions, so
    the earlier looks' boundaries are the ones they had. ``final`` spends all of ``alpha`` that is
    left, whatever the fraction (the deadline ended the experiment).
    """
    if not math.isfinite(statistic):
        raise ValueError(f"statistic must be finite, got {statistic!r}")
    fractions = [i / plan.maximum_information for i in (*earlier_information, information)]
    if final:
        boundary = final_boundary(fractions[:-1], fractions[-1], plan.alpha, plan.spending)
        spent = plan.alpha
    else:
        boundary = efficacy_boundaries(fractions, plan.alpha, plan.spending)[-1]
        spent = plan.spending.cumulative(plan.alpha, min(fractions[-1], 1.0))
    return Look(
        information=float(information),
        fraction=fractions[-1],
        statistic=float(statistic),
        boundary=boundary,
        alpha_spent_cumulative=spent,
        crosses=statistic >= boundary,
    )


# ---------------------------------------------------------------------------------------------
# The recursion


class _Recursion:
    """The sub-density of Z_k on the paths still running, on a Simpson grid (J&T ch. 19)."""

    def __init__(self, fractions: Sequence[float], drift: float) -> None:
        self.fractions = list(fractions)
        self.drift = drift
        self.k = 0  # the next look to integrate to
        self.grid = np.empty(0)
        self.weighted_density = np.empty(0)  # Simpson weight × sub-density at each grid point

    def extended(self, fractions: Sequence[float]) -> _Recursion:
        """A copy at the same look whose schedule continues with more looks (``fractions`` starts
        with this one's). The arrays are shared: :meth:`advance` replaces them, never writes them."""
        copy = _Recursion(fractions, self.drift)
        copy.k, copy.grid, copy.weighted_density = self.k, self.grid, self.weighted_density
        return copy

    def _kernel_arguments(self, value: float) -> tuple[np.ndarray, float]:
        """Standardized ``value·√t_k − u·√t_{k−1} − δΔ`` over the previous grid, and √Δ."""
        t = self.fractions[self.k]
        t_previous = self.fractions[self.k - 1]
        root_delta = math.sqrt(t - t_previous)
        mean_shift = self.drift * (t - t_previous)
        return (value * math.sqrt(t) - self.grid * math.sqrt(t_previous) - mean_shift) / root_delta, root_delta

    def exit_upper(self, boundary: float) -> float:
        """P(no crossing before look k, Z_k ≥ boundary)."""
        if boundary == math.inf:
            return 0.0
        if self.k == 0:
            return float(special.ndtr(self.drift * math.sqrt(self.fractions[0]) - boundary))
        arguments, _ = self._kernel_arguments(boundary)
        return float(np.dot(self.weighted_density, special.ndtr(-arguments)))

    def exit_lower(self, boundary: float) -> float:
        """P(no crossing before look k, Z_k ≤ boundary)."""
        if boundary == -math.inf:
            return 0.0
        if self.k == 0:
            return float(special.ndtr(boundary - self.drift * math.sqrt(self.fractions[0])))
        arguments, _ = self._kernel_arguments(boundary)
        return float(np.dot(self.weighted_density, special.ndtr(arguments)))

    def advance(self, lower: float, upper: float) -> None:
        """Carry the sub-density to look k over its continuation region (lower, upper)."""
        t = self.fractions[self.k]
        mean = self.drift * math.sqrt(t)
        low = max(lower, mean - _GRID_HALF_WIDTH)
        high = min(upper, mean + _GRID_HALF_WIDTH)
        grid, weights = _simpson_grid(low, high, self._spacing())
        if self.k == 0:
            density = np.exp(-0.5 * (grid - mean) ** 2) / math.sqrt(2 * math.pi)
        else:
            t_previous = self.fractions[self.k - 1]
            root_delta = math.sqrt(t - t_previous)
            shift = self.drift * (t - t_previous)
            standardized = (
                grid[:, None] * math.sqrt(t) - self.grid[None, :] * math.sqrt(t_previous) - shift
            ) / root_delta
            kernel = np.exp(-0.5 * standardized**2) * (math.sqrt(t) / (root_delta * math.sqrt(2 * math.pi)))
            density = kernel @ self.weighted_density
        self.grid = grid
        self.weighted_density = weights * density
        self.k += 1

    def _spacing(self) -> float:
        """Grid spacing fine enough for the kernels into and out of the look being carried."""
        k, t = self.k, self.fractions
        kernel_sds = [math.sqrt((t[j] - t[j - 1]) / t[j - 1]) for j in (k, k + 1) if 1 <= j < len(t)]
        narrowest = min(kernel_sds, default=math.inf)
        return min(_MAX_GRID_SPACING, _GRID_SPACING_PER_KERNEL_SD * narrowest)


def _simpson_grid(low: float, high: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Odd number of equally spaced points over [low, high] and their composite Simpson weights."""
    if not high > low:
        return np.array([low]), np.zeros(1)
    intervals = 2 * max(1, math.ceil((high - low) / (2 * spacing)))
    intervals = min(intervals, _MAX_GRID_POINTS - 1)
    grid = np.linspace(low, high, intervals + 1)
    step = (high - low) / intervals
    weights = np.ones(intervals + 1)
    weights[1:-1:2] = 4
    weights[2:-1:2] = 2
    return grid, weights * step / 3


def _solve_boundary(recursion: _Recursion, target: float) -> float:
    """The b with P(no crossing before look k, Z_k ≥ b) = target, solved on the log scale."""
    # Z_k ≥ b without conditioning is at least as likely, so b at the unconditional quantile
    # crosses with probability at most target: an upper bracket.
    high = float(-special.ndtri(target))
    low = high - 1.0
    log_target = math.log(target)

    def log_excess(b: float) -> float:
        return math.log(max(recursion.exit_upper(b), 1e-320)) - log_target

    while log_excess(low) < 0:
        low -= 1.0
        if low < -40:
            raise ValueError("the spending asks for more than the paths still running can cross")
    if log_excess(high) >= 0:
        return high
    return float(optimize.brentq(log_excess, low, high, xtol=1e-10))


def _checked_fractions(information_fractions: Sequence[float]) -> list[float]:
    fractions = [float(t) for t in information_fractions]
    if not fractions:
        raise ValueError("at least one information fraction is needed")
    if not all(math.isfinite(t) and t > 0 for t in fractions):
        raise ValueError(f"information fractions must be positive and finite, got {fractions}")
    if any(b <= a for a, b in itertools.pairwise(fractions)):
        raise ValueError(f"information fractions must be strictly increasing, got {fractions}")
    return fractions


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def _check_power(power: float) -> None:
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
