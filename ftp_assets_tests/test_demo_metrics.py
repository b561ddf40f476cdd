"""`ftp-assets demo` with a Pushgateway configured: afterwards Prometheus answers a PromQL query
for every documented metric, per task, with the demo's own figures."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.metrics import CATALOGUE
from ftp_assets.domain.dataset import TASKS
from ftp_assets_tests.demo_run import demo_environment, run_demo
from ftp_assets_tests.fixtures.prometheus import query, query_until, values

# Only after a failed run, and the demo's runs succeed.
ONLY_AFTER_A_FAILURE = {"ftp_run_last_failure_timestamp_seconds"}
# The demo's experiments are decided by its end: these held while they ran.
WHILE_RUNNING = {
    "ftp_experiment_started_timestamp_seconds",
    "ftp_experiment_deadline_timestamp_seconds",
    "ftp_experiment_challenger_share",
}


@pytest.mark.slow
def test_after_the_demo_prometheus_answers_for_every_documented_metric(monitoring, tmp_path):
    home = tmp_path / "home"
    environment = demo_environment(home, FTP_PUSHGATEWAY_URL=monitoring.pushgateway_url)
    demo = run_demo(environment, "--posts", "2000", "--seed", "11")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert f"pushed its metrics to {monitoring.pushgateway_url}" in demo.stdout
    assert "were not pushed" not in demo.stdout + demo.stderr

    prometheus = monitoring.prometheus_url
    store = ExperimentStore(sa.create_engine(f"sqlite:///{home / 'posts.sqlite3'}"))
    promoted = {task for task in TASKS if "promoted" in [outcome.status for outcome in store.history(task)]}
    assert promoted, "seed 11 promotes a challenger"
    # The last scrape after the demo's last push has happened once the run counts are in.
    query_until(prometheus, "ftp_run_failures_total", bool)
    for spec in CATALOGUE:
        if spec.name in ONLY_AFTER_A_FAILURE:
            continue
        promql = f"last_over_time({spec.name}[30m])" if spec.name in WHILE_RUNNING else spec.name
        result = query(prometheus, promql)
        if spec.stage == "registry":  # a task's champion is the agent's own model until a promotion
            assert set(values(result, "task")) == promoted, f"{promql}: {result}"
        elif spec.per_task:
            assert set(values(result, "task")) == set(TASKS), f"{promql}: {result}"
        else:
            assert result, promql
    assert query(prometheus, "ftp_run_last_failure_timestamp_seconds") == []

    # The figures are the demo's: the experiments table's decisions.
    for task in TASKS:
        outcomes = [outcome.status for outcome in store.history(task)]
        decisions = values(query(prometheus, f'ftp_experiment_decisions_total{{task="{task}"}}'), "outcome")
        assert sum(decisions.values()) == len([status for status in outcomes if status != "running"])
        assert decisions["promoted"] == outcomes.count("promoted")
        started = values(query(prometheus, f'ftp_experiments_started_total{{task="{task}"}}'))
        assert started == {"": len(outcomes)}
        assert values(query(prometheus, f'ftp_experiment_running{{task="{task}"}}')) == {
            "": float("running" in outcomes)
        }
    failures = values(query(prometheus, "ftp_run_failures_total"), "dagster_job")
    assert set(failures) >= {"training_cycle", "experiment_evaluation"} and not any(failures.values())
