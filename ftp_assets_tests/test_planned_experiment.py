"""Planned experiments through the plain steps, on PostgreSQL: the plan made from the posts before
the start, every evaluation a look in the looks table, the ramp written to the experiments table
the agent routes by, posts of the grace window left out, and an experiment started before plans
finishing under the rule it started with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ftp_assets.adapters.experiments_store import Experiment, ExperimentStore
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.domain.planned_looks import analyze_looks, planned_information
from ftp_assets.steps.experiment import (
    DecisionRule,
    ExperimentError,
    PlanSettings,
    evaluate_experiment,
    plan_experiment,
)
from ftp_assets_tests.corpus import post

AGENT = "gpt-4o-mini-2024-07-18"
CHALLENGER = "ft:hook:challenger"
START = datetime(2026, 11, 2, 9, tzinfo=UTC)  # a Monday
PERSONA_RATES = {"indie_dev": 0.03, "money_coach": 0.06, "fitness_coach": 0.045}
SETTINGS = PlanSettings(
    rule="group_sequential",
    one_sided_alpha=0.025,
    two_sided_alpha=0.05,
    spending="obrien_fleming",
    initial_share=0.1,
    ramped_share=0.5,
    ramp_min_challenger_posts=50,
    ramp_grace_minutes=60,
    maturity_hours=24,
    max_duration_hours=168,
    minimum_lift=0.0,
    srm_threshold=0.001,
    history_weeks=4,
    regression_adjustment=True,
)
RULE = DecisionRule(
    maturity_hours=24,
    alpha=0.05,
    minimum_lift=0.0,
    minimum_detectable_effect=0.1,
    max_duration_hours=168,
    srm_threshold=0.001,
)


@pytest.fixture
def posts(pg_posts_url) -> PostsDatabase:
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    return db


@pytest.fixture
def store(posts) -> ExperimentStore:
    store = ExperimentStore(posts.engine)
    store.init_schema()
    return store


class Writer:
    """Posts with persona-dependent rates, as an agent and its audience would leave them."""

    def __init__(self, db: PostsDatabase, seed: int):
        self.db, self.rng, self.next_id = db, np.random.default_rng(seed), 1

    def write(self, start: datetime, hours: float, per_hour: int, route=None, lift: float = 0.0) -> list[dict]:
        """``per_hour`` posts an hour from ``start``; ``route(post_id)`` picks the hook model."""
        rows = []
        for index in range(int(hours * per_hour)):
            post_id, self.next_id = self.next_id, self.next_id + 1
            persona = list(PERSONA_RATES)[int(self.rng.integers(len(PERSONA_RATES)))]
            model = route(post_id) if route else AGENT
            rate = PERSONA_RATES[persona] * (1 + lift if model == CHALLENGER else 1.0)
            impressions = int(self.rng.lognormal(np.log(500), 0.8)) + 1
            created_at = start + timedelta(hours=index / per_hour)
            row = post(
                post_id,
                f"Hook {post_id}",
                f"Body {post_id}",
                impressions=impressions,
                engagements=int(self.rng.binomial(impressions, rate)),
                created_at=created_at,
                persona_id=persona,
            )
            rows.append({**row, "hook_model": model})
        self.db.insert_posts(rows)
        return rows


def started(store: ExperimentStore, posts: PostsDatabase, settings: PlanSettings = SETTINGS) -> Experiment:
    plan = plan_experiment(posts, settings, started_at=START)
    return store.start(
        task="hook",
        champion_model=AGENT,
        challenger_model=CHALLENGER,
        challenger_share=settings.initial_share,
        started_at=START,
        registry_version="1",
        plan=plan,
    )


def test_the_plan_comes_from_the_posts_before_the_start(posts):
    Writer(posts, seed=1).write(START - timedelta(days=10), hours=10 * 24, per_hour=6)
    plan = plan_experiment(posts, SETTINGS, started_at=START)
    # 9 days of matured history (the last day before the start has not matured) at 6 posts an hour.
    expected, _ = planned_information(
        6.0,
        max_duration_hours=168,
        maturity_hours=24,
        initial_share=0.1,
        ramped_share=0.5,
        ramp_min_challenger_posts=50,
        ramp_grace_minutes=60,
    )
    assert plan.rule == "group_sequential" and plan.alpha == 0.025
    assert plan.maximum_information == pytest.approx(expected, rel=1e-9)
    assert plan.maximum_information_basis.startswith("1296 matured posts from 2026-10-23 09:00")
    covariates = plan.covariates
    assert covariates is not None and covariates.posts == 1296
    # The fit recovers the personas' order and, roughly, their rates.
    rates = covariates.persona_rates
    assert rates["indie_dev"] < rates["fitness_coach"] < rates["money_coach"]
    assert rates["money_coach"] == pytest.approx(0.06, rel=0.15)


def test_without_history_the_always_valid_rule_decides(posts):
    plan = plan_experiment(posts, SETTINGS, started_at=START)
    assert (plan.rule, plan.alpha, plan.maximum_information, plan.covariates) == ("always_valid", 0.05, None, None)
    assert "no matured posts in the 4 weeks before the start" in plan.maximum_information_basis
    assert plan.covariates_note == "only 0 matured posts before the start to fit covariates from"


def test_regression_adjustment_can_be_turned_off(posts):
    Writer(posts, seed=2).write(START - timedelta(days=5), hours=4 * 24, per_hour=4)
    plan = plan_experiment(posts, PlanSettings(**{**vars(SETTINGS), "regression_adjustment": False}), started_at=START)
    assert plan.covariates is None and plan.covariates_note == "regression adjustment is off"


def test_each_evaluation_is_a_recorded_look_and_the_share_ramps_for_the_agent(posts, store):
    writer = Writer(posts, seed=3)
    writer.write(START - timedelta(days=14), hours=14 * 24, per_hour=12)
    experiment = started(store, posts)
    assert experiment.phases is not None and len(experiment.phases) == 1
    decision, day, written = "continue", 0, []
    while decision == "continue" and day < 8:
        day += 1
        current = store.get(experiment.experiment_id)
        assert current is not None
        written += writer.write(
            START + timedelta(days=day - 1),
            hours=24,
            per_hour=12,
            route=lambda i, e=current: e.route(i).model,
            lift=0.12,
        )
        now = START + timedelta(days=day, minutes=1)
        # Each run starts two hours after its evaluation time: the switch is dated when it happens.
        evaluation = evaluate_experiment(
            store,
            posts,
            "hook",
            experiment_id=None,
            now=now,
            rule=RULE,
            wall_clock=lambda n=now: n + timedelta(hours=2),
        )
        decision = evaluation.result.decision

    looks = store.looks(experiment.experiment_id)
    assert [look.look_number for look in looks] == list(range(1, day + 1))
    assert decision == "promote" and "the challenger is better" in evaluation.result.reason
    # The recorded figures are the analysis of the looks' own data, recomputed independently.
    recomputed = analyze_looks(experiment.plan, [look.data for look in looks])
    assert (looks[-1].statistic, looks[-1].boundary) == (recomputed.statistic, recomputed.boundary)
    assert recomputed.statistic >= recomputed.boundary

    ramps = [look for look in looks if (look.analysis or {}).get("ramp_to")]
    assert len(ramps) == 1, "the share rises once"
    after = store.get(experiment.experiment_id)
    assert after is not None and after.challenger_share == 0.5 and after.phases is not None
    first, second = after.phases
    switch = ramps[0].evaluated_at + timedelta(hours=2)
    assert (first.ends_at, second.starts_at) == (switch - timedelta(hours=1), switch + timedelta(hours=1))
    # Later looks see two phases; the posts of the grace window count in neither.
    last = looks[-1].data
    matured = [row for row in written if row["created_at"] < looks[-1].evaluated_at - timedelta(hours=24)]
    in_phases = [
        row
        for row in matured
        if any(p.starts_at <= row["created_at"] < (p.ends_at or START + timedelta(days=30)) for p in after.phases)
    ]
    # The agent wrote posts in the grace window (whether they have matured by the deciding look
    # depends on the day the routing hash lets the challenger win); matured ones count nowhere.
    gap = [row for row in written if first.ends_at <= row["created_at"] < second.starts_at]
    assert len(gap) >= 12, "an hour of posts or more lies in the grace window"
    assert not [row for row in in_phases if row in gap]
    assert sum(p.control.n + p.treatment.n for p in last.phases) == len(in_phases)
    assert [p.share for p in last.phases] == [0.1, 0.5]


def test_a_retried_evaluation_repeats_its_look_and_time_only_moves_forward(posts, store):
    writer = Writer(posts, seed=4)
    writer.write(START - timedelta(days=7), hours=7 * 24, per_hour=8)
    experiment = started(store, posts)
    writer.write(START, hours=48, per_hour=8, route=lambda i: experiment.route(i).model)
    now = START + timedelta(days=2)
    first = evaluate_experiment(store, posts, "hook", experiment_id=None, now=now, rule=RULE)
    # New posts arrive; a retry of the same run still decides on what the look recorded.
    writer.write(START + timedelta(hours=48), hours=4, per_hour=8, route=lambda i: experiment.route(i).model)
    again = evaluate_experiment(store, posts, "hook", experiment_id=None, now=now, rule=RULE)
    assert again.result == first.result and len(store.looks(experiment.experiment_id)) == 1
    with pytest.raises(ExperimentError, match="looks move forward"):
        evaluate_experiment(store, posts, "hook", experiment_id=None, now=now - timedelta(hours=1), rule=RULE)


def test_an_experiment_started_before_plans_finishes_under_the_always_valid_rule(posts, store):
    writer = Writer(posts, seed=5)
    experiment = store.start(
        task="hook",
        champion_model=AGENT,
        challenger_model=CHALLENGER,
        challenger_share=0.1,
        started_at=START,
        registry_version="1",
    )
    assert experiment.plan is None
    writer.write(START, hours=48, per_hour=20, route=lambda i: experiment.route(i).model)
    evaluation = evaluate_experiment(store, posts, "hook", experiment_id=None, now=START + timedelta(days=3), rule=RULE)
    # The old analysis: a fixed-horizon interval for information, the chi-square SRM, no looks recorded.
    assert "fixed_ci_lower" in evaluation.result.statistics and "boundary" not in evaluation.result.statistics
    assert store.looks(experiment.experiment_id) == []


def test_a_grace_window_longer_than_the_maturity_is_refused_at_the_start(posts):
    # The look that ramps has counted the first phase's posts up to its maturity cut-off; a
    # longer grace window would take some of them out of the phase at the switch.
    settings = PlanSettings(**{**vars(SETTINGS), "maturity_hours": 0.5, "ramp_grace_minutes": 60})
    with pytest.raises(ExperimentError, match=r"ramp_grace_minutes \(60\) exceeds maturity_hours \(0.5 h\)"):
        plan_experiment(posts, settings, started_at=START)
