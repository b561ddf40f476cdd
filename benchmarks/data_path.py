"""Benchmark of the data path on PostgreSQL at 10 million posts.

    python benchmarks/data_path.py [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--reload]

Loads 10 M synthetic posts with COPY into the database ``ftp_bench`` (kept between runs; --reload
recreates it), then, for windows with about 100 k, 300 k and 1 M qualifying posts, times in
separate processes (so peak RSS is each path's own):

* floor: ``COPY (<the selection query>) TO STDOUT`` read by psycopg and discarded, both with the
  query's ORDER BY (most engaging first, what ours reads) and with the filter alone;
* ours: ``collect_engaged_posts`` + ``build_training_files`` (the two assets' work);
* naive (1 M window only unless --naive-all): ``pandas.read_sql`` of the window, then a Python
  loop with the same cleaning, ``json.dumps`` and an exact token count per row.

Prints wall time, peak RSS, database round trips, the ratios, and the plan of the query. The
floors and ours run ``--repeat`` times (default 3) and the median run is shown.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

TOTAL_POSTS = 10_000_000
END = datetime(2026, 11, 22, tzinfo=UTC)
# The benchmark week holds 2 M posts, about half qualifying; 8 M older posts fill 9 weeks before.
WEEK_POSTS = 2_000_000
DB = "ftp_bench"


def _server(pg: str, database: str) -> str:
    return pg.rsplit("/", 1)[0] + "/" + database


def load(pg: str, reload: bool) -> None:
    with psycopg.connect(pg, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if exists and not reload:
            with psycopg.connect(_server(pg, DB)) as bench:
                if bench.execute("SELECT count(*) FROM posts").fetchone()[0] == TOTAL_POSTS:
                    print(f"Reusing {TOTAL_POSTS:,} posts in database {DB} (--reload to recreate).")
                    return
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    from ftp_assets.adapters.posts_db import PostsDatabase, posts_table

    url = _server(pg, DB)
    table = posts_table()
    indexes = list(table.indexes)
    table.indexes.clear()  # build the indexes after the load: much faster than during it
    db = PostsDatabase(url.replace("postgresql://", "postgresql+psycopg://"))
    db.table = table
    db.init_schema()
    started = time.perf_counter()
    rng = np.random.default_rng(42)
    chunk = 500_000
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY posts FROM STDIN") as copy:
            for first in range(0, TOTAL_POSTS, chunk):
                copy.write(_chunk(rng, first, chunk))
        for index in indexes:
            cur.execute(str(__import__("sqlalchemy").schema.CreateIndex(index).compile(db.engine)))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE posts")
    print(f"Loaded {TOTAL_POSTS:,} posts with COPY and built the indexes in {time.perf_counter() - started:.1f} s.")


def _chunk(rng: np.random.Generator, first: int, size: int) -> str:
    ids = np.arange(first + 1, first + size + 1)
    in_week = ids > TOTAL_POSTS - WEEK_POSTS
    week_seconds = 7 * 86400
    offsets = np.where(
        in_week,
        (TOTAL_POSTS - ids) / WEEK_POSTS * week_seconds,  # newest ids nearest to END
        week_seconds + (TOTAL_POSTS - WEEK_POSTS - ids) / (TOTAL_POSTS - WEEK_POSTS) * 9 * week_seconds,
    )
    impressions = rng.integers(200, 5_000, size)
    rates = np.where(rng.random(size) < 0.5, rng.uniform(0.061, 0.15, size), rng.uniform(0.0, 0.059, size))
    engagements = (impressions * rates).astype(np.int64)
    words = [rng.integers(0, len(vocabulary), size).tolist() for vocabulary in _VOCABULARY]
    extras = rng.integers(0, 1000, size).tolist()
    lines = []
    for row, (post_id, offset, imp, eng) in enumerate(
        zip(ids.tolist(), offsets.tolist(), impressions.tolist(), engagements.tolist(), strict=True)
    ):
        w = [vocabulary[choice[row]] for vocabulary, choice in zip(_VOCABULARY, words, strict=True)]
        extra = extras[row]
        created = (END - timedelta(seconds=offset + 1)).isoformat()
        hook = f"{w[0]} {extra % 20 + 2} {w[1]} {w[2]} about {w[3]}?"
        body = (
            f"{w[4]} we {w[5]} the {w[3]} for {w[6]} weeks 🚀\\nWhat changed: {w[7]} {w[1]}, "
            f"then {w[5]} it again. Try this: {w[0].lower()} {w[2]}."
        )
        if extra == 7:
            hook += " Ask me at jordan.lee@example.com"
        if extra == 9:
            body += " Call +1 (555) 010-2030."
        lines.append(
            f"{post_id}\tpersona_{extra % 5}\tTopic: {w[3]} for {w[6]}\t{hook}\t{body}\t"
            f"{created}\t{imp}\t{eng}\tgpt-4o-mini\tgpt-4o-mini\n"
        )
    return "".join(lines)


_VOCABULARY = [
    ["Here are", "Why", "How", "Stop guessing:", "The truth about", "Nobody tells you", "I tried", "Steal these"],
    ["habits", "mistakes", "lessons", "rules", "tricks", "questions", "numbers", "ideas", "tools", "myths"],
    [
        "that doubled my reach",
        "I wish I knew",
        "for busy founders",
        "that actually work",
        "to skip",
        "behind every launch",
        "from 90 days of posting",
        "no one talks about",
    ],
    [
        f"{a} {b}"
        for a in ("pricing", "onboarding", "hiring", "writing", "design", "sales", "fitness", "saving")
        for b in ("pages", "emails", "calls", "notes", "plans", "reviews", "drafts", "demos")
    ],
    ["Honestly,", "Last year", "At first", "For months", "Twice", "Quietly", "Every Friday", "Somehow"],
    ["rewrote", "rebuilt", "tested", "simplified", "cut", "priced", "shipped", "measured", "dropped", "doubled"],
    [str(n) for n in range(1, 53)],
    [
        "fewer steps",
        "shorter copy",
        "one metric",
        "a weekly review",
        "smaller scope",
        "real deadlines",
        "public notes",
        "a checklist",
        "less polish",
        "more questions",
    ],
]


def windows() -> list[tuple[str, datetime, datetime]]:
    week = timedelta(days=7)
    return [("100k", END - week * 0.1, END), ("300k", END - week * 0.3, END), ("1M", END - week, END)]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Each path runs in a fresh process with no
    children of its own, so this is the path's peak; sampling /proc while it runs would slow it."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def run_floor(url: str, start: datetime, end: datetime, queue, ordered: bool = True) -> None:
    from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, Window

    db = PostsDatabase(url.replace("postgresql://", "postgresql+psycopg://"))
    query = db.selection_query(Window(start, end), SelectionRule())
    if not ordered:
        query = query.order_by(None)
    sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
    counts = count_database_calls()
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        with cur.copy(f"COPY ({sql}) TO STDOUT") as copy:
            for block in copy:
                rows += bytes(block).count(b"\n")
    queue.put(
        {
            "seconds": time.perf_counter() - started,
            "rss_mb": peak_rss_mb(),
            "rows": rows,
            "round_trips": round_trips(counts),
        }
    )


def run_floor_unordered(url: str, start: datetime, end: datetime, queue) -> None:
    run_floor(url, start, end, queue, ordered=False)


def run_ours(url: str, start: datetime, end: datetime, queue) -> None:
    from ftp_assets.adapters import posts_db
    from ftp_assets.steps.data_path import DatasetOptions, build_training_files, collect_engaged_posts

    db = posts_db.PostsDatabase(url.replace("postgresql://", "postgresql+psycopg://"))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        engaged = collect_engaged_posts(
            db, "body", posts_db.Window(start, end), posts_db.SelectionRule(), Path(folder) / "engaged.parquet"
        )
        middle = time.perf_counter()
        dataset = build_training_files(engaged, Path(folder), DatasetOptions())
        finished = time.perf_counter()
    queue.put(
        {
            "seconds": finished - started,
            "engaged_seconds": middle - started,
            "jsonl_seconds": finished - middle,
            "rss_mb": peak_rss_mb(),
            "rows": engaged.rows,
            "examples": dataset.examples,
            "round_trips": None,
            "token_rse": dataset.tokens_relative_standard_error,
        }
    )


def count_database_calls() -> dict[str, int]:
    """Counts, from now on in this process, the calls by which psycopg and ADBC talk to the
    server: connections, statements, FETCHes of a server-side cursor, and transaction ends (each
    transaction also costs the BEGIN sent before its first statement). An ADBC statement counts
    twice: the driver prepares it to learn its columns, then runs it (a query as a binary COPY)."""
    import adbc_driver_manager.dbapi
    import adbc_driver_postgresql.dbapi
    import psycopg

    counts = {"connect": 0, "execute": 0, "fetch": 0, "transaction": 0}

    def counting(kind, function, weight=1):
        def wrapper(*args, **kwargs):
            counts[kind] += weight
            return function(*args, **kwargs)

        return wrapper

    psycopg.Connection.connect = classmethod(counting("connect", psycopg.Connection.connect.__func__))
    psycopg.Cursor.execute = counting("execute", psycopg.Cursor.execute)
    psycopg.Cursor.copy = counting("execute", psycopg.Cursor.copy)
    psycopg.ServerCursor.execute = counting("execute", psycopg.ServerCursor.execute)
    psycopg.ServerCursor.fetchmany = counting("fetch", psycopg.ServerCursor.fetchmany)
    psycopg.Connection.rollback = counting("transaction", psycopg.Connection.rollback)
    psycopg.Connection.commit = counting("transaction", psycopg.Connection.commit)
    adbc_driver_postgresql.dbapi.connect = counting("connect", adbc_driver_postgresql.dbapi.connect)
    adbc_driver_manager.dbapi.Cursor.execute = counting("execute", adbc_driver_manager.dbapi.Cursor.execute, 2)
    adbc_driver_manager.dbapi.Connection.rollback = counting(
        "transaction", adbc_driver_manager.dbapi.Connection.rollback
    )
    adbc_driver_manager.dbapi.Connection.commit = counting("transaction", adbc_driver_manager.dbapi.Connection.commit)
    return counts


def round_trips(counts: dict[str, int]) -> int:
    return sum(counts.values()) + counts["transaction"]


def count_round_trips(url: str, start: datetime, end: datetime, queue) -> None:
    """The round trips of engaged_posts (training_jsonl does not touch the database)."""
    from ftp_assets.adapters import posts_db
    from ftp_assets.steps.data_path import collect_engaged_posts

    counts = count_database_calls()
    db = posts_db.PostsDatabase(url.replace("postgresql://", "postgresql+psycopg://"))
    with tempfile.TemporaryDirectory() as folder:
        collect_engaged_posts(
            db,
            "body",
            posts_db.Window(start, end),
            posts_db.SelectionRule(),
            Path(folder) / "engaged.parquet",
            threads=1,
        )
    queue.put({"total": round_trips(counts)})


def run_naive(url: str, start: datetime, end: datetime, queue) -> None:
    import pandas as pd

    counts = count_database_calls()
    from ftp_assets.domain.cleaning import clean_text, dedup_key, looks_like_injection
    from ftp_assets.domain.dataset import build_example, system_message
    from ftp_assets.domain.tokens import count_message_tokens

    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        frame = pd.read_sql(
            "SELECT * FROM posts WHERE created_at >= %(start)s AND created_at < %(end)s "
            "AND impressions >= 100 AND engagements <= impressions "
            "AND engagements::float8 / NULLIF(impressions, 0) >= 0.06",
            conn,
            params={"start": start, "end": end},
        )
    frame["rate"] = frame.engagements / frame.impressions
    frame = frame.sort_values(["rate", "id"], ascending=[False, True])
    seen, kept = set(), 0
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "t.jsonl", "w") as out:
        for row in frame.itertuples():
            texts = [clean_text(row.original_input), clean_text(row.hook), clean_text(row.body)]
            if any(t is None for t in texts) or any(looks_like_injection(t.text) for t in texts):
                continue
            key = dedup_key(texts[2].text)
            if key in seen:
                continue
            seen.add(key)
            example = build_example(
                "body", system_message(row.persona_id, "body", {}), texts[0].text, texts[1].text, texts[2].text
            )
            if count_message_tokens(example["messages"]) > 4096:
                continue
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
            kept += 1
    queue.put(
        {
            "seconds": time.perf_counter() - started,
            "rss_mb": peak_rss_mb(),
            "rows": kept,
            "round_trips": round_trips(counts),
        }
    )


def measure(target, url: str, start: datetime, end: datetime, repeat: int = 1) -> dict:
    """Run ``target`` in a fresh process each time, so its peak RSS is its own; with ``repeat``
    runs, the figures of the run with the median time (this shared machine's timings vary)."""
    context = multiprocessing.get_context("spawn")
    results = []
    for _ in range(repeat):
        queue = context.Queue()
        process = context.Process(target=target, args=(url, start, end, queue))
        process.start()
        results.append(queue.get())
        process.join()
    results.sort(key=lambda result: result.get("seconds", 0))
    return {**results[len(results) // 2], "all_seconds": [result.get("seconds") for result in results]}


def explain(url: str) -> str:
    from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, Window

    db = PostsDatabase(url.replace("postgresql://", "postgresql+psycopg://"))
    query = db.selection_query(Window(END - timedelta(days=7), END), SelectionRule())
    sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with psycopg.connect(url) as conn:
        return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--naive-all", action="store_true", help="also run the naive path on the small windows")
    parser.add_argument("--repeat", type=int, default=3, help="runs of floor and ours per window (median shown)")
    args = parser.parse_args()
    load(args.pg, args.reload)
    url = _server(args.pg, DB)
    print("\nPlan of the selection query (1 M window):\n" + explain(url) + "\n")
    header = (
        f"{'window':>6} {'path':>6} {'rows':>9} {'seconds':>8} {'peak MB':>8} {'trips':>6} "
        f"{'vs floor':>9} {'naive/ours':>10}"
    )
    print(header)
    for name, start, end in windows():
        floor = measure(run_floor, url, start, end, args.repeat)
        unordered = measure(run_floor_unordered, url, start, end, args.repeat)
        ours = measure(run_ours, url, start, end, args.repeat)
        naive = measure(run_naive, url, start, end) if (name == "1M" or args.naive_all) else None
        ours["round_trips"] = measure(count_round_trips, url, start, end)["total"]
        for path, figures in (("floor", floor), ("floor-", unordered), ("ours", ours), ("naive", naive)):
            if figures is None:
                continue
            ratio = figures["seconds"] / floor["seconds"]
            speedup = f"{naive['seconds'] / ours['seconds']:.1f}x" if naive and path == "ours" else ""
            print(
                f"{name:>6} {path:>6} {figures['rows']:>9,} {figures['seconds']:>8.2f} {figures['rss_mb']:>8.0f} "
                f"{figures['round_trips']:>6} {ratio:>8.1f}x {speedup:>10}",
                flush=True,
            )
        print(
            f"{'':>6} ours is {ours['seconds'] / unordered['seconds']:.1f}x floor- (the filter without ORDER BY); "
            + "; ".join(
                f"{path} runs {', '.join(f'{t:.2f}' for t in figures['all_seconds'])} s"
                for path, figures in (("floor", floor), ("floor-", unordered), ("ours", ours))
            )
        )
        print(
            f"{'':>6} ours: engaged_posts {ours['engaged_seconds']:.2f} s, "
            f"training_jsonl {ours['jsonl_seconds']:.2f} s, "
            f"token estimate relative standard error {ours['token_rse']:.3%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
