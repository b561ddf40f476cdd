"""Benchmark of the data-threshold sensor's tick at 10 million posts, and at 1 million to show it
is flat as the table grows.

    python benchmarks/sensor.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--ticks 50]

Uses the 10 M-post database ``ftp_bench`` of ``benchmarks/data_path.py`` (run that first to build
it, about 2 minutes), and makes beside it ``posts_newest_1m``, the newest million of those posts
with the same indexes (same posts per hour, so each tick counts as many rows on both tables).

Ticks are simulated on the data's clock: each one is ``evaluate_data_threshold``, the sensor's
whole evaluation (the instance's latest ``fine_tuned_model`` materialization, then the count of the
posts that matured since the previous tick), a tick interval apart. Prints the median, 90th
percentile and maximum per table and interval, the one-off first tick of a never-trained task
(it counts a whole training window), the whole sensor as Dagster evaluates it (opening the posts
resource included), and the count's query plan.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa
from dagster import build_sensor_context, instance_for_test

from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, Window, posts_table
from ftp_assets.resources import ExperimentSettings, PostsDatabaseResource
from ftp_assets.settings import DeploymentSettings
from ftp_assets.training.sensors import (
    NEVER_TRAINED,
    DataThresholdSettings,
    NewPostsCount,
    data_threshold_sensor,
    evaluate_data_threshold,
)

DB = "ftp_bench"
TOTAL_POSTS = 10_000_000
SUBSET = "posts_newest_1m"
SUBSET_POSTS = 1_000_000
DATA_END = datetime(2026, 11, 22, tzinfo=UTC)  # benchmarks/data_path.py's END
MATURITY = timedelta(hours=24)
INTERVALS_S = (60, 300, 3600)


def bench_url(pg: str) -> str:
    return pg.rsplit("/", 1)[0] + "/" + DB


def check_bench_database(pg: str) -> None:
    with psycopg.connect(pg) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone():
            raise SystemExit(f"No database {DB}: build it with `python benchmarks/data_path.py --pg {pg}`.")
    with psycopg.connect(bench_url(pg)) as conn:
        posts = conn.execute("SELECT count(*) FROM posts").fetchone()[0]
    if posts != TOTAL_POSTS:
        raise SystemExit(
            f"{DB}.posts holds {posts:,} posts, not {TOTAL_POSTS:,}: rebuild it with "
            f"`python benchmarks/data_path.py --pg {pg} --reload`."
        )


def ensure_subset(pg: str) -> None:
    """The newest million posts (ids are in time order) with the contract's indexes."""
    with psycopg.connect(bench_url(pg), autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [SUBSET]).fetchone()[0]
        # S608 here and below: the SQL is built from this module's constants, not from user input.
        if exists and conn.execute(f"SELECT count(*) FROM {SUBSET}").fetchone()[0] == SUBSET_POSTS:  # noqa: S608
            return
        print(f"Creating {SUBSET} ...")
        conn.execute(f"DROP TABLE IF EXISTS {SUBSET}")
        conn.execute(f"CREATE TABLE {SUBSET} AS SELECT * FROM posts WHERE id > {TOTAL_POSTS - SUBSET_POSTS}")  # noqa: S608
        engine = sa.create_engine(bench_url(pg).replace("postgresql://", "postgresql+psycopg://"))
        for index in posts_table(SUBSET).indexes:
            conn.execute(str(sa.schema.CreateIndex(index).compile(engine)))
        conn.execute(f"VACUUM ANALYZE {SUBSET}")


def summary(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    return f"median {statistics.median(ms):6.2f} ms   p90 {p90:6.2f} ms   max {ms[-1]:6.2f} ms"


def steady_ticks(db: PostsDatabase, instance, ticks: int, interval: timedelta) -> tuple[list[float], float]:
    """Times ``ticks`` evaluations after a first one, on the data's clock; also returns the mean
    number of posts each tick's slice held."""
    settings = DataThresholdSettings(threshold=10**9)  # never reached: every tick counts and skips
    # Start where both tables hold posts: the subset covers the last 3.5 days of the data.
    now = DATA_END - timedelta(days=3) + MATURITY
    # As if a previous tick had counted up to one interval ago (a first tick counts a whole window).
    cursor = NewPostsCount(baseline=NEVER_TRAINED, counted_until=now - interval - MATURITY)
    timings = []
    for _ in range(ticks):
        started = time.perf_counter()
        evaluation = evaluate_data_threshold(
            instance, db, "hook", cursor.to_json(), now=now, maturity=MATURITY, settings=settings
        )
        timings.append(time.perf_counter() - started)
        cursor, now = evaluation.count, now + interval
    return timings, cursor.count / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--ticks", type=int, default=50)
    args = parser.parse_args()
    check_bench_database(args.pg)
    ensure_subset(args.pg)
    url = bench_url(args.pg).replace("postgresql://", "postgresql+psycopg://")
    tables = {"10 M posts": "posts", "1 M posts": SUBSET}

    with instance_for_test() as instance:
        print(
            f"Data-threshold sensor tick (instance look-up + count of the newly matured slice), "
            f"{args.ticks} ticks each, warm cache:"
        )
        for interval_s in INTERVALS_S:
            for label, table in tables.items():
                db = PostsDatabase(url, table)
                timings, per_tick = steady_ticks(db, instance, args.ticks, timedelta(seconds=interval_s))
                print(
                    f"  {label:>10}, ticks {interval_s:>4} s apart (~{per_tick:,.0f} qualifying posts each): "
                    f"{summary(timings)}"
                )

        db = PostsDatabase(url)
        started = time.perf_counter()
        first = evaluate_data_threshold(
            instance, db, "hook", None, now=DATA_END, maturity=MATURITY, settings=DataThresholdSettings()
        )
        print(
            f"One-off first tick of a never-trained task at 10 M (counts a 7-day window, "
            f"{first.count.count:,} qualifying posts): {(time.perf_counter() - started) * 1000:,.0f} ms"
        )

        # The sensor itself as the daemon calls it, resources included, on the real clock (past the
        # data's end, so its slices are empty: this is the overhead around the count above).
        sensor = data_threshold_sensor("hook", DeploymentSettings.from_environment())
        resources = {"posts_db": PostsDatabaseResource(url=url), "experiment_settings": ExperimentSettings()}
        cursor, whole = None, []
        for _ in range(args.ticks + 1):  # the first is a one-off (see above)
            started = time.perf_counter()
            with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                cursor = sensor(context).cursor
            whole.append(time.perf_counter() - started)
        whole = whole[1:]
        print(
            f"Whole sensor evaluation (build_sensor_context; opens the posts resource: engine, connection, "
            f"table check):\n  {summary(whole)}"
        )

    # The plan of the count exactly as the sensor sends it.
    db = PostsDatabase(url)
    statements = []
    sa.event.listen(
        db.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, parameters, *_: statements.append((statement, parameters)),
    )
    slice_end = DATA_END - timedelta(days=2)
    db.count_qualifying(Window(slice_end - timedelta(seconds=300), slice_end), SelectionRule())
    statement, parameters = next((st, pa) for st, pa in statements if "count(" in st)
    with psycopg.connect(bench_url(args.pg)) as conn:
        plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).fetchall()
    print("Plan of one 300-second slice at 10 M posts:")
    print("\n".join(f"  {line}" for (line,) in plan))


if __name__ == "__main__":
    main()
