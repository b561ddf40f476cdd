"""The experiment analysis's aggregate queries, checked against the same sums computed in numpy
from the inserted rows, on PostgreSQL and SQLite."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, posts_table
from ftp_assets.domain.experiment_plan import ArmSums, Covariates, Phase, fit_covariates

CONTROL, TREATMENT, OTHER = "agent-model", "ft:challenger", "ft:other"
PERSONAS = ["p0", "p1", "p2", "p3", "p4", "p5", "", None]  # None: a view without the contract's key
T0 = datetime(2024, 3, 4, 5, 0, tzinfo=UTC)  # a Monday
PHASES = (
    Phase(0.1, T0, T0 + timedelta(days=2)),
    Phase(0.3, T0 + timedelta(days=2, hours=2), T0 + timedelta(days=4)),  # after a 2-hour grace gap
    Phase(0.5, T0 + timedelta(days=4, minutes=45)),  # in force
)
MATURED_BEFORE = T0 + timedelta(days=7, hours=3, minutes=30)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-5))]
RULE = SelectionRule()


def make_rows(seed: int = 7, count: int = 600) -> list[dict]:
    rng = random.Random(seed)
    µs = timedelta(microseconds=1)
    boundaries = [T0 - µs, MATURED_BEFORE, MATURED_BEFORE - µs, T0 + timedelta(days=2, hours=1)]  # mid-gap
    for phase in PHASES:
        boundaries += [phase.starts_at, phase.starts_at - µs, phase.starts_at + µs]
        if phase.ends_at is not None:
            boundaries += [phase.ends_at, phase.ends_at - µs]
    times = [T0 - timedelta(days=1) + timedelta(seconds=rng.uniform(0, 9 * 86_400)) for _ in range(count)]
    # Every boundary for each arm of each task, so none is missed by chance.
    times += [moment for moment in boundaries for _ in range(4)]
    rows = []
    for i, moment in enumerate(times):
        impressions = rng.randint(0, 5_000)
        engagements = rng.randint(0, impressions)
        kind = rng.random()
        if kind < 0.03:
            engagements = impressions + 1
        elif kind < 0.05:
            impressions, engagements = -3, 0
        elif kind < 0.06:
            impressions = RULE.max_impressions + 1
        hook_model: str | None
        body_model: str | None
        if i >= count:  # a boundary post: both arms of both tasks in turn
            hook_model = (CONTROL, TREATMENT)[(i - count) % 2]
            body_model = (CONTROL, TREATMENT)[(i - count) // 2 % 2]
        else:
            hook_model = rng.choice([CONTROL, TREATMENT, TREATMENT, OTHER, None])
            body_model = rng.choice([CONTROL, CONTROL, TREATMENT, OTHER, None])
        rows.append(
            {
                "id": i + 1,
                "persona_id": rng.choice(PERSONAS),
                "original_input": "in",
                "hook": "h",
                "body": "b",
                # The same instant in different offsets: the database keeps it in UTC.
                "created_at": moment.astimezone(rng.choice(ZONES)),
                "impressions": impressions,
                "engagements": engagements,
                "hook_model": hook_model,
                "body_model": body_model,
            }
        )
    return rows


def possible(row: dict) -> bool:
    return 0 <= row["engagements"] <= row["impressions"] <= RULE.max_impressions


def utc(row: dict) -> datetime:
    return row["created_at"].astimezone(UTC)


def random_covariates(seed: int = 3) -> Covariates:
    rng = random.Random(seed)
    return Covariates(
        persona_rates={p: rng.uniform(0.01, 0.2) for p in ("p0", "p1", "p2", "p3")},  # p4, p5, "", None: overall
        weekday_rates=tuple(rng.uniform(0.01, 0.2) for _ in range(7)),
        hour_rates=tuple(rng.uniform(0.01, 0.2) for _ in range(24)),
        overall_rate=0.077,
        posts=1_000,
        since=T0 - timedelta(days=28),
        until=T0,
    )


@pytest.fixture
def rows() -> list[dict]:
    return make_rows()


def load(url: str, rows: list[dict]) -> PostsDatabase:
    db = PostsDatabase(url)
    # The contract's table, but with persona_id nullable: a team's view can produce nulls.
    table = posts_table()
    table.c.persona_id.nullable = True
    table.metadata.create_all(db.engine)
    db.insert_posts(rows)
    return db


@pytest.fixture
def db(posts_url, rows) -> PostsDatabase:
    return load(posts_url, rows)


def expected_phases(rows, task, covariates, phases=PHASES, matured_before=MATURED_BEFORE):
    column = f"{task}_model"
    arms, included = [], []
    for phase in phases:
        pair = []
        for model in (CONTROL, TREATMENT):
            picked = [
                r
                for r in rows
                if r[column] == model
                and phase.starts_at <= utc(r) < matured_before
                and (phase.ends_at is None or utc(r) < phase.ends_at)
            ]
            included += picked
            ok = [r for r in picked if possible(r)]
            x = [r["engagements"] for r in ok]
            y = [r["impressions"] for r in ok]
            w = None
            if covariates is not None:
                w = np.array([covariates.values(r["persona_id"], utc(r)) for r in ok]).reshape(-1, 3)
            pair.append(ArmSums.from_arrays(x, y, w))
        arms.append(tuple(pair))
    newest = max((utc(r) for r in included), default=None)
    return arms, newest, sum(not possible(r) for r in included)


def assert_sums_match(actual: ArmSums, expected: ArmSums) -> None:
    assert actual.n == expected.n
    assert actual.covariates == expected.covariates
    for name in ("sum_x", "sum_y", "sum_x2", "sum_y2", "sum_xy", "sum_w", "sum_ww", "sum_xw", "sum_yw"):
        got, want = np.asarray(getattr(actual, name), float), np.asarray(getattr(expected, name), float)
        assert got.shape == want.shape, name
        assert got.ravel().tolist() == pytest.approx(want.ravel().tolist(), rel=1e-9, abs=0), name


def check_phase_outcomes(db, rows, task, covariates, phases=PHASES, matured_before=MATURED_BEFORE):
    outcomes = db.phase_outcomes(
        task,
        control_model=CONTROL,
        treatment_model=TREATMENT,
        phases=phases,
        matured_before=matured_before,
        covariates=covariates,
        rule=RULE,
    )
    arms, newest, impossible = expected_phases(rows, task, covariates, phases, matured_before)
    assert len(outcomes.phases) == len(phases)
    for (control, treatment), (want_control, want_treatment) in zip(outcomes.phases, arms, strict=True):
        assert_sums_match(control, want_control)
        assert_sums_match(treatment, want_treatment)
    assert outcomes.data_until == newest
    assert outcomes.excluded_impossible == impossible
    return outcomes


@pytest.mark.parametrize("task", ["hook", "body"])
@pytest.mark.parametrize("adjusted", [True, False])
def test_phase_outcomes_match_the_sums_of_the_rows(db, rows, task, adjusted):
    covariates = random_covariates() if adjusted else None
    outcomes = check_phase_outcomes(db, rows, task, covariates)
    # The data really exercise what the query must get right.
    assert all(sums.n >= 10 for pair in outcomes.phases for sums in pair)
    assert outcomes.excluded_impossible > 0
    assert all(sums.covariates == (3 if adjusted else 0) for pair in outcomes.phases for sums in pair)
    gap_start = T0 + timedelta(days=2)  # PHASES[0].ends_at
    in_gap = [r for r in rows if gap_start <= utc(r) < PHASES[1].starts_at and r[f"{task}_model"] == CONTROL]
    assert in_gap  # posts of the grace window, which count in no phase


def test_an_arm_without_posts_in_a_phase_gets_empty_sums(db, rows):
    later = (Phase(0.5, MATURED_BEFORE + timedelta(days=1)),)  # nothing has matured in it
    empty = check_phase_outcomes(db, rows, "hook", random_covariates(), phases=PHASES[:1] + later)
    assert empty.phases[1] == (ArmSums.empty(3), ArmSums.empty(3))
    outcomes = db.phase_outcomes(
        "hook",
        control_model="nobody",
        treatment_model=TREATMENT,
        phases=PHASES,
        matured_before=MATURED_BEFORE,
        covariates=None,
    )
    assert all(control == ArmSums.empty(0) for control, _ in outcomes.phases)
    assert all(treatment.n > 0 for _, treatment in outcomes.phases)


def test_no_phases_and_overlapping_phases(db):
    none = db.phase_outcomes(
        "hook",
        control_model=CONTROL,
        treatment_model=TREATMENT,
        phases=(),
        matured_before=MATURED_BEFORE,
        covariates=None,
    )
    assert (none.phases, none.data_until, none.excluded_impossible) == ((), None, 0)
    overlapping = (Phase(0.1, T0, T0 + timedelta(days=2)), Phase(0.5, T0 + timedelta(days=1)))
    open_first = (Phase(0.1, T0), Phase(0.5, T0 + timedelta(days=1)))
    for phases in (overlapping, open_first):
        with pytest.raises(ValueError, match="overlapping"):
            db.phase_outcomes(
                "hook",
                control_model=CONTROL,
                treatment_model=TREATMENT,
                phases=phases,
                matured_before=MATURED_BEFORE,
                covariates=None,
            )


def expected_cells(rows, since, until):
    cells: dict[tuple[str, int, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for r in rows:
        if since <= utc(r) < until and possible(r):
            cell = cells[r["persona_id"] or "", utc(r).weekday(), utc(r).hour]
            cell[0] += 1
            cell[1] += r["engagements"]
            cell[2] += r["impressions"]
    return dict(cells)


def check_cells(db, rows, since, until):
    cells = db.pre_experiment_cells(since=since, until=until, rule=RULE)
    got = {(c.persona_id, c.weekday, c.hour): [c.posts, c.sum_x, c.sum_y] for c in cells}
    assert len(got) == len(cells)  # one cell per persona, weekday and hour
    want = expected_cells(rows, since, until)
    assert got.keys() == want.keys()
    for key, (posts, sum_x, sum_y) in want.items():
        assert got[key][0] == posts
        assert got[key][1:] == pytest.approx([sum_x, sum_y], rel=1e-9, abs=0)
    return cells


def test_pre_experiment_cells_match_python_weekday_and_hour(db, rows):
    since, until = T0 - timedelta(hours=20), PHASES[1].starts_at  # both bounds fall on inserted posts
    cells = check_cells(db, rows, since, until)
    assert {c.weekday for c in cells} >= {0, 1, 6} and len({c.hour for c in cells}) == 24
    assert "" in {c.persona_id for c in cells}  # posts without a persona, and with an empty one
    assert all(isinstance(c.sum_x, float) and isinstance(c.posts, int) for c in cells)
    assert db.pre_experiment_cells(since=until, until=until) == []


def test_covariates_fitted_from_the_cells_give_the_same_sums(db, rows):
    """The whole path: fit the covariates from the cells, then adjust with them; a post without a
    persona is looked up as "", as the fit keyed it."""
    since, until = T0 - timedelta(days=1), T0
    covariates = fit_covariates(
        db.pre_experiment_cells(since=since, until=until), since=since, until=until, minimum_posts=1
    )
    assert covariates is not None and "" in covariates.persona_rates
    check_phase_outcomes(db, rows, "body", covariates)


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_postgres_weekday_and_hour_ignore_the_session_time_zone(pg_database, pg_posts_url, rows, zone):
    name = pg_database.rpartition("/")[2]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = '{zone}'")
    db = load(pg_posts_url, rows)
    with db.read_only() as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == zone
        # The zone does move the local weekday and hour: reading them naively would be wrong.
        shifted = conn.exec_driver_sql(
            "SELECT count(*) FROM posts "
            "WHERE extract(hour FROM created_at) <> extract(hour FROM created_at AT TIME ZONE 'UTC')"
        ).scalar()
        assert shifted == len(rows)
    check_cells(db, rows, T0 - timedelta(days=1), MATURED_BEFORE)
    check_phase_outcomes(db, rows, "hook", random_covariates())
