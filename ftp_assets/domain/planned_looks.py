"""The analysis and decision at the last of an experiment's looks: one pure function over the plan
and the look history, used by the assets, the benchmark and a notebook alike::

    from ftp_assets.domain.planned_looks import analyze_looks

    analysis = analyze_looks(plan, looks)  # an ExperimentPlan, the LookData so far (oldest first)
    analysis.decision, analysis.reason, analysis.statistic, analysis.boundary, analysis.ramp_to

docs/experiment.md works an example through. What it computes, in order:

**Per phase** of the traffic ramp (posts at one challenger share), the relative lift of the
challenger's engagement rate Σx/Σy over the champion's, with its delta-method variance, as
:mod:`ftp_assets.domain.ab_stats` does. When the plan has covariates, each arm's rate is
regression-adjusted (CUPED for a ratio metric: Deng, Xu, Kohavi & Walker 2013, with the ratio
linearized as in Deng, Knoblich & Lu 2018): with m = (x − R·y)/ȳ the post's linearized rate and
w its covariates known before assignment (its persona's, weekday's and hour's pre-experiment rate),
θ = S_ww⁻¹·S_wm is pooled over both arms' within-arm (co)variances, and
R_adj = R − θ·(w̄_arm − w̄_both), with variance (Var m − 2θ·Cov(m, w) + θ·S_ww·θ)/n. The
achieved variance reduction is reported; without a usable covariate the phase is unadjusted.

**Across phases** the lifts are averaged with weights n_p·s_p·(1 − s_p) (the phase's posts times
its share's balance), never pooled: the challenger's share changes with time, so pooling its posts
would let a trend over the week pass for a lift (Simpson's paradox). The same sum is the look's
**information**, in effective posts: proportional to the inverse variance of the lift when the
per-post variance is stable, and increasing with every matured post, so looks are ordered by it.

**The decision rule.** ``group_sequential`` (the default): the look's z statistic
(lift − minimum_lift)/se against the Lan-DeMets error-spending boundary
(:mod:`ftp_assets.domain.group_sequential`) at the information fraction actually observed, one-sided
at ``alpha``. Only looks that added information and had data for a statistic spend error, so
skipped, irregular or repeated evaluations keep the rate; the final look (the deadline has passed,
or the fraction reached 1) spends all that is left. ``always_valid``: the always-valid interval of
:func:`~ftp_assets.domain.ab_stats.always_valid_multiplier` (two-sided ``alpha``), for teams that
look continuously; with one phase and no covariates it is the rule experiments used before plans.

**The order of the checks** at a look: (1) a sample-ratio mismatch in any phase rejects (the
sequential test of Lindon & Malek, :mod:`ftp_assets.domain.sequential_srm`, per phase, valid over
any number of looks); (2) without data for a statistic: continue, or reject at the deadline;
(3) promote on crossing (z ≥ boundary, or the always-valid lower bound above ``minimum_lift``);
(4) reject when the always-valid interval at ``guardrail_alpha`` (under the always-valid rule: its
own interval, at ``alpha``) lies below zero (the challenger is worse: a non-binding futility stop,
so it costs power but never error rate); (5) reject at the final
look; (6) ramp: in the first phase, once the challenger has ``ramp_min_challenger_posts`` posts and
the upper bound of that always-valid interval is above zero (no sign of harm), ``ramp_to`` tells the
caller to raise the share to ``ramped_share``; (7) continue.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
from scipy import special

from ftp_assets.domain.ab_stats import always_valid_multiplier, insufficient_data_reason
from ftp_assets.domain.experiment_plan import ArmSums, ExperimentPlan, LookData, PhaseLook
from ftp_assets.domain.group_sequential import SpendingFunction, efficacy_boundaries, final_boundary
from ftp_assets.domain.sequential_srm import log_bayes_factor

# Directions of the within-arm covariate scatter below this share of the covariates' raw second
# moments are treated as constant: those directions are left out of the adjustment.
_SINGULAR_RATIO = 1e-10
# Fractions are rounded to this many digits, so looks with equal counts share cached boundaries.
_FRACTION_DIGITS = 12


@dataclass(frozen=True)
class PhaseAnalysis:
    """One phase at the analyzed look."""

    share: float
    n_control: int
    n_treatment: int
    information: float  # (n_control + n_treatment)·share·(1 − share)
    rate_control: float | None  # adjusted when the phase is adjusted
    rate_treatment: float | None
    lift: float | None
    standard_error: float | None
    unadjusted_lift: float | None
    unadjusted_standard_error: float | None
    srm_p_value: float  # sequential (anytime-valid) over the looks of this phase
    insufficient_data_reason: str | None


@dataclass(frozen=True)
class LookBoundary:
    """A look that spent error: where its boundary stood (the statistic is the caller's record)."""

    look_number: int  # 1-based position in the looks given
    evaluated_at: datetime
    information: float
    information_fraction: float | None  # None under the always-valid rule (no maximum)
    boundary: float | None  # None under the always-valid rule
    alpha_spent: float | None  # cumulative


@dataclass(frozen=True)
class LookAnalysis:
    """The analysis and decision at the last look; the plan's settings are in ``plan``."""

    decision: Literal["promote", "reject", "continue"]
    reason: str
    ramp_to: float | None  # the share to raise the challenger to now, when the guardrail passed
    rule: str
    look_number: int
    evaluated_at: datetime
    final: bool  # the last look the plan allows: it spent all that was left
    n_control: int
    n_treatment: int
    information: float
    information_fraction: float | None
    statistic: float | None  # (lift − minimum_lift)/se
    boundary: float | None
    alpha_spent: float | None
    lift: float | None
    standard_error: float | None
    unadjusted_standard_error: float | None
    variance_reduction: float | None  # 1 − adjusted/unadjusted variance of the lift
    adjustment: str  # what adjusted the lift, or why nothing did
    ci_lower: float | None  # the always-valid interval (guardrail_alpha, or alpha under that rule)
    ci_upper: float | None
    detectable_lift: float | None  # the lift found with 80% power at the planned information
    srm_p_value: float  # the smallest over the phases
    phases: tuple[PhaseAnalysis, ...]
    boundaries: tuple[LookBoundary, ...]  # every look that spent error, this one included
    insufficient_data_reason: str | None


def analyze_looks(plan: ExperimentPlan, looks: Sequence[LookData]) -> LookAnalysis:
    """The analysis and decision at ``looks[-1]``, given the plan and every earlier look.

    Each look holds, per phase in order, both arms' cumulative sums of the matured posts
    (:class:`~ftp_assets.domain.experiment_plan.LookData`). Looks must be in time order with
    phases that only grow in number; each phase's share must be the one the plan gave it.
    """
    if not looks:
        raise ValueError("at least one look is needed")
    _check_looks(plan, looks)
    last = looks[-1]
    counted = _counted_looks(looks)
    # The look analyzed: the last one, or, when it added no information, the last that did.
    current = counted[-1] if counted else len(looks) - 1
    data = looks[current]
    deadline = plan.started_at + timedelta(hours=plan.max_duration_hours)
    past_deadline = last.evaluated_at >= deadline

    phases = tuple(_analyze_phase(plan, looks, index, phase) for index, phase in enumerate(data.phases))
    information = sum(phase.information for phase in phases if phase.lift is not None)
    n_control = sum(p.n_control for p in phases)
    n_treatment = sum(p.n_treatment for p in phases)
    estimated = [p for p in phases if p.lift is not None]
    lift = standard_error = unadjusted_se = variance_reduction = None
    if estimated:
        weights = np.array([p.information for p in estimated])
        weights = weights / weights.sum()
        lift = float(weights @ [p.lift for p in estimated])
        standard_error = math.sqrt(float(weights**2 @ [p.standard_error**2 for p in estimated]))  # type: ignore[operator]
        unadjusted_se = math.sqrt(float(weights**2 @ [p.unadjusted_standard_error**2 for p in estimated]))  # type: ignore[operator]
        variance_reduction = 1 - (standard_error / unadjusted_se) ** 2 if unadjusted_se > 0 else None
    adjustment = _adjustment_note(plan, variance_reduction, estimated, data.phases[0].control.covariates > 0)
    srm_p_value = min(p.srm_p_value for p in phases)
    insufficient = None
    if standard_error is None or not standard_error > 0:
        reasons = [
            f"phase {i + 1}: {p.insufficient_data_reason}" for i, p in enumerate(phases) if p.insufficient_data_reason
        ]
        insufficient = "; ".join(reasons) if len(phases) > 1 else phases[0].insufficient_data_reason
        insufficient = insufficient or "zero variance: within each arm every post has the same engagement rate"
        lift = standard_error = unadjusted_se = variance_reduction = None

    av_alpha = plan.alpha if plan.rule == "always_valid" else plan.guardrail_alpha
    ci_lower = ci_upper = statistic = None
    if lift is not None and standard_error is not None:
        half_width = always_valid_multiplier(n_control + n_treatment, av_alpha, plan.sequential_tuning) * standard_error
        ci_lower, ci_upper = lift - half_width, lift + half_width
        statistic = (lift - plan.minimum_lift) / standard_error

    boundaries, final = _boundaries(plan, looks, counted, past_deadline)
    this_look = boundaries[-1] if boundaries and boundaries[-1].look_number == current + 1 else None
    boundary = this_look.boundary if this_look else None
    detectable = _detectable_lift(plan, standard_error, information)

    def result(decision: Literal["promote", "reject", "continue"], reason: str, ramp_to: float | None = None):
        return LookAnalysis(
            decision=decision,
            reason=reason,
            ramp_to=ramp_to,
            rule=plan.rule,
            look_number=len(looks),
            evaluated_at=last.evaluated_at,
            final=final,
            n_control=n_control,
            n_treatment=n_treatment,
            information=information,
            information_fraction=this_look.information_fraction if this_look else _fraction(plan, information),
            statistic=statistic,
            boundary=boundary,
            alpha_spent=this_look.alpha_spent if this_look else None,
            lift=lift,
            standard_error=standard_error,
            unadjusted_standard_error=unadjusted_se,
            variance_reduction=variance_reduction,
            adjustment=adjustment,
            ci_lower=ci_lower,
            ci_upper=ci_upper,
            detectable_lift=detectable,
            srm_p_value=srm_p_value,
            phases=phases,
            boundaries=boundaries,
            insufficient_data_reason=insufficient,
        )

    elapsed = (last.evaluated_at - plan.started_at).total_seconds() / 3600
    timeout = f"the maximum duration of {plan.max_duration_hours:g} h has passed ({elapsed:.1f} h)"
    mismatched = [(i, p) for i, p in enumerate(phases) if p.srm_p_value < plan.srm_alpha]
    if mismatched:
        index, phase = mismatched[0]
        return result(
            "reject",
            f"sample ratio mismatch in phase {index + 1}: {phase.n_control} champion and {phase.n_treatment} "
            f"challenger posts do not match the challenger share {phase.share:g} (sequential p = "
            f"{phase.srm_p_value:.3g} < {plan.srm_alpha:g}); the arms are not comparable",
        )
    if lift is None or statistic is None or ci_lower is None or ci_upper is None:
        if past_deadline:
            return result("reject", f"{timeout} without enough data: {insufficient}")
        return result("continue", f"not enough data yet: {insufficient}")

    estimate = f"lift {lift:+.2%} (se {standard_error:.2%}{_reduction_words(variance_reduction)})"
    interval = f"always-valid {1 - av_alpha:.0%} interval [{ci_lower:+.2%}, {ci_upper:+.2%}]"
    if plan.rule == "group_sequential":
        assert boundary is not None and this_look is not None and this_look.information_fraction is not None
        against = (
            f"z = {statistic:.2f} against the boundary {boundary:.2f} at information fraction "
            f"{this_look.information_fraction:.2f} (one-sided alpha {plan.alpha:g}, {this_look.alpha_spent:.4f} spent)"
        )
        if statistic >= boundary:
            return result("promote", f"{estimate}: {against}; the challenger is better")
    else:
        against = interval
        if ci_lower > plan.minimum_lift:
            return result("promote", f"{estimate}: {interval} lies above the minimum lift {plan.minimum_lift:+.2%}")
    if ci_upper < 0:
        return result("reject", f"{estimate}: {interval} lies below zero: the challenger is worse")
    if final:
        ended = timeout if past_deadline else "the planned maximum information is reached"
        return result("reject", f"{ended} without promotion: {estimate}, {against}")
    first = phases[0]
    if (
        plan.ramps
        and len(last.phases) == 1  # not once the share has risen (a later look may repeat this one's data)
        and first.share < plan.ramped_share
        and first.n_treatment >= plan.ramp_min_challenger_posts
        and ci_upper > 0
    ):
        return result(
            "continue",
            f"{estimate}, {against}; no sign of harm after {first.n_treatment} challenger posts "
            f"({interval} reaches above zero): the challenger's share rises to {plan.ramped_share:.0%}",
            ramp_to=plan.ramped_share,
        )
    return result("continue", f"{estimate} is inconclusive: {against}")


def planned_information(
    posts_per_hour: float,
    *,
    max_duration_hours: float,
    maturity_hours: float,
    initial_share: float,
    ramped_share: float,
    ramp_min_challenger_posts: int,
    ramp_grace_minutes: float,
) -> tuple[float, str]:
    """The maximum information (effective posts) the experiment should reach by its deadline at
    ``posts_per_hour``, and how it was found, in words.

    The deadline's look sees the posts created up to ``maturity_hours`` before it. With a ramp, the
    first phase lasts until the challenger has ``ramp_min_challenger_posts`` matured posts; the
    grace window around the switch counts in neither phase.
    """
    if not posts_per_hour > 0:
        raise ValueError(f"posts_per_hour must be positive, got {posts_per_hour!r}")
    window = max_duration_hours - maturity_hours
    if not window > 0:
        raise ValueError(
            f"the maximum duration ({max_duration_hours:g} h) must exceed the maturity ({maturity_hours:g} h)"
        )
    grace = ramp_grace_minutes / 60

    def balance(share: float) -> float:
        return share * (1 - share)

    basis = f"{posts_per_hour:.1f} posts an hour over the {window:g} h whose posts mature by the deadline"
    switch = maturity_hours + ramp_min_challenger_posts / (posts_per_hour * initial_share)
    if ramped_share <= initial_share or switch >= window:
        return posts_per_hour * window * balance(initial_share), f"{basis}, all at share {initial_share:g}"
    first = posts_per_hour * (switch - grace) * balance(initial_share)
    second = posts_per_hour * max(window - switch - grace, 0.0) * balance(ramped_share)
    return first + second, (
        f"{basis}: share {initial_share:g} until about {switch:.0f} h, then {ramped_share:g} (grace {grace * 2:g} h)"
    )


# ---------------------------------------------------------------------------------------------


def information_of(look: LookData) -> float:
    """Effective posts of a look: Σ over the phases that have an estimate of posts·share·(1 − share)."""
    return look.information


def _check_looks(plan: ExperimentPlan, looks: Sequence[LookData]) -> None:
    for earlier, later in itertools.pairwise(looks):
        if not later.evaluated_at > earlier.evaluated_at:
            raise ValueError(f"looks must be in time order: {later.evaluated_at} after {earlier.evaluated_at}")
        if len(later.phases) < len(earlier.phases):
            raise ValueError("a later look cannot have fewer phases than an earlier one")
    for look in looks:
        if not look.phases:
            raise ValueError("a look has at least one phase")
        if len(look.phases) > 1 and not plan.ramps:
            raise ValueError("a plan without a ramp has one phase")
        if look.phases[0].share != plan.initial_share:
            raise ValueError(f"the first phase runs at the plan's initial share {plan.initial_share}")
        for phase in look.phases[1:]:
            if phase.share != plan.ramped_share:
                raise ValueError(f"a ramped phase runs at the plan's ramped share {plan.ramped_share}")
        if len(look.covariate_widths) > 1:
            raise ValueError("every arm of a look has the same covariates")


def _counted_looks(looks: Sequence[LookData]) -> list[int]:
    """Indexes of the looks that spend error: each added information and had data for a statistic."""
    counted: list[int] = []
    best = 0.0
    for index, look in enumerate(looks):
        information = information_of(look)
        if information > best:
            counted.append(index)
            best = information
    return counted


def _fraction(plan: ExperimentPlan, information: float) -> float | None:
    if plan.maximum_information is None:
        return None
    return round(information / plan.maximum_information, _FRACTION_DIGITS)


def _boundaries(
    plan: ExperimentPlan, looks: Sequence[LookData], counted: list[int], past_deadline: bool
) -> tuple[tuple[LookBoundary, ...], bool]:
    """The boundary of every counted look, and whether the analyzed look is the final one."""
    informations = [information_of(looks[i]) for i in counted]
    if plan.rule == "always_valid" or plan.maximum_information is None:
        rows = tuple(
            LookBoundary(i + 1, looks[i].evaluated_at, info, None, None, None)
            for i, info in zip(counted, informations, strict=True)
        )
        return rows, past_deadline
    fractions = tuple(_fraction(plan, info) or 0.0 for info in informations)
    if not fractions:
        return (), past_deadline
    # A look at or past the maximum information ends the experiment; so does the deadline.
    final = past_deadline or fractions[-1] >= 1
    spending = SpendingFunction(plan.spending, plan.spending_gamma)  # type: ignore[arg-type]
    # Both are cached by schedule prefix in group_sequential: a new look costs one more step.
    bounds = (
        [
            *efficacy_boundaries(fractions[:-1], plan.alpha, spending),
            final_boundary(fractions[:-1], fractions[-1], plan.alpha, spending),
        ]
        if final and len(fractions) > 1
        else [final_boundary([], fractions[0], plan.alpha, spending)]
        if final
        else efficacy_boundaries(fractions, plan.alpha, spending)
    )
    spent = [_spent(spending, plan.alpha, t) for t in fractions]
    if final:
        spent[-1] = plan.alpha
    rows = tuple(
        LookBoundary(i + 1, looks[i].evaluated_at, info, t, b, a)
        for i, info, t, b, a in zip(counted, informations, fractions, bounds, spent, strict=True)
    )
    return rows, final


@functools.lru_cache(maxsize=65536)
def _spent(spending: SpendingFunction, alpha: float, fraction: float) -> float:
    return spending.cumulative(alpha, min(fraction, 1.0))


def _detectable_lift(plan: ExperimentPlan, standard_error: float | None, information: float) -> float | None:
    """The true lift promoted with 80% power at the planned information, from this look's
    variance: (z_{1−α} + z_{0.8})·se scaled to the maximum information (fixed-horizon terms)."""
    if standard_error is None or plan.maximum_information is None or information <= 0:
        return None
    one_sided = plan.alpha if plan.rule == "group_sequential" else plan.alpha / 2
    z_sum = float(special.ndtri(1 - one_sided) + special.ndtri(0.8))
    return plan.minimum_lift + z_sum * standard_error * math.sqrt(information / plan.maximum_information)


def _adjustment_note(
    plan: ExperimentPlan, reduction: float | None, estimated: Sequence[PhaseAnalysis], covariate_sums: bool
) -> str:
    if plan.covariates is None:
        return f"unadjusted: {plan.covariates_note or 'the plan has no covariates'}"
    if reduction is None or not estimated:
        return "unadjusted: no estimate yet"
    if not covariate_sums:
        return "unadjusted: the looks carry no covariate sums"
    if all(p.unadjusted_standard_error == p.standard_error for p in estimated):
        return "unadjusted: the covariates did not vary within the arms (or adjusted a rate to zero)"
    covariates = plan.covariates
    return (
        f"regression-adjusted (CUPED) on the persona's, weekday's and hour's engagement rate over "
        f"{covariates.posts} posts before the start: variance {reduction:+.1%} lower"
    )


def _reduction_words(reduction: float | None) -> str:
    # Noise covariates can cost a hair of variance: say nothing below half a percent either way.
    if reduction is None or abs(reduction) < 0.005:
        return ""
    return f", {reduction:.0%} less variance from the covariates"


def _analyze_phase(plan: ExperimentPlan, looks: Sequence[LookData], index: int, phase: PhaseLook) -> PhaseAnalysis:
    control, treatment = phase.control, phase.treatment
    counts = [
        (look.phases[index].control.n, look.phases[index].treatment.n) for look in looks if len(look.phases) > index
    ]
    srm = _srm_p_value(counts, phase.share, plan.srm_prior_concentration)
    information = phase.information
    reason = insufficient_data_reason(control.stats(), treatment.stats())
    empty = PhaseAnalysis(
        phase.share, control.n, treatment.n, information, None, None, None, None, None, None, srm, reason
    )
    if reason is not None:
        return empty
    if plan.covariates is None:  # sums the plan never asked for do not adjust anything
        control, treatment = control.without_covariates(), treatment.without_covariates()
    rate_c, var_c, rate_t, var_t, rate_c0, var_c0, rate_t0, var_t0 = _adjusted_rates(control, treatment)
    lift, lift_variance = _relative_lift(rate_c, var_c, rate_t, var_t)
    lift0, lift_variance0 = _relative_lift(rate_c0, var_c0, rate_t0, var_t0)
    if not (lift_variance > 0 and lift_variance0 > 0):
        return PhaseAnalysis(
            phase.share, control.n, treatment.n, information, rate_c0, rate_t0, None, None, None, None, srm,
            "zero variance: within each arm every post has the same engagement rate",
        )  # fmt: skip
    return PhaseAnalysis(
        share=phase.share,
        n_control=control.n,
        n_treatment=treatment.n,
        information=information,
        rate_control=rate_c,
        rate_treatment=rate_t,
        lift=lift,
        standard_error=math.sqrt(lift_variance),
        unadjusted_lift=lift0,
        unadjusted_standard_error=math.sqrt(lift_variance0),
        srm_p_value=srm,
        insufficient_data_reason=None,
    )


def _srm_p_value(counts: Sequence[tuple[int, int]], share: float, prior_concentration: float) -> float:
    """The sequential sample-ratio p-value over a phase's looks: the smallest 1/BF so far, capped
    at 1 (sequential_srm's running minimum, for all looks in one vectorized call)."""
    # Counts that shrink (a matured post deleted or corrected into impossible counts) are scored
    # as they are: refusing them would leave the experiment unable to decide.
    array = np.asarray(counts, dtype=np.float64)
    log_bf = log_bayes_factor(array, [1 - share, share], prior_concentration)
    return float(min(1.0, np.exp(-np.max(log_bf))))


def _relative_lift(rate_c: float, var_c: float, rate_t: float, var_t: float) -> tuple[float, float]:
    """rate_t/rate_c − 1 and its delta-method variance (gbstats' relative case)."""
    return rate_t / rate_c - 1, var_t / rate_c**2 + var_c * rate_t**2 / rate_c**4


def _adjusted_rates(control: ArmSums, treatment: ArmSums) -> tuple[float, ...]:
    """(rate, variance of the rate) of control then treatment, adjusted then unadjusted."""
    arms = (control, treatment)
    rates = [arm.sum_x / arm.sum_y for arm in arms]
    unit_variances = [arm.stats().rate_unit_variance() for arm in arms]
    unadjusted = [value for arm, r, v in zip(arms, rates, unit_variances, strict=True) for value in (r, v / arm.n)]
    if control.covariates == 0:
        return (*unadjusted, *unadjusted)
    # Within-arm covariance of w, and of w with the linearized rate m = (x − R·y)/ȳ, times (n − 1).
    scatter_ww = np.zeros((control.covariates, control.covariates))
    scatter_wm = np.zeros(control.covariates)
    per_arm = []
    for arm, rate in zip(arms, rates, strict=True):
        n, mean_y = arm.n, arm.sum_y / arm.n
        sum_w = np.array(arm.sum_w)
        s_ww = np.array(arm.sum_ww) - np.outer(sum_w, sum_w) / n
        s_wm = (
            np.array(arm.sum_xw) - arm.sum_x * sum_w / n - rate * (np.array(arm.sum_yw) - arm.sum_y * sum_w / n)
        ) / (mean_y)
        scatter_ww += s_ww
        scatter_wm += s_wm
        per_arm.append((s_ww / (n - 1), s_wm / (n - 1), sum_w / n))
    # Directions in which w hardly varies within the arms are left out: their scatter is rounding
    # noise (Σww − ΣwΣwᵀ/n of a constant rate), far below the raw second moments it came from.
    raw_scale = max(float(np.max(np.diag(np.array(control.sum_ww) + np.array(treatment.sum_ww)))), 1e-300)
    eigenvalues, eigenvectors = np.linalg.eigh(scatter_ww)
    kept = eigenvalues > _SINGULAR_RATIO * raw_scale
    if not kept.any():
        return (*unadjusted, *unadjusted)
    inverse = (eigenvectors[:, kept] / eigenvalues[kept]) @ eigenvectors[:, kept].T
    theta = inverse @ scatter_wm
    both_mean_w = (np.array(control.sum_w) + np.array(treatment.sum_w)) / (control.n + treatment.n)
    adjusted = []
    for arm, rate, unit_variance, (cov_ww, cov_wm, mean_w) in zip(arms, rates, unit_variances, per_arm, strict=True):
        adjusted_rate = rate - float(theta @ (mean_w - both_mean_w))
        # Never below zero: rounding of a fit that explains (almost) everything.
        residual = max(unit_variance - 2 * float(theta @ cov_wm) + float(theta @ cov_ww @ theta), 0.0)
        adjusted += [adjusted_rate, residual / arm.n]
    if not (adjusted[0] > 0 and adjusted[2] > 0):  # a rate adjusted to zero or below: no relative lift
        return (*unadjusted, *unadjusted)
    return (*adjusted, *unadjusted)
