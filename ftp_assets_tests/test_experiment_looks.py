"""A planned experiment's plan and phases in its row, and its looks in ftp_experiment_looks, on
PostgreSQL and SQLite alike: numbered in order, recorded once per evaluation time, refused once the
experiment has finished, and the traffic ramp applied once."""

import math
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ftp_assets.adapters.experiments_store import (
    ExperimentsLookError,
    ExperimentStore,
    LookRecord,
    experiment_looks,
    experiments,
)
from ftp_assets.domain.experiment_plan import (
    ArmSums,
    Covariates,
    ExperimentPlan,
    LookData,
    Phase,
    PhaseLook,
    ramped_phases,
)

STARTED = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(posts_url):
    engine = sa.create_engine(posts_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine) -> ExperimentStore:
    store = ExperimentStore(engine)
    store.init_schema()
    return store


def a_plan(**changes) -> ExperimentPlan:
    covariates = Covariates(
        persona_rates={"ada": 0.031, "bob": 0.027},
        weekday_rates=tuple(0.02 + 0.001 * day for day in range(7)),
        hour_rates=tuple(0.025 + 0.0001 * hour for hour in range(24)),
        overall_rate=0.029,
        posts=1200,
        since=STARTED - timedelta(days=28),
        until=STARTED,
    )
    values = dict(
        rule="group_sequential",
        alpha=0.05,
        maximum_information=900.0,
        maximum_information_basis="a 5% lift at 80% power",
        started_at=STARTED,
        initial_share=0.1,
        ramped_share=0.5,
        covariates=covariates,
    )
    return ExperimentPlan(**values | changes)


def start(store: ExperimentStore, *, plan: ExperimentPlan | None = None, challenger: str = "ft:hook:challenger"):
    return store.start(
        task="hook",
        champion_model="ft:hook:champion",
        challenger_model=challenger,
        challenger_share=0.1 if plan is None else plan.initial_share,
        started_at=STARTED,
        registry_version="7",
        plan=plan,
    )


def look_data(evaluated_at: datetime) -> LookData:
    control = ArmSums.from_arrays([3, 0, 5], [100, 80, 120], [[0.03, 0.02, 0.025]] * 3)
    treatment = ArmSums.from_arrays([4, 2], [90, 110], [[0.031, 0.021, 0.026]] * 2)
    return LookData(evaluated_at=evaluated_at, phases=(PhaseLook(0.1, control, treatment),))


def record(store: ExperimentStore, experiment_id: str, evaluated_at: datetime, **changes) -> LookRecord:
    values = dict(
        evaluated_at=evaluated_at,
        data_until=evaluated_at - timedelta(hours=24),
        challenger_share=0.1,
        information=120.5,
        information_fraction=120.5 / 900,
        statistic=1.3,
        boundary=4.2,
        alpha_spent=0.0001,
        decision="continue",
        reason="within the boundaries",
        data=look_data(evaluated_at),
        analysis={"lift": 0.04, "interval": [-0.01, 0.09]},
    )
    return store.record_look(experiment_id, **values | changes)


def at(hours: float) -> datetime:
    return STARTED + timedelta(hours=hours)


def test_starting_with_a_plan_stores_the_plan_and_the_first_phase(store):
    plan = a_plan()
    started = start(store, plan=plan)
    assert started.plan == plan and started.phases == (Phase(0.1, STARTED),)
    for read in (store.get(started.experiment_id), store.running("hook")):
        assert read == started
        assert read.plan == plan and read.plan.covariates == plan.covariates
        assert read.phases == (Phase(0.1, STARTED),) and read.phases[0].starts_at.tzinfo is not None
    # The same arms again return the running experiment, plan and all.
    assert start(store, plan=plan) == started


def test_an_always_valid_plan_without_covariates_or_maximum_information_round_trips(store):
    plan = a_plan(rule="always_valid", maximum_information=None, covariates=None, covariates_note="too few posts")
    started = start(store, plan=plan)
    assert store.get(started.experiment_id).plan == plan


def test_an_experiment_without_a_plan_has_neither_plan_nor_phases(store):
    started = start(store)
    assert started.plan is None and started.phases is None
    assert store.get(started.experiment_id) == started


def test_a_plan_whose_initial_share_is_not_the_share_is_refused(store):
    with pytest.raises(ValueError, match="not the plan's initial share"):
        store.start(
            task="hook",
            champion_model="ft:hook:champion",
            challenger_model="ft:hook:challenger",
            challenger_share=0.2,
            started_at=STARTED,
            registry_version="7",
            plan=a_plan(initial_share=0.1),
        )
    assert store.running("hook") is None


def test_looks_are_numbered_in_order_and_read_back_as_recorded(store):
    experiment_id = start(store, plan=a_plan()).experiment_id
    recorded = [record(store, experiment_id, at(hours)) for hours in (24, 48, 72)]

    assert [look.look_number for look in recorded] == [1, 2, 3]
    assert store.looks(experiment_id) == recorded
    first = recorded[0]
    assert first.evaluated_at == at(24) and first.evaluated_at.utcoffset() == timedelta(0)
    assert first.data_until == at(0) and first.data_until.utcoffset() == timedelta(0)
    assert first.data == look_data(at(24))
    assert first.analysis == {"lift": 0.04, "interval": [-0.01, 0.09]}
    assert (first.challenger_share, first.information, first.boundary) == (0.1, 120.5, 4.2)
    assert store.looks("no-such-experiment") == []


def test_a_repeated_look_returns_the_recorded_one_unchanged(store):
    experiment_id = start(store, plan=a_plan()).experiment_id
    first = record(store, experiment_id, at(24))
    # The same instant in another zone, with other results: the evaluation's re-run.
    again = record(store, experiment_id, at(24).astimezone(timezone(timedelta(hours=2))), statistic=9.9)
    assert again == first
    assert store.looks(experiment_id) == [first]


def test_a_look_not_after_the_last_one_is_refused(store):
    experiment_id = start(store, plan=a_plan()).experiment_id
    record(store, experiment_id, at(48))
    with pytest.raises(ExperimentsLookError, match="not after its last look, number 1"):
        record(store, experiment_id, at(24))
    assert [look.look_number for look in store.looks(experiment_id)] == [1]


def test_a_look_analyzed_without_a_look_recorded_since_is_refused(store):
    # Two evaluations read the looks at once; the later one's boundary did not count the other's.
    experiment_id = start(store, plan=a_plan()).experiment_id
    record(store, experiment_id, at(24), after_look=0)
    with pytest.raises(ExperimentsLookError, match=r"another evaluation recorded look 1 .* after the 0 looks"):
        record(store, experiment_id, at(48), after_look=0)
    assert [look.look_number for look in store.looks(experiment_id)] == [1]
    assert record(store, experiment_id, at(48), after_look=1).look_number == 2


def test_no_look_is_recorded_once_the_experiment_has_finished(store):
    experiment_id = start(store, plan=a_plan()).experiment_id
    decisive = record(store, experiment_id, at(24), decision="promote")
    assert store.finish(experiment_id, decision="promote", reason="crossed", statistics={}, decided_at=at(24))

    with pytest.raises(ExperimentsLookError, match="is promoted, no longer running"):
        record(store, experiment_id, at(48))
    # The evaluation that decided, run again, finds its look.
    assert record(store, experiment_id, at(24)) == decisive
    assert store.looks(experiment_id) == [decisive]


def test_a_look_of_an_unknown_experiment_is_refused(store):
    with pytest.raises(ExperimentsLookError, match="no experiment 'hook-nope'"):
        record(store, "hook-nope", at(24))


def test_the_ramp_moves_the_share_and_starts_a_phase_once(store):
    plan = a_plan()
    experiment_id = start(store, plan=plan).experiment_id
    ramped = ramped_phases((Phase(0.1, STARTED),), share=0.5, switch_at=at(24), grace_minutes=30)

    look = record(store, experiment_id, at(24), ramp_to=0.5, grace_minutes=30)
    assert look.challenger_share == 0.1  # the share in force at the look
    experiment = store.get(experiment_id)
    assert experiment.challenger_share == 0.5 and experiment.phases == ramped

    # A re-run of that look, and a later look asking for the share already in force, change nothing.
    assert record(store, experiment_id, at(24), ramp_to=0.5, grace_minutes=30) == look
    record(store, experiment_id, at(48), challenger_share=0.5, ramp_to=0.5)
    assert store.get(experiment_id) == experiment
    assert [look.look_number for look in store.looks(experiment_id)] == [1, 2]


def test_a_ramp_of_an_experiment_without_phases_is_refused_and_records_nothing(store):
    experiment_id = start(store).experiment_id
    with pytest.raises(ExperimentsLookError, match="has no phases"):
        record(store, experiment_id, at(24), ramp_to=0.5)
    assert store.looks(experiment_id) == []
    assert store.get(experiment_id).challenger_share == 0.1


def test_a_ramp_after_the_share_changed_elsewhere_changes_nothing(store, engine):
    """Compare-and-set: a share that is no longer the phase in force's was moved by someone else."""
    experiment_id = start(store, plan=a_plan()).experiment_id
    with engine.begin() as conn:
        conn.execute(experiments.update().values(challenger_share=0.3))
    record(store, experiment_id, at(24), ramp_to=0.5)
    experiment = store.get(experiment_id)
    assert experiment.challenger_share == 0.3 and experiment.phases == (Phase(0.1, STARTED),)


def test_an_infinite_boundary_round_trips(store, engine):
    experiment_id = start(store, plan=a_plan()).experiment_id
    look = record(store, experiment_id, at(24), boundary=math.inf, statistic=None, alpha_spent=0.0)
    assert look.boundary == math.inf and look.statistic is None
    assert store.looks(experiment_id)[0].boundary == math.inf
    with engine.connect() as conn:
        assert conn.execute(sa.select(experiment_looks.c.boundary)).scalar_one() == math.inf


@pytest.mark.parametrize("posts_url", ["postgresql"], indirect=True)
def test_concurrent_looks_on_postgresql_are_numbered_one_after_the_other(store, engine):
    """While the experiment's row is locked, two evaluations wait in turn instead of both taking
    look number 1; the lock released, they record looks 1 and 2."""
    experiment_id = start(store, plan=a_plan()).experiment_id
    results: dict[str, object] = {}

    def evaluate(name: str, evaluated_at: datetime) -> None:
        try:
            results[name] = record(store, experiment_id, evaluated_at)
        except Exception as error:
            results[name] = error

    def waiting_on_locks(conn) -> int:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
        conn.rollback()  # pg_stat_activity is read once per transaction
        return waiting

    def wait_for(conn, count: int) -> None:
        deadline = time.monotonic() + 20
        while waiting_on_locks(conn) < count:
            assert time.monotonic() < deadline, f"fewer than {count} evaluations wait on the experiment's row"
            time.sleep(0.05)

    threads = {"first": threading.Thread(target=evaluate, args=("first", at(24)))}
    threads["second"] = threading.Thread(target=evaluate, args=("second", at(48)))
    with engine.connect() as watcher, engine.begin() as holder:
        holder.execute(
            sa.select(experiments.c.experiment_id).where(experiments.c.experiment_id == experiment_id).with_for_update()
        )
        threads["first"].start()
        wait_for(watcher, 1)
        threads["second"].start()
        wait_for(watcher, 2)
    for thread in threads.values():
        thread.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads.values())
    assert all(isinstance(result, LookRecord) for result in results.values()), results
    assert [results["first"].look_number, results["second"].look_number] == [1, 2]
    assert store.looks(experiment_id) == [results["first"], results["second"]]
