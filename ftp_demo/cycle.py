"""``ftp-assets demo``: a whole weekly cycle on the embedded defaults, with synthetic data.

1. Synthetic posts (see :mod:`ftp_demo.posts`) in a demo posts database under
   FTP_HOME, recreated on every run, so the demo never writes to a database the user configured.
2. The training cycle for both tasks (``engaged_posts`` -> ``training_jsonl`` ->
   ``fine_tuned_model`` -> ``ab_experiment``) against the local OpenAI-compatible service,
   started here; or, with ``--provider self_hosted``, with the self-hosted LoRA trainer on a tiny
   base it builds, the base and adapters served on CPU by ``ftp-serve``.
3. A SIMULATED week of the live experiment (``ftp_demo.live_week``), evaluated once a day by
   ``ab_test_result`` and ``registered_model`` until both tasks have a decision.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ftp_assets.adapters.posts_db import PostsDatabase, redacted
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
    "FTP_PROVIDER",
    "FTP_SELF_HOSTED_BASE_MODEL",
    "FTP_ENDPOINTS_FILE",
    "FTP_SERVING_URL",
    "FTP_SERVING_ENDPOINT",
    "FTP_AGENT_ENDPOINT",
)
SIMULATED_DAYS = 7
# The synthetic history spans the two weeks before the demo (generate_demo_posts' default).
HISTORY_DAYS = 14
POSTS_PER_DAY = 600
# The self-hosted demo generates every post with a real (tiny) model on CPU: fewer posts a day,
# written concurrently so that ftp-serve batches them (64 in flight: two models, two batches of 32),
# and half the traffic to the challenger so that the smaller sample still decides within the week.
SELF_HOSTED_POSTS_PER_DAY = 400
SELF_HOSTED_WORKERS = 64
SELF_HOSTED_SHARE = 0.5
# A tiny base learns slowly at the default LoRA rate for billion-parameter models (2e-4).
SELF_HOSTED_LEARNING_RATE = 2e-3
FAST_POLLING = {"resources": {"fine_tuning": {"config": {"poll_initial_seconds": 0.5, "poll_max_seconds": 2.0}}}}
# The demo's week has fewer posts than production: the challenger's share rises after 50 of its
# posts show no harm (production waits for 200).
DEMO_RAMP_MIN_CHALLENGER_POSTS = 50
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


def run_demo(
    *, posts: int | None, seed: int | None, posts_per_day: int | None = None, provider: str = "openai"
) -> None:
    """``seed`` None draws one, so that each run trains on new data: the same data again would
    re-attach to the model an earlier run already judged, which starts no experiment.
    ``provider`` "self_hosted" runs the cycle on the self-hosted path (see :func:`_self_hosted_cycle`).
    ``posts`` None writes the history at the live week's daily rate, which the experiment's plan
    reads to size its sample."""
    started = time.monotonic()
    if seed is None:
        seed = random.SystemRandom().randrange(1, 10_000)
    option = "" if provider == "openai" else f" --provider {provider}"
    repeat = f"{installed_command('ftp-assets')} demo{option} --seed {seed}"
    again = "data and simulation" if provider == "openai" else "data (CPU generations in batches vary slightly)"
    print(f"Seed {seed} (`{repeat}` repeats this run's {again} in a fresh FTP_HOME).")
    ignored = [name for name in PRODUCTION_SETTINGS if os.environ.pop(name, None)]
    if ignored:
        print(f"The demo uses the embedded defaults only; ignoring {', '.join(ignored)}.")
    os.environ["FTP_PROVIDER"] = provider
    home = ftp_home()

    _say(f"Synthetic posts ({SYNTHETIC_DATA_NOTICE})")
    posts_file = home / "posts.sqlite3"
    posts_file.unlink(missing_ok=True)
    db = PostsDatabase(f"sqlite:///{posts_file}")
    db.init_schema()
    daily = posts_per_day or (SELF_HOSTED_POSTS_PER_DAY if provider == "self_hosted" else POSTS_PER_DAY)
    posts = posts if posts is not None else HISTORY_DAYS * daily
    print(f"{load_demo_posts(db, posts=posts, seed=seed)} posts written to {posts_file}")

    if provider == "self_hosted":
        _self_hosted_cycle(db, seed=seed, posts_per_day=daily)
    else:
        from ftp_local_openai import running_service

        with running_service(home_path("local_openai"), step_seconds=0.01) as service:
            os.environ["OPENAI_BASE_URL"] = service.base_url
            os.environ["OPENAI_API_KEY"] = service.api_key
            print(f"Local OpenAI-compatible service at {service.base_url} (state in {service.state_dir})")
            _openai_cycle(db, service, seed=seed, posts_per_day=daily)
            os.environ.pop("OPENAI_API_KEY")

    gateway = os.environ.get("FTP_PUSHGATEWAY_URL")
    if gateway:
        _publish_run_failures(gateway)
        print(f"Every step pushed its metrics to {redacted(gateway)} (docs/observability.md).")
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


def _publish_run_failures(gateway: str) -> None:
    """The run-failure counts, as the metrics_refresh sensor pushes them (the demo runs no
    daemon), so that every documented metric has the demo's value."""
    import logging

    from dagster import DagsterInstance

    from ftp_assets.definitions import load_definitions
    from ftp_assets.observability.sensors import counted_jobs, job_failures
    from ftp_assets.resources import MetricsPublisher
    from ftp_assets.steps.failure_notice import run_failure_samples

    jobs = counted_jobs(load_definitions().get_repository_def())
    instance = DagsterInstance.get()
    MetricsPublisher(pushgateway_url=gateway).publish(
        logging.getLogger("ftp_demo"), "runs", None, lambda: run_failure_samples(job_failures(instance, jobs))
    )


def _train(task: str, run_config: dict, *, assets: Sequence[str] | None = None):
    """The task's training cycle (or only ``assets`` of it) as the schedule runs it."""
    from dagster import AssetKey, DagsterInstance

    from ftp_assets.definitions import load_definitions

    result = (
        load_definitions()
        .resolve_job_def("training_cycle")
        .execute_in_process(
            instance=DagsterInstance.get(),
            partition_key=task,
            run_config=run_config,
            raise_on_error=False,
            tags={"ftp/fine-tune-task": task},
            asset_selection=[AssetKey(name) for name in assets] if assets else None,
        )
    )
    if not result.success:
        raise SystemExit(f"The {task} training run {result.run_id} failed; see the log above or `make ui`.")
    return result


def _trained(task: str, result) -> None:
    dataset = result.output_for_node("training_jsonl")
    model = result.output_for_node("fine_tuned_model")
    print(
        f"{task}: {dataset.training_examples} training / {dataset.validation_examples} validation examples, "
        f"~{dataset.training_tokens:,.0f} tokens; fine-tuned {model.model_id} (job {model.job_id}), "
        f"MLflow version {model.registry_version}"
    )


def _started(task: str, result) -> None:
    started = result.output_for_node("ab_experiment")
    print(
        f"{task}: challenger {started.challenger_model} at endpoint {started.challenger_endpoint!r} passed the "
        f"readiness gate; experiment against {started.champion_model} at {started.champion_endpoint!r}"
    )


def _openai_cycle(db: PostsDatabase, service, *, seed: int, posts_per_day: int) -> None:
    """The OpenAI path: each task's whole training cycle against the local OpenAI-compatible service."""
    import openai

    for task in TASKS:
        _say(f"Training cycle for the {task} task")
        demo_settings = {
            "experiment_settings": {"config": {"ramp_min_challenger_posts": DEMO_RAMP_MIN_CHALLENGER_POSTS}}
        }
        result = _train(task, QUIET_LOGS | {"resources": FAST_POLLING["resources"] | demo_settings})
        _trained(task, result)
        _started(task, result)
    client = openai.OpenAI(base_url=service.base_url, api_key=service.api_key)
    _live_week(db, {"openai": client}, seed=seed, posts_per_day=posts_per_day, workers=1, run_config=QUIET_LOGS)


def _self_hosted_cycle(db: PostsDatabase, *, seed: int, posts_per_day: int) -> None:
    """The self-hosted path: the LoRA trainer (a subprocess through Dagster Pipes) builds the tiny
    base on its first job and trains an adapter per task; ``ftp-serve`` then serves the base (the
    first champion, as the agent's configured model) and the adapters on CPU, by name from the
    trainer's folders; the experiments start once each adapter has passed the readiness gate there."""
    import openai

    from ftp_assets.resources import LOCAL_SERVING_API_KEY, TINY_BASE_NAME, SelfHostedTraining
    from ftp_serving.server import running_server

    os.environ["FTP_AGENT_ENDPOINT"] = "self_hosted"
    settings = {"hook_agent_model": TINY_BASE_NAME, "body_agent_model": TINY_BASE_NAME}
    run_config = QUIET_LOGS | {
        "resources": {
            "experiment_settings": {"config": settings | {"challenger_share": SELF_HOSTED_SHARE}},
            "self_hosted_training": {"config": {"learning_rate": SELF_HOSTED_LEARNING_RATE}},
        }
    }
    training = SelfHostedTraining()
    _say("The tiny base: a tokenizer and two layers trained briefly on all the demo posts (ftp_trainer.tiny_base)")
    base_started = time.monotonic()
    _build_base(db, training.base_model_location(), seed=training.seed)
    print(f"{TINY_BASE_NAME} at {training.base_model_location()} in {time.monotonic() - base_started:.0f} s")
    for task in TASKS:
        _say(f"Training an adapter for the {task} task (the self-hosted LoRA trainer)")
        _trained(task, _train(task, run_config, assets=["engaged_posts", "training_jsonl", "fine_tuned_model"]))

    base, adapters = training.base_model_location(), training.adapters_root()
    _say("Serving the base and its adapters on CPU (ftp-serve)")
    with running_server(base, TINY_BASE_NAME, adapters, max_batch=SELF_HOSTED_WORKERS) as server:
        os.environ["FTP_SERVING_URL"] = server.base_url
        print(f"{TINY_BASE_NAME} and the adapters under {adapters} at {server.base_url}")
        for task in TASKS:
            _started(task, _train(task, run_config, assets=["ab_experiment"]))
        client = openai.OpenAI(base_url=server.base_url, api_key=LOCAL_SERVING_API_KEY, max_retries=0, timeout=120)
        _live_week(
            db,
            {"self_hosted": client},
            seed=seed,
            posts_per_day=posts_per_day,
            workers=SELF_HOSTED_WORKERS,
            run_config=run_config,
        )


def _build_base(db: PostsDatabase, folder: str, *, seed: int) -> None:
    """The first champion: a base that writes like the average post (every post, engaged or not,
    as chats of both tasks), so that an adapter on the engaged posts has something to add. The
    trainer reuses a finished base at this folder rather than build one from its training file."""
    from ftp_assets.domain.dataset import build_example, system_message
    from ftp_trainer.tiny_base import build_tiny_base

    columns = db.table.c
    query = sa.select(columns.persona_id, columns.original_input, columns.hook, columns.body)
    with db.engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(query) if all(isinstance(value, str) for value in row)]
    texts = [
        message["content"]
        for persona, topic, hook, body in rows
        for task in TASKS
        for message in build_example(task, system_message(persona, task, {}), topic, hook, body)["messages"]
    ]
    build_tiny_base(texts, folder, seed=seed, threads=2)


def _live_week(
    db: PostsDatabase, clients: Mapping[str, object], *, seed: int, posts_per_day: int, workers: int, run_config: dict
) -> None:
    """A SIMULATED week of both experiments, evaluated once a simulated day until both decide."""
    from dagster import DagsterInstance

    from ftp_assets.adapters.experiments_store import ExperimentStore
    from ftp_assets.definitions import load_definitions
    from ftp_assets.resources import ExperimentSettings
    from ftp_demo.live_week import simulate_posts

    defs, instance = load_definitions(), DagsterInstance.get()
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
    decisions: dict[str, tuple[AbTestResult, RegisteredModel]] = {}
    # Per task, arm and simulated day: the audience model's expected rate summed over the arm's
    # posts, and their number.
    expected: dict[tuple[str, str, int], list[float]] = {}

    _say(
        f"SIMULATED week of the live experiment: {posts_per_day} posts a day, challenger share "
        f"{experiments['hook'].challenger_share:.0%} at the start, simulated audience (ftp_demo.audience)"
    )
    for day in range(1, SIMULATED_DAYS + 2):
        if day <= SIMULATED_DAYS:
            # As the agent does: the share in force, and once a task's experiment has decided,
            # every generation from the model that won.
            experiments = {task: _as_routed(store.get(e.experiment_id) or e) for task, e in experiments.items()}
            rows = simulate_posts(
                clients,  # type: ignore[arg-type]
                experiments,
                start=started_at + timedelta(days=day - 1),
                end=started_at + timedelta(days=day),
                posts=posts_per_day,
                first_id=next_post_id(db),
                seed=seed * 1000 + day,
                workers=workers,
            )
            db.insert_posts(rows)
            _add_expected_rates(expected, rows, experiments, day)
        look = started_at + timedelta(days=day) + timedelta(minutes=1)
        if look - maturity <= started_at:
            continue  # nothing has matured yet
        for task in TASKS:
            if task in decisions:
                continue
            evaluation = {"ops": {"ab_test_result": {"config": {"evaluated_at": look.isoformat()}}}}
            run = defs.resolve_job_def("experiment_evaluation").execute_in_process(
                instance=instance, partition_key=task, raise_on_error=False, run_config=run_config | evaluation
            )
            if not run.success:
                raise SystemExit(f"The {task} evaluation run {run.run_id} failed; see the log above or `make ui`.")
            outcome = run.output_for_node("ab_test_result")
            print(f"simulated day {day}, {task}: {outcome.decision:8} {_look_line(outcome.statistics)}")
            if outcome.decision != "continue":
                decisions[task] = (outcome, run.output_for_node("registered_model"))
        if len(decisions) == len(TASKS):
            break

    _say("Decisions")
    for task in TASKS:
        lift = _pct(_expected_lift(expected, task))
        print(f"{task}: expected lift under the audience model {lift} (over the arms' generations)")
        if task not in decisions:
            print(f"{task}: no decision within the simulated week (the experiment keeps running)")
            continue
        outcome, registered = decisions[task]
        print(f"{task}: {outcome.decision.upper()}: {outcome.reason}")
        print(
            f"      registry: {registered.action}; champion is now "
            f"{registered.champion_model or 'the agent model'} (version {registered.champion_version})"
        )


def _look_line(stats: Mapping) -> str:
    """One look in a line: posts per arm, the lift, and the statistic against the boundary."""
    line = f"n={stats['n_control']}/{stats['n_treatment']} lift {_pct(stats['lift'])}"
    if stats.get("statistic") is not None:
        line += f", z {stats['statistic']:.2f}"
    if stats.get("boundary") is not None:
        line += f" vs boundary {stats['boundary']:.2f} (information {stats['information_fraction']:.0%})"
    elif stats.get("ci_lower") is not None:
        line += f" always-valid [{_pct(stats['ci_lower'])}, {_pct(stats['ci_upper'])}]"
    if stats.get("ramp_to"):
        line += f"; share -> {stats['ramp_to']:.0%}"
    return line


def _as_routed(experiment: Experiment) -> Experiment:
    """The experiment as the agent routes by it: a promoted challenger (or a kept champion)
    serves every generation once the experiment has decided."""
    from dataclasses import replace

    from ftp_assets.adapters.experiments_store import PROMOTED, RUNNING

    if experiment.status == RUNNING:
        return experiment
    return replace(experiment, challenger_share=1.0 if experiment.status == PROMOTED else 0.0)


def _add_expected_rates(
    expected: dict[tuple[str, str, int], list[float]],
    rows: Sequence[Mapping],
    experiments: Mapping[str, Experiment],
    day: int,
) -> None:
    from ftp_demo.audience import expected_engagement_rate

    for row in rows:
        rate = expected_engagement_rate(row["persona_id"], row["hook"], row["body"])
        for task, experiment in experiments.items():
            arm = "challenger" if row[f"{task}_model"] == experiment.challenger_model else "champion"
            totals = expected.setdefault((task, arm, day), [0.0, 0.0])
            totals[0] += rate
            totals[1] += 1


def _expected_lift(expected: Mapping[tuple[str, str, int], list[float]], task: str) -> float | None:
    """The lift the audience model gives the challenger's generations: per simulated day, the mean
    expected rate of the challenger's posts over the champion's, minus one, averaged with the
    analysis's weights (n_champion·n_challenger/n). Per day, because the posts' rates drift over
    the week (the other task's winner, the share's ramp): pooling the week would let that drift
    pass for a lift, as it would in the analysis."""
    lifts, weights = [], []
    for day in sorted({key[2] for key in expected if key[0] == task}):
        challenger, champion = expected.get((task, "challenger", day)), expected.get((task, "champion", day))
        if not challenger or not champion or not challenger[1] or not champion[1]:
            continue
        lifts.append((challenger[0] / challenger[1]) / (champion[0] / champion[1]) - 1)
        weights.append(challenger[1] * champion[1] / (challenger[1] + champion[1]))
    if not weights:
        return None
    return sum(lift * weight for lift, weight in zip(lifts, weights, strict=True)) / sum(weights)
