"""The experiment plan's values: JSON round trips, sums against numpy, phases and covariates by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from ftp_assets.domain.experiment_plan import (
    SHRINKAGE_IMPRESSIONS,
    ArmSums,
    Covariates,
    ExperimentPlan,
    LookData,
    Phase,
    PhaseLook,
    PreExperimentCell,
    fit_covariates,
    phases_from_json,
    phases_to_json,
    ramped_phases,
)

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # a Monday


def covariates() -> Covariates:
    return Covariates(
        persona_rates={"p1": 0.031, "p2": 0.0625, "p3": 1 / 3},
        weekday_rates=tuple(0.01 * (d + 1) for d in range(7)),
        hour_rates=tuple(0.001 * (h + 1) for h in range(24)),
        overall_rate=0.0437,
        posts=812,
        since=START - timedelta(days=28),
        until=START,
    )


def arrays(seed: int, n: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.poisson(300, n).astype(float)
    x = rng.binomial(y.astype(int), 0.05).astype(float)
    return x, y, rng.uniform(0.01, 0.1, size=(n, width))


# --- JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_covariates", [False, True])
def test_experiment_plan_round_trips_through_json(with_covariates):
    plan = ExperimentPlan(
        rule="group_sequential",
        alpha=0.025,
        maximum_information=1234.5678901234567,
        maximum_information_basis="12.3 posts an hour",
        started_at=START,
        max_duration_hours=100.5,
        spending="hwang_shih_decani",
        spending_gamma=-4.0,
        minimum_lift=0.01,
        initial_share=0.15,
        ramped_share=0.45,
        ramp_min_challenger_posts=321,
        ramp_grace_minutes=30.0,
        guardrail_alpha=0.1,
        srm_alpha=0.0005,
        srm_prior_concentration=500.0,
        sequential_tuning=7000.0,
        covariates=covariates() if with_covariates else None,
        covariates_note="" if with_covariates else "fewer than 200 pre-experiment posts",
    )
    text = plan.to_json()
    back = ExperimentPlan.from_json(text)
    assert back == plan
    assert back.to_json() == text
    assert back.started_at.utcoffset() == timedelta(0)
    if with_covariates:
        assert isinstance(back.covariates, Covariates)
        assert back.covariates.weekday_rates == plan.covariates.weekday_rates
        assert back.covariates.persona_rates["p3"] == 1 / 3


def test_experiment_plan_from_json_ignores_keys_of_a_later_version_and_fills_defaults():
    values = {
        "rule": "always_valid",
        "alpha": 0.05,
        "maximum_information": None,
        "maximum_information_basis": "",
        "started_at": "2025-03-03T09:00:00+00:00",
        "a_setting_from_the_future": 1,
    }
    plan = ExperimentPlan.from_json(json.dumps(values))
    assert plan.started_at == START and plan.covariates is None and plan.ramped_share == 0.5


def test_look_data_round_trips_with_covariate_sums_and_phases():
    x, y, w = arrays(1, 50, 3)
    look = LookData(
        START + timedelta(hours=30),
        (
            PhaseLook(0.1, ArmSums.from_arrays(x[:40], y[:40], w[:40]), ArmSums.from_arrays(x[40:], y[40:], w[40:])),
            PhaseLook(0.5, ArmSums.empty(3), ArmSums.from_arrays(x[:2], y[:2], w[:2])),
        ),
    )
    back = LookData.from_json(look.to_json())
    assert back == look
    assert back.phases[0].control.sum_ww == look.phases[0].control.sum_ww
    without = LookData(START, (PhaseLook(0.1, ArmSums.from_arrays(x, y), ArmSums()),))
    assert LookData.from_json(without.to_json()) == without
    assert set(json.loads(without.to_json())["phases"][0]["control"]) == {
        "n",
        "sum_x",
        "sum_y",
        "sum_x2",
        "sum_y2",
        "sum_xy",
    }


def test_phases_round_trip_with_their_time_zones():
    phases = (
        Phase(0.1, START, START + timedelta(hours=20)),
        Phase(0.5, START + timedelta(hours=22), None),
        Phase(0.5, datetime(2025, 3, 4, tzinfo=timezone(timedelta(hours=2)))),
    )
    back = phases_from_json(phases_to_json(phases))
    assert back == phases
    assert back[2].starts_at.utcoffset() == timedelta(hours=2)


def test_arm_sums_refuse_unknown_fields_and_ragged_covariates():
    with pytest.raises(ValueError):
        ArmSums.from_dict({"n": 1, "sum_x": 1.0, "sum_z": 2.0})
    with pytest.raises(ValueError):
        ArmSums(n=2, sum_x=1, sum_y=2, sum_x2=1, sum_y2=2, sum_xy=1, sum_w=(1.0,), sum_ww=((1.0, 2.0),))


# --- ArmSums --------------------------------------------------------------------------------------


def test_arm_sums_from_arrays_match_numpy():
    x, y, w = arrays(2, 200, 3)
    sums = ArmSums.from_arrays(x, y, w)
    assert sums.n == 200 and sums.covariates == 3
    assert (sums.sum_x, sums.sum_y, sums.sum_x2, sums.sum_y2, sums.sum_xy) == pytest.approx(
        (np.sum(x), np.sum(y), np.dot(x, x), np.dot(y, y), np.dot(x, y)), rel=1e-12
    )
    assert np.allclose(sums.sum_w, w.sum(axis=0), rtol=1e-12)
    assert np.allclose(sums.sum_ww, np.einsum("ni,nj->ij", w, w), rtol=1e-12)
    assert np.allclose(sums.sum_xw, (x[:, None] * w).sum(axis=0), rtol=1e-12)
    assert np.allclose(sums.sum_yw, (y[:, None] * w).sum(axis=0), rtol=1e-12)
    assert sums.without_covariates() == ArmSums.from_arrays(x, y)
    assert sums.stats().rate == pytest.approx(x.sum() / y.sum())


def test_arm_sums_add_as_the_sums_of_the_concatenated_posts():
    x, y, w = arrays(3, 300, 2)
    added = ArmSums.from_arrays(x[:120], y[:120], w[:120]) + ArmSums.from_arrays(x[120:], y[120:], w[120:])
    whole = ArmSums.from_arrays(x, y, w)
    assert added.n == whole.n
    for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy", "sum_w", "sum_ww", "sum_xw", "sum_yw"):
        assert np.allclose(getattr(added, name), getattr(whole, name), rtol=1e-12), name
    assert ArmSums.empty(2) + whole == whole
    assert ArmSums() + ArmSums.from_arrays(x, y) == ArmSums.from_arrays(x, y)
    with pytest.raises(ValueError):
        whole + ArmSums.from_arrays(x, y)


def test_arm_sums_refuse_arrays_of_the_wrong_shape():
    x, y, w = arrays(4, 10, 2)
    with pytest.raises(ValueError):
        ArmSums.from_arrays(x, y[:-1])
    with pytest.raises(ValueError):
        ArmSums.from_arrays(x, y, w[:-1])
    with pytest.raises(ValueError):
        ArmSums.from_arrays(x, y, w[:, 0])


# --- ramped_phases --------------------------------------------------------------------------------


def test_ramped_phases_leave_a_grace_gap_on_both_sides_of_the_switch():
    switch = START + timedelta(hours=30)
    before = (Phase(0.1, START),)
    after = ramped_phases(before, share=0.5, switch_at=switch, grace_minutes=45)
    assert after == (
        Phase(0.1, START, switch - timedelta(minutes=45)),
        Phase(0.5, switch + timedelta(minutes=45)),
    )
    assert after[1].starts_at - after[0].ends_at == timedelta(minutes=90)
    # An earlier closed phase is kept as it was.
    again = ramped_phases(after, share=0.6, switch_at=switch + timedelta(hours=10), grace_minutes=0)
    assert again[:1] == after[:1] and again[1].ends_at == again[2].starts_at == switch + timedelta(hours=10)


def test_ramped_phases_refuse_an_empty_current_phase_or_a_closed_last_phase():
    with pytest.raises(ValueError):
        ramped_phases((Phase(0.1, START),), share=0.5, switch_at=START + timedelta(minutes=60), grace_minutes=60)
    # One minute of the current phase left: allowed.
    ramped_phases((Phase(0.1, START),), share=0.5, switch_at=START + timedelta(minutes=61), grace_minutes=60)
    with pytest.raises(ValueError):
        ramped_phases(
            (Phase(0.1, START, START + timedelta(hours=1)),),
            share=0.5,
            switch_at=START + timedelta(hours=5),
            grace_minutes=0,
        )
    with pytest.raises(ValueError):
        ramped_phases((), share=0.5, switch_at=START, grace_minutes=0)


# --- covariates -----------------------------------------------------------------------------------


def cell(persona: str, weekday: int, hour: int, posts: int, x: float, y: float) -> PreExperimentCell:
    return PreExperimentCell(persona, weekday, hour, posts, x, y)


def test_fit_covariates_shrinks_each_rate_towards_the_overall_rate():
    cells = [
        cell("a", 0, 9, 150, 600.0, 10_000.0),
        cell("a", 2, 9, 40, 100.0, 4_000.0),
        cell("b", 0, 17, 30, 90.0, 1_000.0),
    ]
    fitted = fit_covariates(cells, since=START - timedelta(days=7), until=START, minimum_posts=200)
    assert fitted is not None
    overall = 790 / 15_000
    k = SHRINKAGE_IMPRESSIONS

    def shrunk(x: float, y: float) -> float:
        return (x + k * overall) / (y + k)

    assert fitted.overall_rate == pytest.approx(overall, rel=1e-15)
    assert fitted.posts == 220
    assert fitted.persona_rates == pytest.approx({"a": shrunk(700, 14_000), "b": shrunk(90, 1_000)}, rel=1e-12)
    expected_weekdays = [shrunk(690, 11_000), overall, shrunk(100, 4_000), overall, overall, overall, overall]
    assert fitted.weekday_rates == pytest.approx(expected_weekdays, rel=1e-12)
    assert fitted.hour_rates[9] == pytest.approx(shrunk(700, 14_000), rel=1e-12)
    assert fitted.hour_rates[17] == pytest.approx(shrunk(90, 1_000), rel=1e-12)
    assert fitted.hour_rates[0] == pytest.approx(overall, rel=1e-12)
    # A sparse persona stays near the overall rate; a well-seen one near its own.
    assert abs(fitted.persona_rates["b"] - overall) < abs(90 / 1_000 - overall) / 5
    assert fitted.since == START - timedelta(days=7) and fitted.until == START


def test_fit_covariates_needs_the_minimum_posts_with_impressions():
    cells = [cell("a", 0, 9, 199, 10.0, 1_000.0)]
    assert fit_covariates(cells, since=START, until=START, minimum_posts=200) is None
    assert fit_covariates(cells, since=START, until=START, minimum_posts=199) is not None
    assert fit_covariates([cell("a", 0, 9, 500, 0.0, 0.0)], since=START, until=START) is None
    assert fit_covariates([], since=START, until=START) is None


def test_covariate_values_of_a_post():
    fitted = covariates()
    wednesday_14h = datetime(2025, 3, 5, 14, 30, tzinfo=UTC)
    assert wednesday_14h.strftime("%A") == "Wednesday"
    assert fitted.values("p2", wednesday_14h) == (0.0625, 0.03, 0.015)
    monday_0h = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)
    assert fitted.values("unknown", monday_0h) == (0.0437, 0.01, 0.001)
    assert fitted.values(None, datetime(2025, 3, 9, 23, tzinfo=UTC)) == (0.0437, 0.07, 0.024)


def test_covariates_refuse_wrong_lengths_and_negative_rates():
    good = covariates().to_dict()
    Covariates.from_dict(good)
    with pytest.raises(ValueError):
        Covariates.from_dict({**good, "weekday_rates": [0.1] * 6})
    with pytest.raises(ValueError):
        Covariates.from_dict({**good, "hour_rates": [0.1] * 23 + [-0.1]})
    with pytest.raises(ValueError):
        Covariates.from_dict({**good, "overall_rate": float("nan")})
