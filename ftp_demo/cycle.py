"""``ftp-assets demo``: a whole weekly cycle on the embedded defaults, with synthetic data.

1. Synthetic posts (see :mod:`ftp_demo.posts`) in a demo posts database under
   FTP_HOME, recreated on every run, so the demo never writes to a database the user configured.
2. The training cycle for both tasks (``engaged_posts`` -> ``training_jsonl`` ->
   ``fine_tuned_model``) against the local OpenAI-compatible service, started here.
3. A SIMULATED week of the live experiment (``ftp_demo.live_week``), evaluated once a day by
   ``ab_test_result`` and ``registered_model`` until both tasks have a decision.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.domain.dataset import TASKS
from ftp_assets.home import ftp_home, home_path, installed_command
from ftp_demo.posts import SYNTHETIC_DATA_NOTICE, generate_demo_posts

if TYPE_CHECKING:
    from ftp_assets.adapters.experiments_store import Experiment
    from ftp_assets.steps.experiment import AbTestResult, RegisteredModel

# The demo runs on the embedded defaults only; these would point it at production parts.
PRODUCTION_SETTINGS = (
    "FTP_POSTS_DB_URL",
    "FTP_POSTS_TABLE",
    "FTP_DATASETS_DIR",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "MLFLOW_TRACKING_URI",
    "FTP_DEPLOYMENT",
    "FTP_STORAGE_URL",
    "FTP_AUTOMATION",
)
SIMULATED_DAYS = 7
FAST_POLLING = {"resources": {"fine_tuning": {"config": {"poll_initial_seconds": 0.5, "poll_max_seconds": 2.0}}}}
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def load_demo_posts(db: PostsDatabase, *, posts: int, seed: int, end: datetime | None = None) -> int:
    """Insert synthetic posts with ids after the table's largest, over the two weeks before ``end``."""
    end = end or datetime.now(UTC)
    return db.insert_posts(generate_demo_posts(posts, seed=seed, end=end, first_id=next_post_id(db)))


def next_post_id(db: PostsDatabase) -> int:
    with db.engine.connect() as conn:
        return (conn.execute(sa.select(sa.func.max(db.table.c.id))).scalar() or 0) + 1


def _say(step: str) -> None:
    print(f"\n== {step}", flush=True)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def run_demo(*, posts: int, seed: int | None, posts_per_day: int = 600) -> None:
    """``seed`` None draws one, so that each run trains on new data: the same data again would
    re-attach to the model an earlier run already judged, which starts no experiment."""
    started = time.monotonic()
    if seed is None:
        seed = random.SystemRandom().randrange(1, 10_000)
    repeat = f"{installed_command('ftp-assets')} demo --seed {seed}"
    print(f"Seed {seed} (`{repeat}` repeats this run's data and simulation in a fresh FTP_HOME).")
    ignored = [name for name in PRODUCTION_SETTINGS if os.environ.pop(name, None)]
    if ignored:
        print(f"The demo uses the embedded defaults only; ignoring {', '.join(ignored)}.")
    home = ftp_home()

    _say(f"Synthetic posts ({SYNTHETIC_DATA_NOTICE})")
    posts_file = home / "posts.sqlite3"
    posts_file.unlink(missing_ok=True)
    db = PostsDatabase(f"sqlite:///{posts_file}")
    db.init_schema()
    print(f"{load_demo_posts(db, posts=posts, seed=seed)} posts written to {posts_file}")

    from ftp_local_openai import running_service

    with running_service(home_path("local_openai"), step_seconds=0.01) as service:
        os.environ["OPENAI_BASE_URL"] = service.base_url
        os.environ["OPENAI_API_KEY"] = service.api_key
        print(f"Local OpenAI-compatible service at {service.base_url} (state in {service.state_dir})")
        _run_cycle(db, service, seed=seed, posts_per_day=posts_per_day)
        os.environ.pop("OPENAI_API_KEY")

    _say(f"Done in {time.monotonic() - started:.0f} s")
    print(f"State: {home}  (wipe it to start over)")
    print(
        "Next: `make ui` (or `" + installed_command("ftp-assets") + " ui`) serves the Dagster UI (runs, asset "
        "metadata, the A/B table and lift plot) and the MLflow UI (runs of fine_tuning_pipeline, registry aliases)."
    )
    print(
        "The MLflow UI alone: `"
        + installed_command("mlflow")
        + f" ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'}`"
    )


def _run_cycle(db: PostsDatabase, service, *, seed: int, posts_per_day: int) -> None:
    import openai
    from dagster import DagsterInstance

    from ftp_assets.adapters.experiments_store import ExperimentStore
    from ftp_assets.definitions import defs
    from ftp_assets.resources import ExperimentSettings
    from ftp_demo.live_week import simulate_posts

    instance = DagsterInstance.get()
    for task in TASKS:
        _say(f"Training cycle for the {task} task")
        result = defs.resolve_job_def("training_cycle").execute_in_process(
            instance=instance,
            partition_key=task,
            run_config=FAST_POLLING | QUIET_LOGS,
            raise_on_error=False,
            tags={"ftp/fine-tune-task": task},
        )
        if not result.success:
            raise SystemExit(f"The {task} training run {result.run_id} failed; see the log above or `make ui`.")
        dataset = result.output_for_node("training_jsonl")
        model = result.output_for_node("fine_tuned_model")
        started = result.output_for_node("ab_experiment")
        print(
            f"{task}: {dataset.training_examples} training / {dataset.validation_examples} validation examples, "
            f"~{dataset.training_tokens:,.0f} tokens; fine-tuned {model.model_id} (job {model.job_id}); "
            f"MLflow version {model.registry_version} is challenger against {started.champion_model}"
        )

    store = ExperimentStore(db.engine)
    experiments: dict[str, Experiment] = {}
    for task in TASKS:
        running = store.running(task)
        if running is None:
            raise SystemExit(
                f"No {task} experiment is running after its training cycle: this FTP_HOME already holds a "
                f"decision on the model of seed {seed}'s data, and a judged model is not tested again. "
                "Run the demo with another --seed, or wipe FTP_HOME."
            )
        experiments[task] = running
    started_at = max(e.started_at for e in experiments.values())
    maturity = timedelta(hours=ExperimentSettings().maturity_hours)
    client = openai.OpenAI(base_url=service.base_url, api_key=service.api_key)
    decisions: dict[str, tuple[AbTestResult, RegisteredModel]] = {}

    _say(
        f"SIMULATED week of the live experiment: {posts_per_day} posts a day, challenger share "
        f"{experiments['hook'].challenger_share:.0%}, simulated audience (ftp_demo.audience)"
    )
    for day in range(1, SIMULATED_DAYS + 2):
        if day <= SIMULATED_DAYS:
            rows = simulate_posts(
                client,
                experiments,
                start=started_at + timedelta(days=day - 1),
                end=started_at + timedelta(days=day),
                posts=posts_per_day,
                first_id=next_post_id(db),
                seed=seed * 1000 + day,
            )
            db.insert_posts(rows)
        look = started_at + timedelta(days=day) + timedelta(minutes=1)
        if look - maturity <= started_at:
            continue  # nothing has matured yet
        for task in TASKS:
            if task in decisions:
                continue
            run = defs.resolve_job_def("experiment_evaluation").execute_in_process(
                instance=instance,
                partition_key=task,
                raise_on_error=False,
                run_config={"ops": {"ab_test_result": {"config": {"evaluated_at": look.isoformat()}}}} | QUIET_LOGS,
            )
            if not run.success:
                raise SystemExit(f"The {task} evaluation run {run.run_id} failed; see the log above or `make ui`.")
            outcome = run.output_for_node("ab_test_result")
            stats = outcome.statistics
            print(
                f"simulated day {day}, {task}: {outcome.decision:8} n={stats['n_control']}/{stats['n_treatment']} "
                f"lift {_pct(stats['lift'])} always-valid [{_pct(stats['ci_lower'])}, {_pct(stats['ci_upper'])}]"
            )
            if outcome.decision != "continue":
                decisions[task] = (outcome, run.output_for_node("registered_model"))
        if len(decisions) == len(TASKS):
            break

    _say("Decisions")
    for task in TASKS:
        if task not in decisions:
            print(f"{task}: no decision within the simulated week (the experiment keeps running)")
            continue
        outcome, registered = decisions[task]
        stats = outcome.statistics
        print(
            f"{task}: {outcome.decision.upper()}: lift {_pct(stats['lift'])}, always-valid "
            f"{1 - stats['alpha']:.0%} interval [{_pct(stats['ci_lower'])}, {_pct(stats['ci_upper'])}]; "
            f"{outcome.reason}"
        )
        print(
            f"      registry: {registered.action}; champion is now "
            f"{registered.champion_model or 'the agent model'} (version {registered.champion_version})"
        )
