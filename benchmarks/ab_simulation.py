"""A/A false-promotion rates and power of the experiment's decision rule, by simulation.

    python benchmarks/ab_simulation.py [--experiments N] [--looks K] [--seed S]

Simulates synthetic posts (ftp_demo.ab_simulation.AudienceModel), plans the sample with
the analysis's own required-sample calculation, evaluates every experiment at K evenly spaced
looks, and prints, with binomial standard errors:
- the A/A false-promotion rate of the sequential rule (always-valid interval) and of the naive
  rule (the same rule on the fixed-horizon interval at the same looks);
- the power: how often a true lift of the minimum detectable effect is promoted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ftp_demo.ab_simulation import AudienceModel, ExperimentDesign, planned_total_posts, simulate_experiments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=2000, help="simulated experiments per scenario")
    parser.add_argument("--looks", type=int, default=10, help="evaluations per experiment")
    parser.add_argument("--seed", type=int, default=20250106)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    audience, design = AudienceModel(), ExperimentDesign()
    started = time.perf_counter()
    total_posts = planned_total_posts(rng, audience, design)
    print(
        f"design: alpha {design.alpha}, challenger share {design.challenger_share}, "
        f"minimum detectable effect {design.minimum_detectable_effect:+.0%} at power {design.power:.0%}, "
        f"sequential tuning {design.sequential_tuning:g} posts"
    )
    print(f"{audience}")
    print(f"planned sample: {total_posts} posts over both arms, {args.looks} looks, {args.experiments} experiments")

    def rate(outcome) -> str:
        return (
            f"{outcome.promoted} of {outcome.experiments} = "
            f"{outcome.promotion_rate:.2%} ± {outcome.promotion_rate_standard_error:.2%} (binomial SE)"
        )

    null = simulate_experiments(
        rng, audience, design, true_lift=0.0, experiments=args.experiments, looks=args.looks, total_posts=total_posts
    )
    print(f"A/A false promotions, sequential rule: {rate(null.sequential)}")
    print(f"A/A false promotions, naive fixed-horizon rule: {rate(null.naive)}")
    effect = design.minimum_detectable_effect
    alternative = simulate_experiments(
        rng, audience, design, true_lift=effect, experiments=args.experiments, looks=args.looks, total_posts=total_posts
    )
    print(f"power at a true {effect:+.0%} lift, sequential rule: {rate(alternative.sequential)}")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
