"""``ftp-assets doctor`` against real parts: PostgreSQL (a read-only role), the MLflow server, the
local OpenAI-compatible service, moto's S3 and a Dagster instance. A healthy setup passes as the
real command; then each part is broken one way at a time, and exactly its check fails, with a fix
that names the cause. No line ever shows a secret."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import s3fs
from alembic import command
from psycopg.conninfo import conninfo_to_dict

from ftp_assets.adapters.experiments_store import ExperimentStore, migrations_config
from ftp_assets.adapters.mlflow_registry import CHALLENGER, log_fine_tune_run, model_name, register_challenger
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.doctor import FAIL, OK, WARN, Check, format_line, has_failure, load_settings, run_checks
from ftp_assets.resources import ExperimentSettings
from ftp_assets_tests.demo_run import FTP_COMMAND, demo_environment, run_demo
from ftp_assets_tests.fixtures.s3 import moto_bucket
from ftp_demo.posts import generate_demo_posts

ROOT = Path(__file__).resolve().parents[1]
READER_PASSWORD = "rdr-PW-7c41e09b"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def posts(pg_database: str, pg_posts_url: str) -> Iterator[dict]:
    """The posts (a week and more of demo posts ending now) and our tables, made by the owner; a
    role granted SELECT only on the posts (and our own tables, which the pipeline writes)."""
    db = PostsDatabase(pg_posts_url)
    db.init_schema()
    db.insert_posts(generate_demo_posts(600, seed=3, end=datetime.now(UTC), days=14))
    ExperimentStore(db.engine).init_schema()
    db.engine.dispose()
    role = f"ftp_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{READER_PASSWORD}'")
        conn.execute(f"GRANT SELECT ON posts TO {role}")
        conn.execute(
            f"GRANT ALL ON ftp_experiments, ftp_experiment_looks, ftp_fine_tuning_jobs, ftp_alembic_version TO {role}"
        )
    info = conninfo_to_dict(pg_database)
    reader = f"postgresql+psycopg://{role}:{READER_PASSWORD}@{info['host']}:{info.get('port', 5432)}/{info['dbname']}"
    try:
        yield {"owner": pg_database, "owner_url": pg_posts_url, "reader_url": reader, "role": role}
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture
def healthy(posts, mlflow_server, local_openai, monkeypatch) -> dict:
    """A healthy local deployment: the environment ``ftp-assets doctor`` is run with."""
    environment = {
        "FTP_POSTS_DB_URL": posts["reader_url"],
        "MLFLOW_TRACKING_URI": mlflow_server,
        "OPENAI_API_KEY": local_openai.api_key,
        "OPENAI_BASE_URL": local_openai.base_url,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for name in ("FTP_DEPLOYMENT", "FTP_STORAGE_URL", "FTP_PROVIDER", "FTP_POSTS_TABLE", "FTP_AUTOMATION"):
        monkeypatch.delenv(name, raising=False)
    return environment


@pytest.fixture
def production(healthy, posts, tmp_path, monkeypatch) -> None:
    """The healthy deployment as production: the Dagster instance on PostgreSQL, shared storage."""
    dagster_home = tmp_path / "dagster_production"
    dagster_home.mkdir()
    (tmp_path / "shared").mkdir()  # the shared volume
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    info = conninfo_to_dict(posts["owner"])
    for name, value in {
        "FTP_DEPLOYMENT": "production",
        "FTP_STORAGE_URL": (tmp_path / "shared").as_uri(),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_HOST": info["host"],
        "DAGSTER_PG_PORT": info.get("port", 5432),
        "DAGSTER_PG_USER": info["user"],
        "DAGSTER_PG_PASSWORD": info.get("password", ""),
        "DAGSTER_PG_DB": info["dbname"],
    }.items():
        monkeypatch.setenv(name, str(value))


def checks() -> dict[str, Check]:
    settings, invalid = load_settings()
    return {check.name: check for check in run_checks(settings, invalid=invalid)}


def failing(found: dict[str, Check]) -> set[str]:
    return {name for name, check in found.items() if check.verdict == FAIL}


def only_failure(found: dict[str, Check], name: str, *fix_words: str) -> Check:
    """Asserts that ``name`` is the one failing check, its fix naming the cause."""
    assert failing(found) == {name}, "\n".join(format_line(check) for check in found.values())
    check = found[name]
    for word in fix_words:
        assert word in check.fix or word in check.detail, format_line(check)
    return check


def test_healthy_setup_passes_as_the_real_command(healthy, tmp_path):
    """The console script, in a controlled environment: every line ok or warn, exit status 0."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(("FTP_", "OPENAI_", "MLFLOW_"))
    }
    environment.update(healthy, FTP_HOME=os.environ["FTP_HOME"], DAGSTER_HOME=os.environ["DAGSTER_HOME"])
    result = subprocess.run(
        [str(FTP_COMMAND), "doctor"], env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in lines if line.split()[0] not in (OK, WARN)] == []
    names = [line.split()[1] for line in lines]
    assert names[:6] == [
        "settings",
        "posts.relation",
        "posts.index",
        "posts.privileges",
        "posts.window",
        "experiments.migrations",
    ]
    by_name = dict(zip(names, lines, strict=True))
    assert by_name["posts.privileges"].startswith(OK)  # the role may only read
    assert by_name["provider"].startswith(OK)
    assert by_name["automation.weekly_training"].startswith(WARN)  # the local profile starts it stopped
    assert READER_PASSWORD not in result.stdout + result.stderr
    assert healthy["OPENAI_API_KEY"] not in result.stdout + result.stderr


def test_a_view_lacking_a_contract_column_fails_the_relation(healthy, posts, monkeypatch):
    with psycopg.connect(posts["owner"], autocommit=True) as conn:
        conn.execute(
            "CREATE VIEW posts_short AS SELECT id, persona_id, original_input, hook, body, created_at, "
            "impressions, engagements, hook_model FROM posts"
        )
        conn.execute(f"GRANT SELECT ON posts_short TO {posts['role']}")
    monkeypatch.setenv("FTP_POSTS_TABLE", "posts_short")
    found = checks()
    check = only_failure(found, "posts.relation", "body_model", "contract")
    assert "view" in check.detail
    # What depends on the relation is not checked, and says so rather than fail again.
    assert found["posts.window"].verdict == WARN and "not checked" in found["posts.window"].detail


def test_a_views_plan_is_of_its_underlying_table(healthy, posts, monkeypatch):
    with psycopg.connect(posts["owner"], autocommit=True) as conn:
        conn.execute("CREATE VIEW posts_for_ftp AS SELECT * FROM posts")
        conn.execute(f"GRANT SELECT ON posts_for_ftp TO {posts['role']}")
    monkeypatch.setenv("FTP_POSTS_TABLE", "posts_for_ftp")
    found = checks()
    assert failing(found) == set()
    assert "underlying table" in found["posts.index"].detail and "ix_posts_created_at" in found["posts.index"].detail


def test_no_index_on_the_creation_time_fails_the_plan(healthy, posts):
    # The (model, created_at) indexes stay: they do not serve the window's range.
    with psycopg.connect(posts["owner"], autocommit=True) as conn:
        conn.execute("DROP INDEX ix_posts_created_at")
    only_failure(checks(), "posts.index", "CREATE INDEX", "created_at")


def test_a_writable_role_warns_locally(healthy, posts, monkeypatch):
    monkeypatch.setenv("FTP_POSTS_DB_URL", posts["owner_url"])  # the owner may write
    local = checks()
    assert failing(local) == set()
    assert local["posts.privileges"].verdict == WARN and "INSERT" in local["posts.privileges"].detail


def test_a_writable_role_fails_in_production(production, posts, monkeypatch):
    monkeypatch.setenv("FTP_POSTS_DB_URL", posts["owner_url"])
    only_failure(checks(), "posts.privileges", "INSERT", "may only read")


def test_an_empty_window_fails(healthy, posts):
    with psycopg.connect(posts["owner"], autocommit=True) as conn:
        conn.execute("DELETE FROM posts WHERE created_at > now() - interval '8 days'")
    only_failure(checks(), "posts.window", "the agent has written no qualifying posts in the window")


def test_experiments_one_migration_behind_and_missing(healthy, posts):
    owner = PostsDatabase(posts["owner_url"])
    with owner.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE ftp_fine_tuning_jobs")
        command.stamp(migrations_config(connection=conn), "0001")
    check = only_failure(checks(), "experiments.migrations", "ftp-assets db init")
    assert "0001" in check.detail and ExperimentStore.head_revision() in check.detail

    with owner.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE ftp_experiment_looks")  # its foreign key holds ftp_experiments
        conn.exec_driver_sql("DROP TABLE ftp_experiments")
        conn.exec_driver_sql("DROP TABLE ftp_alembic_version")
    owner.engine.dispose()
    found = checks()
    only_failure(found, "experiments.migrations", "ftp-assets db init")
    assert found["mlflow.aliases"].verdict == WARN


def test_mlflow_unreachable_fails_within_seconds(healthy, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{unused_port()}")
    started = time.monotonic()
    found = checks()
    only_failure(found, "mlflow.server", "MLFLOW_TRACKING_URI")
    assert time.monotonic() - started < 20
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # put back as it was


def test_an_alias_inconsistent_with_the_running_experiment_fails(healthy, posts, mlflow_client):
    def register(model: str) -> None:
        run_id = log_fine_tune_run(
            mlflow_client,
            task="hook",
            dagster_run_id=uuid.uuid4().hex,
            params={},
            step_metrics=[],
            metrics={},
            sample_path=None,
        )
        register_challenger(
            mlflow_client,
            task="hook",
            run_id=run_id,
            provider_model_id=model,
            job_id=f"job-{model}",
            training_file_id="file-1",
            dataset_hash="0" * 64,
            base_model="gpt-4o-mini-2024-07-18",
        )

    register("ft:tested")
    store = ExperimentStore(PostsDatabase(posts["owner_url"]).engine)
    store.start(
        task="hook",
        champion_model=ExperimentSettings().agent_model("hook"),
        challenger_model="ft:tested",
        challenger_share=0.1,
        started_at=datetime.now(UTC) - timedelta(hours=1),
        registry_version="1",
    )
    store.engine.dispose()
    assert failing(checks()) == set()

    register("ft:other")  # the challenger alias moves to a model the experiment does not test
    assert mlflow_client.get_registered_model(model_name("hook")).aliases[CHALLENGER] in (2, "2")
    only_failure(checks(), "mlflow.aliases", "ft:tested", "ft:other", "alias")


def test_the_local_service_not_running_is_a_warning_with_how_to_start_it(healthy, monkeypatch):
    """It runs only while needed (`make ui`, the demo); a provider with a key that does not answer
    is a failure."""
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{unused_port()}/v1")
    found = checks()
    assert failing(found) == set()
    assert found["provider"].verdict == WARN and "start it: `make ui`" in found["provider"].fix
    monkeypatch.setenv("OPENAI_API_KEY", "sk-some-key-5d1c")
    only_failure(checks(), "provider", "check OPENAI_BASE_URL")


def test_the_self_hosted_serving_endpoint_not_running_warns_with_the_command_that_starts_it(healthy, monkeypatch):
    monkeypatch.setenv("FTP_PROVIDER", "self_hosted")
    monkeypatch.setenv("FTP_SERVING_URL", f"http://127.0.0.1:{unused_port()}/v1")
    found = checks()
    assert failing(found) == set()
    check = found["serving.self_hosted"]
    assert check.verdict == WARN and "readiness gate would fail" in check.detail
    assert "ftp-serve" in check.fix and "--adapters" in check.fix


def test_a_running_arm_on_an_endpoint_no_file_defines_fails(healthy, posts):
    store = ExperimentStore(PostsDatabase(posts["owner_url"]).engine)
    store.start(
        task="body",
        champion_model=ExperimentSettings().agent_model("body"),
        challenger_model="threads-body-sft-" + "1" * 24,
        challenger_share=0.1,
        started_at=datetime.now(UTC) - timedelta(hours=1),
        registry_version=None,
        challenger_endpoint="vllm-gone",
    )
    store.engine.dispose()
    found = checks()
    assert found["serving.openai"].verdict == OK  # the champion's endpoint, the local service here
    assert found["serving.vllm-gone"].verdict == FAIL and "FTP_ENDPOINTS_FILE" in found["serving.vllm-gone"].fix


def test_a_wrong_key_is_refused(healthy, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0b9e7f1d")
    found = checks()
    only_failure(found, "provider", "the key was refused")
    assert "sk-wrong-key-0b9e7f1d" not in "\n".join(format_line(check) for check in found.values())


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[str]:
    with moto_bucket(monkeypatch, "ftp-doctor") as bucket:
        yield bucket


def test_shared_storage_writable_or_not(healthy, s3_bucket, monkeypatch):
    bucket, s3 = s3_bucket, s3fs.S3FileSystem()
    monkeypatch.setenv("FTP_STORAGE_URL", f"s3://{bucket}/ftp")
    found = checks()
    assert failing(found) == set() and "writable" in found["storage"].detail
    s3.invalidate_cache()
    assert s3.find(bucket) == []  # the probe is deleted

    monkeypatch.setenv("FTP_STORAGE_URL", f"s3://ftp-doctor-missing-{uuid.uuid4().hex[:12]}/ftp")
    only_failure(checks(), "storage", "FTP_STORAGE_URL")


def test_stopped_automation_fails_in_production_and_warns_locally(production, monkeypatch):
    found = checks()
    assert failing(found) == set(), "\n".join(format_line(check) for check in found.values())
    assert found["automation.weekly_training"].verdict == OK  # production starts it running
    assert "Postgres" in found["dagster.instance"].detail

    monkeypatch.setenv("FTP_AUTOMATION", "off")
    found = checks()
    automation = {name for name in found if name.startswith("automation.")}
    assert failing(found) == automation and len(automation) == 4
    assert "FTP_AUTOMATION" in found["automation.experiment_evaluation_sensor"].fix


def test_stopped_automation_warns_locally(healthy):
    found = checks()
    stopped = [check for name, check in found.items() if name.startswith("automation.")]
    assert [check.verdict for check in stopped] == [WARN] * 4
    assert found["automation.weekly_training"].fix == "start the schedule in the UI: `make ui`, then Automation."


def test_the_pushgateway_is_asked_whether_it_is_ready_and_the_webhook_only_whether_it_is_set(
    healthy, monitoring, monkeypatch
):
    found = checks()
    assert (found["metrics"].verdict, found["alerts"].verdict) == (OK, OK)  # locally, nothing is required
    assert "no metrics" in found["metrics"].detail and "no notifications" in found["alerts"].detail

    gateway = monitoring.pushgateway_url.replace("http://", "http://pusher:s3cret@")
    monkeypatch.setenv("FTP_PUSHGATEWAY_URL", gateway)
    monkeypatch.setenv("FTP_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/T000/B000/xyzzy")
    found = checks()
    assert found["metrics"].verdict == OK and "is ready" in found["metrics"].detail
    assert "s3cret" not in format_line(found["metrics"])
    assert found["alerts"].verdict == OK and "xyzzy" not in format_line(found["alerts"])
    assert "without run links" in found["alerts"].detail

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("FTP_PUSHGATEWAY_URL", f"http://127.0.0.1:{closed}")
    found = checks()
    assert found["metrics"].verdict == WARN and "does not answer" in found["metrics"].detail
    assert failing(found) == set()  # the metrics never gate a run


def test_self_hosted_base_model_missing(healthy, tmp_path, monkeypatch):
    monkeypatch.setenv("FTP_PROVIDER", "self_hosted")
    found = checks()
    assert failing(found) == set() and "tiny base" in found["provider.base_model"].detail
    monkeypatch.setenv("FTP_SELF_HOSTED_BASE_MODEL", str(tmp_path / "no-such-model"))
    only_failure(checks(), "provider.base_model", "FTP_SELF_HOSTED_BASE_MODEL", "config.json")


def test_no_secret_is_printed_even_on_failure_paths(healthy, monkeypatch, capsys):
    """Credentials in every URL and key variable; several checks failing around them."""
    mlflow_password, key = "mlf-PW-93ad1c", "sk-doctor-SECRET-41f2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ops:{mlflow_password}@127.0.0.1:{unused_port()}")
    monkeypatch.setenv("OPENAI_API_KEY", key)  # refused by the local service
    monkeypatch.setenv("FTP_POSTS_TABLE", "no_such_posts")
    monkeypatch.setenv("FTP_TRAINING_NEW_POSTS_THRESHOLD", "0")  # invalid: the other checks still run
    found = checks()
    assert {"settings", "posts.relation", "mlflow.server", "provider"} <= failing(found)
    output = "\n".join(format_line(check) for check in found.values())
    for secret in (READER_PASSWORD, mlflow_password, key):
        assert secret not in output
    assert "127.0.0.1" in output  # the URLs are there, redacted

    monkeypatch.setenv("FTP_POSTS_DB_URL", healthy["FTP_POSTS_DB_URL"].replace("5432", str(unused_port())))
    found = checks()
    assert found["posts.relation"].verdict == FAIL
    assert READER_PASSWORD not in "\n".join(format_line(check) for check in found.values())
    assert has_failure(list(found.values()))
    assert capsys.readouterr().out.count(READER_PASSWORD) == 0


@pytest.mark.slow
def test_doctor_passes_on_the_state_the_demo_leaves(tmp_path):
    """`make demo`, then `ftp-assets doctor` with nothing else set: no failure (the local service
    is not running then: a warning saying `make ui`)."""
    environment = demo_environment(tmp_path / "home")
    demo = run_demo(environment, "--posts", "2000", "--seed", "11")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "Next: `make ui`" in demo.stdout
    doctor = subprocess.run([str(FTP_COMMAND), "doctor"], env=environment, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout
    lines = doctor.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")], doctor.stdout
    assert any(line.startswith("warn  provider") and "make ui" in line for line in lines), doctor.stdout
    assert any(line.startswith("ok    posts.window") for line in lines), doctor.stdout
