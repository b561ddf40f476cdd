"""engaged_posts and training_jsonl materialized with Dagster against real databases."""

import json
import subprocess
import sys
import uuid
from datetime import UTC, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dagster import instance_for_test, materialize

from ftp_assets.adapters.posts_db import PostsDatabase, posts_table
from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples, low_duplicate_rate, valid_format
from ftp_assets.resources import DatasetStorage, MetricsPublisher, PostsDatabaseResource
from ftp_assets.steps.data_path import REJECTION_REASONS
from ftp_assets_tests.corpus import DIRTY, WINDOW_END, clean_posts, post

ASSETS = [engaged_posts, training_jsonl, enough_examples, valid_format, low_duplicate_rate]
RUN_CONFIG = {"ops": {"engaged_posts": {"config": {"window_end": WINDOW_END.isoformat()}}}}


def load(url, rows):
    db = PostsDatabase(url)
    db.init_schema()
    db.insert_posts(rows)
    return db


def run(url, task, instance, tmp_path, run_config=RUN_CONFIG, assets=ASSETS):
    return materialize(
        assets,
        partition_key=task,
        run_config=run_config,
        instance=instance,
        resources={
            "posts_db": PostsDatabaseResource(url=url),
            "dataset_storage": DatasetStorage(root=str(tmp_path / "datasets")),
            "metrics": MetricsPublisher(),
        },
        raise_on_error=False,
    )


@pytest.mark.parametrize("task", ["hook", "body"])
def test_dirty_corpus_every_row_accounted_for(posts_url, task, tmp_path):
    rows = [row for row, _, _ in DIRTY] + clean_posts(120)
    load(posts_url, rows)
    with instance_for_test() as instance:
        result = run(posts_url, task, instance, tmp_path)
        assert result.success
        engaged = result.output_for_node("engaged_posts")
        dataset = result.output_for_node("training_jsonl")
        engaged_metadata = result.asset_materializations_for_node("engaged_posts")[0].metadata
        dataset_metadata = result.asset_materializations_for_node("training_jsonl")[0].metadata

    # The counts and previews in the metadata are tables of what the steps returned.
    def counts(table, header=("reason", "posts")):
        return {record.data[header[0]]: record.data[header[1]] for record in table.records}

    assert counts(engaged_metadata["rejected"]) == engaged.rejected
    assert counts(engaged_metadata["selection_funnel"]) == engaged.funnel
    assert counts(engaged_metadata["repairs"], ("repair", "count")) == engaged.repairs
    assert counts(dataset_metadata["dropped"]) == dataset.dropped
    preview = engaged_metadata["preview"]
    assert [column.type for column in preview.schema.columns] == ["int", "string", "float", "string", "string"]
    assert [record.data["id"] for record in preview.records] == [row["id"] for row in engaged.preview]
    assert [record.data["post_id"] for record in dataset_metadata["preview"].records] == [
        row["post_id"] for row in dataset.preview
    ]

    fates = {row["id"]: (hook if task == "hook" else body) for row, hook, body in DIRTY}
    expected_kept = {i for i, fate in fates.items() if fate == "kept"} | {r["id"] for r in clean_posts(120)}
    table = pq.read_table(engaged.path).to_pydict()
    assert set(table["id"]) == expected_kept
    for reason in REJECTION_REASONS:
        assert engaged.rejected[reason] == sum(1 for f in fates.values() if f == reason), reason
    for reason in ("zero_impressions", "impossible_counts", "below_threshold", "below_min_impressions"):
        assert engaged.funnel[reason] == sum(1 for f in fates.values() if f == f"funnel:{reason}"), reason
    assert engaged.funnel["in_window"] == len(rows) - 2  # two rows lie outside the window

    # Repairs: PII replaced and counted, odd Unicode normalized.
    by_id = dict(zip(table["id"], zip(table["hook"], table["body"], strict=True), strict=True))
    assert by_id[16][0] == "Mail me at [email]"
    assert engaged.repairs["emails_replaced"] == 1
    if task == "body":
        assert by_id[16][1] == "Or call [phone] today"
        assert engaged.repairs["phones_replaced"] == 1
        assert by_id[15][1] == "Body with é and zero width"
    assert by_id[15][0] == "Ship it 🚀👩‍💻 café"  # the emoji's zero-width joiner survives

    # The JSONL: every written line is a valid example of the task, split by post id.
    lines = [
        json.loads(line)
        for path in (dataset.training_path, dataset.validation_path)
        if path
        for line in Path(path).read_text().splitlines()
    ]
    assert len(lines) == dataset.examples == len(expected_kept)
    assert dataset.validation_examples > 0
    for example in lines:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]
    answers = {ex["messages"][2]["content"] for ex in lines}
    assert ("Mail me at [email]" in answers) == (task == "hook")
    if task == "body":
        assert any("Hook: " in ex["messages"][1]["content"] for ex in lines)
    assert dataset.tokens_exact and dataset.training_tokens > 0


def test_retry_reads_the_same_rows_and_hash(tmp_path, pg_posts_url):
    db = load(pg_posts_url, clean_posts(150))
    with instance_for_test() as instance:
        first = run(pg_posts_url, "hook", instance, tmp_path / "first").output_for_node("training_jsonl")
        late = clean_posts(5, first_id=50_000)
        for row in late:
            row["created_at"] = WINDOW_END  # arrived after the run's window closed
        db.insert_posts(late)
        retried = run(pg_posts_url, "hook", instance, tmp_path / "retry").output_for_node("training_jsonl")
        db.insert_posts(clean_posts(5, first_id=60_000))  # inside the window: a different dataset
        changed = run(pg_posts_url, "hook", instance, tmp_path / "changed").output_for_node("training_jsonl")
    assert retried.dataset_hash == first.dataset_hash
    assert Path(retried.training_path).read_bytes() == Path(first.training_path).read_bytes()
    assert changed.dataset_hash != first.dataset_hash
    assert changed.examples == first.examples + 5


def test_manual_run_uses_run_creation_time_not_step_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    from datetime import datetime, timedelta

    now = datetime.now(UTC)
    recent = clean_posts(120)
    for row in recent:
        row["created_at"] = now - timedelta(hours=1)
    load(url, recent)
    with instance_for_test() as instance:
        result = run(url, "hook", instance, tmp_path, run_config={})
        assert result.success
        engaged = result.output_for_node("engaged_posts")
        record = instance.get_run_record_by_id(result.run_id)
    assert engaged.window_end == record.create_timestamp.astimezone(UTC)
    assert engaged.rows == 120


def test_too_few_examples_blocks_downstream(tmp_path):
    url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    load(url, clean_posts(40))
    with instance_for_test() as instance:
        result = run(url, "hook", instance, tmp_path)
        checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert checks["enough_examples"].passed is False
    assert checks["valid_format"].passed is True
    dataset = result.output_for_node("training_jsonl")
    assert dataset.validation_path is None  # too few for a validation split
    assert dataset.training_examples == 40


@pytest.mark.parametrize(
    "config, message",
    [
        ({"engagement_threshold": 1.5}, "engagement_threshold must be in (0, 1], got 1.5."),
        ({"min_impressions": 0}, "min_impressions must be at least 1, got 0."),
        ({"window_end": "last sunday"}, "'last sunday' is not an ISO-8601 date-time."),
        ({"window_end": "2020-01-01T00:00:00"}, "No usable hook post in"),
    ],
)
def test_user_errors_say_what_is_wrong(tmp_path, config, message):
    url = f"sqlite:///{tmp_path / 'posts.sqlite3'}"
    load(url, clean_posts(5))
    with instance_for_test() as instance:
        result = run(
            url,
            "hook",
            instance,
            tmp_path,
            run_config={"ops": {"engaged_posts": {"config": config}}},
            assets=[engaged_posts],
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert message in failure.step_failure_data.error.message


def test_missing_table_and_bad_url_are_clear(tmp_path):
    from ftp_assets.adapters.posts_db import PostsDatabaseError

    with pytest.raises(PostsDatabaseError, match="does not exist"):
        PostsDatabase(f"sqlite:///{tmp_path / 'empty.sqlite3'}").check_table()
    with pytest.raises(PostsDatabaseError, match="not a valid SQLAlchemy URL"):
        PostsDatabase("not a url")
    with pytest.raises(PostsDatabaseError, match="Cannot connect") as caught:
        PostsDatabase("postgresql://agent:hunter2@127.0.0.1:1/posts")
    assert "hunter2" not in str(caught.value)


def test_threads_and_batches_change_nothing_in_the_result(pg_posts_url, tmp_path, monkeypatch):
    """Cleaning in threads and small batches give the rows, files and hash of one thread with
    the default batches, duplicates across batches included."""
    from datetime import timedelta

    from ftp_assets.adapters.posts_db import SelectionRule, Window
    from ftp_assets.steps import data_path
    from ftp_assets.steps.data_path import DatasetOptions, build_training_files, collect_engaged_posts
    from ftp_demo.posts import generate_demo_posts

    db = load(pg_posts_url, generate_demo_posts(3_000, seed=11, end=WINDOW_END, days=7))
    window, rule = Window(WINDOW_END - timedelta(days=7), WINDOW_END), SelectionRule()
    results = {}
    for threads in (1, 3):
        if threads == 3:
            monkeypatch.setattr(data_path, "BATCH_ROWS", 97)
        folder = tmp_path / f"threads{threads}"
        engaged = collect_engaged_posts(db, "body", window, rule, folder / "engaged.parquet", threads=threads)
        dataset = build_training_files(
            engaged, folder, DatasetOptions(count_all_tokens_below=100, min_validation_examples=1), threads=threads
        )
        results[threads] = (engaged, dataset, pq.read_table(engaged.path).to_pylist())
    assert pq.ParquetFile(results[3][0].path).metadata.num_row_groups > 1
    (one, one_set, one_rows), (two, two_set, two_rows) = results[1], results[3]
    assert one_rows == two_rows and one.rows == len(one_rows) > 100
    assert one.rejected == two.rejected and one.rejected["duplicate_exact"] > 0
    assert one.repairs == two.repairs and one.preview == two.preview
    assert one_set.dataset_hash == two_set.dataset_hash
    assert Path(one_set.training_path).read_bytes() == Path(two_set.training_path).read_bytes()
    assert one_set.training_tokens == two_set.training_tokens and not one_set.tokens_exact


def test_the_selection_reads_in_a_read_only_transaction(pg_database, pg_posts_url):
    """The posts relation is a view that writes when read: the selection must refuse to run it.
    (This is the agent's production database: the data path may never write to it.)"""
    import psycopg

    from ftp_assets.adapters.posts_db import SelectionRule, Window

    load(pg_posts_url, clean_posts(5))
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE posts RENAME TO agent_posts")
        conn.execute("CREATE TABLE reads (at timestamptz)")
        conn.execute(
            "CREATE FUNCTION noted() RETURNS boolean LANGUAGE sql VOLATILE "
            "AS 'INSERT INTO reads VALUES (now()) RETURNING true'"
        )
        conn.execute("CREATE VIEW posts AS SELECT * FROM agent_posts WHERE noted()")
    db = PostsDatabase(pg_posts_url)
    window = Window(WINDOW_END - timedelta(days=7), WINDOW_END)
    with pytest.raises(Exception, match="read-only transaction"):
        list(db.stream_selection(window, SelectionRule()))
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM reads").fetchone()[0] == 0


def test_a_refused_connection_of_the_stream_is_clear_and_hides_the_password(pg_database, pg_posts_url):
    """The stream opens its own connection (ADBC); when the server refuses it, the error says so
    in one sentence without the URL's password."""
    import psycopg

    from ftp_assets.adapters.posts_db import PostsDatabaseError, SelectionRule, Window

    load(pg_posts_url, clean_posts(5))
    role = f"ftp_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 's3cret-pw'")
        conn.execute(f"GRANT SELECT ON posts TO {role}")
    try:
        db = PostsDatabase(pg_posts_url.replace("postgres@", f"{role}:s3cret-pw@"))
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} NOLOGIN")  # after the resource's own check
        with pytest.raises(PostsDatabaseError, match="Cannot connect") as caught:
            list(db.stream_selection(Window(WINDOW_END - timedelta(days=7), WINDOW_END), SelectionRule()))
        assert "s3cret-pw" not in str(caught.value)
        db.engine.dispose()
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_blank_system_message_drops_its_lines_and_counts_them(tmp_path):
    """A persona whose configured system message is blank gets no line (the cookbook's
    missing_content); the other personas' lines are written."""
    from ftp_assets.adapters.posts_db import SelectionRule, Window
    from ftp_assets.steps.data_path import DatasetOptions, build_training_files, collect_engaged_posts

    rows = clean_posts(40)
    for row in rows[:15]:
        row["persona_id"] = "silent_persona"
    db = load(f"sqlite:///{tmp_path / 'posts.sqlite3'}", rows)
    engaged = collect_engaged_posts(
        db, "hook", Window(WINDOW_END - timedelta(days=7), WINDOW_END), SelectionRule(), tmp_path / "engaged.parquet"
    )
    dataset = build_training_files(engaged, tmp_path, DatasetOptions(system_templates={"silent_persona": "  \n"}))
    assert dataset.dropped["invalid_format:missing_content"] == 15
    assert dataset.examples == engaged.rows - 15 == 25
    lines = [json.loads(line) for line in Path(dataset.training_path).read_text().splitlines()]
    assert all(line["messages"][0]["content"].strip() for line in lines)


# Runs the engaged_posts step in a process of its own and reports how far its resident memory
# peaked above where it started (Linux: the high-water mark is reset first).
MEASURE_STEP = """
import json, re, sys
from datetime import datetime, timedelta
from pathlib import Path
from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, Window
from ftp_assets.steps.data_path import collect_engaged_posts

def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

url, end, folder = sys.argv[1], datetime.fromisoformat(sys.argv[2]), Path(sys.argv[3])
db = PostsDatabase(url)
# An empty window first: the drivers, threads and cleaning patterns are loaded before measuring.
collect_engaged_posts(db, "hook", Window(end, end + timedelta(days=1)), SelectionRule(), folder / "warm.parquet")
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS")
window = Window(end - timedelta(days=7), end)
engaged = collect_engaged_posts(db, "hook", window, SelectionRule(), folder / "out.parquet")
print(json.dumps({"grown_kib": kib("VmHWM") - before, "rows": engaged.rows, "rejected": engaged.rejected}))
"""


def test_an_over_long_text_is_counted_without_being_read(posts_url, tmp_path):
    """A 50 MiB pasted document in a hook is left out by the query, so the step's memory does
    not grow with it, and it is still counted as rejected too_long."""
    rows = clean_posts(30)
    rows.append(post(1, "Pasted " + "x" * (50 << 20), "A body", engagements=900))
    load(posts_url, rows)
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_STEP, posts_url, WINDOW_END.isoformat(), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(measured.stdout.splitlines()[-1])
    assert result["rows"] == 30
    assert result["rejected"]["too_long"] == 1
    if posts_url.startswith("postgresql"):
        assert result["grown_kib"] < 16 << 10, result  # far below the text's own 50 MiB
    else:
        # SQLite runs inside the step's process and reads a text to count its characters (once
        # for the funnel, once for the selection), but the text never reaches Arrow or Python:
        # it peaked at over 340 MiB when it did.
        assert result["grown_kib"] < 150 << 10, result


def test_posts_without_ids_from_a_view_are_counted_and_left_out(posts_url, tmp_path):
    """A team's view over a table without the contract's constraints gives a null id and a
    null persona: both posts are counted missing_id and the assets after them run."""
    contract = posts_table()
    team_posts = sa.Table("team_posts", sa.MetaData(), *(sa.Column(c.name, c.type) for c in contract.columns))
    rows = [
        *clean_posts(120),
        post(None, "A post without an id", "Body one"),
        post(2, "A post without a persona", "Body two", persona_id=None),
    ]
    engine = sa.create_engine(posts_url)
    with engine.begin() as conn:
        team_posts.create(conn)
        conn.execute(team_posts.insert(), rows)
        conn.exec_driver_sql("CREATE VIEW posts AS SELECT * FROM team_posts")
    engine.dispose()
    with instance_for_test() as instance:
        result = run(posts_url, "hook", instance, tmp_path)
        assert result.success
        engaged = result.output_for_node("engaged_posts")
        dataset = result.output_for_node("training_jsonl")
    assert engaged.rejected["missing_id"] == 2
    assert engaged.rows == dataset.examples == 120
    assert None not in pq.read_table(engaged.path, columns=["id", "persona_id"]).to_pydict()["persona_id"]


@pytest.mark.parametrize(
    "credentials", ["?password=hunter2&sslmode=prefer", "@hunter2"], ids=["query_password", "unencoded_at"]
)
def test_the_resource_s_errors_show_no_credentials(pg_posts_url, tmp_path, credentials):
    """libpq reads a password from the query; a password may hold an unencoded "@". Neither
    reaches the failed step's error or the run's logs: only driver, host, port and database."""
    if credentials.startswith("?"):
        url = pg_posts_url + credentials  # the database is reachable but has no posts relation
        expected = "does not exist in postgresql+psycopg://"
    else:
        url = pg_posts_url.replace("postgres@", f"postgres:hunter2{credentials}@")
        expected = "Cannot connect to the posts database at postgresql+psycopg://"
    database = pg_posts_url.rpartition("/")[2]
    with instance_for_test() as instance:
        result = run(url, "hook", instance, tmp_path, assets=[engaged_posts])
        logs = str(instance.all_logs(result.run_id))
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert expected in message and f"127.0.0.1:5432/{database}" in message
    assert "hunter2" not in message and "hunter2" not in logs
