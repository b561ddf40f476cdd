"""Today's decision rule and the planned design, side by side on the same simulated experiments.

    python benchmarks/ab_simulation.py [--experiments N] [--power-experiments N] [--schedules K]
                                       [--seed S] [--processes P]

The generative model (``ftp_demo.ab_simulation.PostModel``: a fixed weekly schedule of 20,000
posts, five personas with different baselines, a weekday and hour pattern, heavy-tailed
impressions, 24 h maturity) is printed first with all its parameters. It runs in three variants:
with persona effects (the harder one); without them; and without them, calibrated to the issue's
stated reference (``PostModel.at_reference_noise``: quieter posts, so that one fixed-horizon look
at 10% has the 82% power at +5% the issue states), the model the ramp target is judged on. Then,
each with
its 95% Wilson interval, the median posts (in the deciding look's analysis) and hours to a
decision, and the median variance reduction of the regression adjustment at the deciding look:

- false promotions in A/A experiments at 10 planned looks and at 50 irregular looks, for today's
  rule (``analyze`` + ``decide``: two-sided 5% always-valid interval, fixed 10% share), the planned
  design at a fixed 10% share (``analyze_looks``, group-sequential, one-sided 2.5%) and the planned
  design ramping 10% → 50% with CUPED covariates; the same ``--experiments`` A/A experiments at
  both look schedules;
- power at a true +3%, +5% and +10% lift (10 planned looks) for the same three, and three
  ceilings on the same experiments: one fixed-horizon look at the deadline's sample of the 10%
  share, the same at a 50% share from the first post, and one at the deadline on the ramped
  design's own data (its phases, its adjusted estimator);

and last the issue's targets, each marked met or NOT MET with the reason (the ramp target is
judged on the reference variant's lower 95% bound and reported for the other two). Every rule
sees the same posts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# One BLAS thread per process: the processes are the parallelism, and BLAS threads on top of them
# oversubscribe the cores (on 2 cores the run took a third longer). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
from statsmodels.stats.proportion import proportion_confint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftp_assets.domain.experiment_plan import Covariates
from ftp_demo.ab_simulation import (
    CEILING,
    CEILINGS,
    EVEN_CEILING,
    FIXED_SHARE,
    RAMPED_ADJUSTED,
    RAMPED_CEILING,
    REFERENCE_FIXED_HORIZON_POWER,
    RULES,
    TODAY,
    PostModel,
    Results,
    Runner,
    irregular_schedules,
    model_key,
    planned_schedule,
    simulate,
)

AA_10, AA_50 = "A/A, 10 planned looks", "A/A, 50 irregular looks"
REFERENCE, NO_PERSONAS, PERSONAS = "no persona, quiet posts", "without persona effects", "with persona effects"
MODELS = {
    REFERENCE: PostModel.at_reference_noise(),
    NO_PERSONAS: PostModel().without_persona_effects(),
    PERSONAS: PostModel(),
}
LIFTS = (0.03, 0.05, 0.10)
AA_EXPERIMENTS = 10_000  # the minimum per A/A setting
POWER_EXPERIMENTS = 2_000  # per power setting (lift and model)
SENSITIVITY_LOG_SDS = (0.37, 0.4, 0.43, 0.46, 0.5, 0.55, 0.6)


def wilson(count: int, total: int) -> tuple[float, float]:
    low, high = proportion_confint(count, total, alpha=0.05, method="wilson")
    return float(low), float(high)


def pre_period_covariates(model: PostModel, seed: int) -> Covariates:
    """The variant's covariates, drawn once per variant and seed and shared by its experiments."""
    return model.pre_period_covariates(np.random.default_rng([seed, 4, *model_key(model)]))


def sensitivity(args: argparse.Namespace) -> None:
    """How the power at +5% falls as the posts' own rates spread more: the ramped, adjusted design
    and the fixed-horizon ceilings, on the model without persona effects at each post quality
    log-sd from the reference's to the default's (``--power-experiments`` each, 10 planned looks)."""
    started = time.perf_counter()
    print(f"POWER AT +5% AGAINST THE POST QUALITY LOG-SD (without persona effects; {args.power_experiments:,} each)")
    columns = {  # rule: its short header
        RAMPED_ADJUSTED.name: "ramp 10%→50% + CUPED",
        RAMPED_CEILING: "its fixed-horizon ceiling",
        CEILING: "fixed horizon at 10%",
        EVEN_CEILING: "fixed horizon at 50%",
    }
    print(f"{'log-sd':>6}  " + "  ".join(f"{header:>25}" for header in columns.values()))
    with Runner(args.processes) as runner:
        for log_sd in SENSITIVITY_LOG_SDS:
            model = replace(PostModel().without_persona_effects(), quality_log_sd=log_sd)
            covariates = pre_period_covariates(model, args.seed)
            results = simulate(
                model, covariates, lift=0.05, experiments=args.power_experiments, seed=args.seed,
                schedules={"10 planned": (planned_schedule(10),)}, ceiling=True, runner=runner,
            )["10 planned"]  # fmt: skip
            cells = []
            for column in columns:
                promoted = int(results.promoted[column].sum())
                low, high = wilson(promoted, results.experiments)
                cells.append(f"{f'{promoted / results.experiments:6.1%} [{low:6.1%}, {high:6.1%}]':>25}")
            print(f"{log_sd:>6g}  " + "  ".join(cells), flush=True)
    print(f"(elapsed {time.perf_counter() - started:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiments", type=int, default=AA_EXPERIMENTS, help="A/A experiments per variant (both look schedules)"
    )
    parser.add_argument("--power-experiments", type=int, default=POWER_EXPERIMENTS, help="per lift and variant")
    parser.add_argument("--schedules", type=int, default=5, help="distinct irregular schedules of 50 looks")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20250106)
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="instead: power at +5%% against the posts' spread (post quality log-sd), without persona effects",
    )
    args = parser.parse_args()
    if args.sensitivity:
        sensitivity(args)
        return
    started = time.perf_counter()

    print("THE GENERATIVE MODEL (ftp_demo/ab_simulation.py documents every parameter)")
    for line in MODELS[PERSONAS].describe():
        print(f"  {line}")
    print(f"  {NO_PERSONAS}: every persona at {MODELS[NO_PERSONAS].persona_rates[0]:.4g}")
    print(
        f"  {REFERENCE}: every persona at {MODELS[REFERENCE].persona_rates[0]:.4g} and post quality log-sd "
        f"{MODELS[REFERENCE].quality_log_sd:g} (calibrated to the issue's stated reference: a fixed-horizon look at "
        f"10% with {REFERENCE_FIXED_HORIZON_POWER:.0%} power at +5%; the ramp target is judged on this model)"
    )
    planned = {"10 planned": (planned_schedule(10),)}
    both = {**planned, "50 irregular": irregular_schedules(args.schedules, 50, seed=args.seed)}
    print(
        f"  looks: 10 planned (every 16.8 h); 50 irregular: {args.schedules} schedules of uniform times, "
        f"experiment i on schedule i mod {args.schedules}, the last look of each at 168 h"
    )
    print(
        f"  experiments per model: {args.experiments:,} A/A, each at 10 planned and at 50 irregular looks; "
        f"{args.power_experiments:,} per lift; seed {args.seed}; {args.processes} processes"
    )
    rows: list[tuple[str, str, str, Results]] = []  # model, setting, rule, results
    with Runner(args.processes) as runner:
        for number, (model_name, model) in enumerate(MODELS.items()):
            covariates = pre_period_covariates(model, args.seed)
            if number == 0:  # the plans' information depends only on the schedule, the same in every model
                for design in (FIXED_SHARE, RAMPED_ADJUSTED):
                    plan = design.plan(model, covariates)
                    print(
                        f"  {design.name}: maximum information {plan.maximum_information:.0f}: "
                        f"{plan.maximum_information_basis}"
                    )
            common = dict(seed=args.seed, runner=runner)
            aa = simulate(model, covariates, lift=0.0, experiments=args.experiments, schedules=both, **common)
            rows += [(model_name, AA_10, rule, aa["10 planned"]) for rule in RULES]
            rows += [(model_name, AA_50, rule, aa["50 irregular"]) for rule in RULES]
            for lift in LIFTS:
                power = simulate(
                    model, covariates, lift=lift, experiments=args.power_experiments, schedules=planned, ceiling=True,
                    **common,
                )["10 planned"]  # fmt: skip
                rows += [(model_name, f"power at {lift:+.0%}", rule, power) for rule in (*RULES, *CEILINGS)]
            print(f"  ({model_name}: done at {time.perf_counter() - started:.0f} s)", flush=True)

    print()
    header = (
        f"{'model':<23} {'setting':<23} {'rule':<46} {'n':>5} {'rate [95% Wilson]':>24} "
        f"{'med. posts':>10} {'med. h':>6} {'med. VR':>7}"
    )
    print(header)
    print("-" * len(header))
    figures: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    power_results = {(model_name, setting): results for model_name, setting, _, results in rows}
    reductions: dict[tuple[str, str], np.ndarray] = {}
    for model_name, setting, rule, results in rows:
        promoted = int(results.promoted[rule].sum())
        rate = promoted / results.experiments
        low, high = wilson(promoted, results.experiments)
        figures[model_name, setting, rule] = (rate, low, high)
        reduction = results.variance_reduction[rule]
        reduction = reduction[~np.isnan(reduction)]
        if rule == RAMPED_ADJUSTED.name:
            reductions[model_name, setting] = reduction
        median_reduction = f"{np.median(reduction):7.1%}" if reduction.size else f"{'—':>7}"
        print(
            f"{model_name:<23} {setting:<23} {rule:<46} {results.experiments:>5} "
            f"{f'{rate:6.2%} [{low:6.2%}, {high:6.2%}]':>24} {np.median(results.posts[rule]):>10.0f} "
            f"{np.median(results.hours[rule]):>6.1f} {median_reduction}"
        )
    print(
        "  med. VR: median variance reduction of the lift by the regression adjustment (CUPED) at the "
        "deciding look: 1 − adjusted/unadjusted variance"
    )

    print(f"\nVARIANCE REDUCTION of {RAMPED_ADJUSTED.name} at its deciding look, all its experiments")
    for model_name in MODELS:
        pooled = np.concatenate([r for (m, _), r in reductions.items() if m == model_name])
        q1, median, q3 = np.percentile(pooled, [25, 50, 75])
        print(f"  {model_name}: median {median:.1%} (quartiles {q1:.1%}, {q3:.1%}; {pooled.size} experiments)")

    print("\nTARGETS")

    def mark(ok: bool) -> str:
        return "met    " if ok else "NOT MET"

    for model_name in MODELS:
        for setting in (AA_10, AA_50):
            for rule in (FIXED_SHARE.name, RAMPED_ADJUSTED.name):
                rate, _, high = figures[model_name, setting, rule]
                print(
                    f"  {mark(high <= 0.03)} {setting}, {rule}, {model_name}: upper 95% bound of false "
                    f"promotions {high:.2%} <= 3% (rate {rate:.2%}; the design's own 2.5%)"
                )
    reference_ceiling, low, high = figures[REFERENCE, "power at +5%", CEILING]
    print(
        f"  {mark(abs(reference_ceiling - REFERENCE_FIXED_HORIZON_POWER) <= 0.03)} the reference model: one "
        f"fixed-horizon look at 10% has {reference_ceiling:.1%} [{low:.1%}, {high:.1%}] power at +5%, within 3 "
        f"points of the issue's {REFERENCE_FIXED_HORIZON_POWER:.0%} (a check of the model, not of a design)"
    )
    for model_name in MODELS:
        fixed = figures[model_name, "power at +5%", FIXED_SHARE.name][0]
        ceiling = figures[model_name, "power at +5%", CEILING][0]
        today = figures[model_name, "power at +5%", TODAY][0]
        power = power_results[model_name, "power at +5%"]
        gap = power.promoted[CEILING].astype(float) - power.promoted[FIXED_SHARE.name]  # paired: same experiments
        half = 1.96 * gap.std(ddof=1) / np.sqrt(gap.size)
        print(
            f"  {mark(ceiling - fixed <= 0.05)} power at +5%, fixed 10% share, {model_name}: {fixed:.1%} within 5 "
            f"points of the fixed-horizon ceiling {ceiling:.1%} ({gap.mean() * 100:.1f} points below, paired 95% "
            f"interval [{(gap.mean() - half) * 100:.1f}, {(gap.mean() + half) * 100:.1f}]; today's rule {today:.1%}, "
            f"{(ceiling - today) * 100:.1f} points below)"
        )
    for model_name in MODELS:
        rate, low, high = figures[model_name, "power at +5%", RAMPED_ADJUSTED.name]
        ceiling, ceiling_low, ceiling_high = figures[model_name, "power at +5%", RAMPED_CEILING]
        even, _, even_high = figures[model_name, "power at +5%", EVEN_CEILING]
        interval = f"{rate:.1%} [{low:.1%}, {high:.1%}]"
        ceilings = (
            f"its ceiling on the same data {ceiling:.1%} [{ceiling_low:.1%}, {ceiling_high:.1%}]; "
            f"a fixed-horizon look at 50% from the first post {even:.1%}"
        )
        if model_name == REFERENCE:
            print(
                f"  {mark(low >= 0.95)} power at +5% with ramping and adjustment, {model_name} (the target): "
                f"{interval}, lower 95% bound >= 95%; {ceilings}"
            )
            continue
        print(f"  report  power at +5% with ramping and adjustment, {model_name} (reported): {interval}; {ceilings}")
        if ceiling_high < 0.95:
            why = f"one fixed-horizon look with this estimator on the same ramped data promotes {ceiling:.1%}"
            if even_high < 0.95:
                why += (
                    f", and even a 50/50 split from the first post {even:.1%}: these 20,000 posts are too noisy "
                    f"for 95% at +5% with this estimator"
                )
            else:
                why += f"; a 50/50 split from the first post reaches {even:.1%}: the 10% phase costs the rest"
            print(f"          why below 95%: {why}")
        else:
            print(f"          the sequential design is {(ceiling - rate) * 100:.1f} points below its ceiling")
    elapsed = time.perf_counter() - started
    print(f"  {mark(elapsed <= 15 * 60)} runtime {elapsed:.0f} s <= 15 min")
    print(f"(elapsed {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
