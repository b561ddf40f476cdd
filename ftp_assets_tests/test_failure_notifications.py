"""The run-failure sensor, evaluated as Dagster evaluates it on a real instance after a real
failed run: its notification, received by a real HTTP server on 127.0.0.1, and its run-failure
counts, pushed to a real Pushgateway. The secrets an error may quote never leave the process."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    StaticPartitionsDefinition,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    instance_for_test,
    job,
    op,
)

from ftp_assets.adapters.notifications import NotificationError, post_notification
from ftp_assets.observability import build_defs
from ftp_assets.observability.sensors import SENSOR_NAME
from ftp_assets.resources import MetricsPublisher
from ftp_assets.settings import DeploymentSettings
from ftp_assets.steps.failure_notice import (
    FailureNotice,
    JobFailures,
    first_sentence,
    json_payload,
    run_failure_samples,
    scrubbed,
    slack_payload,
)
from ftp_assets_tests.fixtures.prometheus import scraped
from ftp_demo.monitoring import free_port

PASSWORD = "s3cret"
POSTS_DB_URL = f"postgresql://ftp:{PASSWORD}@db/posts"
ERROR = f"The posts database refused the connection at {POSTS_DB_URL}. Retry later."
WEBHOOK_TOKEN = "T0000/B0000/xoxb-webhook-token-1234"
UI_URL = "http://localhost:3000"

TASKS = StaticPartitionsDefinition(["hook", "body"])


@asset(partitions_def=TASKS, key_prefix="ftp")
def posts_snapshot() -> None:
    raise Exception(ERROR)


@op
def nothing() -> None:
    pass


@job
def quiet_job() -> None:
    nothing()


# --- a real webhook receiver -------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 recording each POST; ``status`` is what it answers."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.paths.append(self.path)
            state.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok" if state.status == 200 else b"error")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/services/{WEBHOOK_TOKEN}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the failing run and the sensor's evaluation -------------------------------------------------


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def configure(
    monkeypatch: pytest.MonkeyPatch, *, webhook: str = "", webhook_format: str = "json", posts_db_url: str = ""
) -> None:
    """The environment of a deployment (FTP_POSTS_DB_URL, a secret, only when given)."""
    if posts_db_url:
        monkeypatch.setenv("FTP_POSTS_DB_URL", posts_db_url)
    else:
        monkeypatch.delenv("FTP_POSTS_DB_URL", raising=False)
    monkeypatch.setenv("FTP_DAGSTER_UI_URL", UI_URL)
    monkeypatch.setenv("FTP_ALERT_WEBHOOK_FORMAT", webhook_format)
    if webhook:
        monkeypatch.setenv("FTP_ALERT_WEBHOOK_URL", webhook)
    else:
        monkeypatch.delenv("FTP_ALERT_WEBHOOK_URL", raising=False)


def definitions(metrics: MetricsPublisher) -> Definitions:
    """The failing asset and a quiet job beside the observability group, as the code location has them."""
    return Definitions.merge(
        Definitions(assets=[posts_snapshot], jobs=[quiet_job], resources={"metrics": metrics}),
        build_defs(DeploymentSettings()),
    )


def fail_run(defs: Definitions, instance: DagsterInstance, partition: str = "hook") -> ExecuteInProcessResult:
    asset_job = defs.resolve_implicit_global_asset_job_def()
    result = asset_job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)
    assert not result.success
    return result


def evaluate(defs: Definitions, instance: DagsterInstance, result: ExecuteInProcessResult, metrics: MetricsPublisher):
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with build_run_status_sensor_context(
        sensor_name=SENSOR_NAME,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={"metrics": metrics},
        repository_def=defs.get_repository_def(),
    ) as context:
        return sensor(context.for_run_failure())


def assert_no_secret(text: str, receiver: Receiver) -> None:
    assert PASSWORD not in text
    assert WEBHOOK_TOKEN not in text
    assert receiver.url not in text


# --- the notification ----------------------------------------------------------------------------


def test_a_failed_run_posts_one_notice_with_its_asset_partition_link_and_first_sentence(
    monkeypatch, instance, receiver, caplog, capsys
):
    configure(monkeypatch, webhook=receiver.url)
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance, "hook")
    run_id = result.dagster_run.run_id

    caplog.clear()  # the run's own log quotes its error whole
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG):
        evaluate(defs, instance, result, metrics)
    # The sensor's log goes to stderr (Dagster's instigation logger); httpx's to logging.
    logs = capsys.readouterr().err + caplog.text

    assert len(receiver.bodies) == 1
    assert receiver.paths == [f"/services/{WEBHOOK_TOKEN}"]
    body = receiver.bodies[0]
    assert body["job"] == "__ASSET_JOB"
    assert body["run_id"] == run_id
    assert body["run_url"] == f"{UI_URL}/runs/{run_id}"
    assert body["assets"] == ["ftp/posts_snapshot"]
    assert body["partition"] == "hook"
    # The first sentence only, with the URL's credentials masked; no "Exception:" prefix.
    assert body["error"] == "The posts database refused the connection at postgresql://***@db/posts."
    assert body["text"] == (
        f"Dagster run {run_id} of job __ASSET_JOB failed (asset ftp/posts_snapshot; partition hook).\n"
        "Error: The posts database refused the connection at postgresql://***@db/posts.\n"
        f"Run: {UI_URL}/runs/{run_id}"
    )
    assert_no_secret(json.dumps(body), receiver)
    # The logs were captured, and say what happened without the webhook's URL.
    assert f"Notified the failure notification webhook (FTP_ALERT_WEBHOOK_URL) of the failure of run {run_id}" in logs
    assert "HTTP Request: POST <FTP_ALERT_WEBHOOK_URL>" in logs
    assert_no_secret(logs, receiver)


def test_a_configured_secret_quoted_by_the_error_is_masked_whole(monkeypatch, instance, receiver):
    configure(monkeypatch, webhook=receiver.url, posts_db_url=POSTS_DB_URL)
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance)

    evaluate(defs, instance, result, metrics)

    (body,) = receiver.bodies
    assert body["error"] == "The posts database refused the connection at ***."
    assert_no_secret(json.dumps(body), receiver)
    assert "db/posts" not in json.dumps(body)


def test_the_slack_format_posts_only_a_text(monkeypatch, instance, receiver):
    configure(monkeypatch, webhook=receiver.url, webhook_format="slack")
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance, "body")

    evaluate(defs, instance, result, metrics)

    assert len(receiver.bodies) == 1
    (body,) = receiver.bodies
    assert list(body) == ["text"]
    assert "ftp/posts_snapshot" in body["text"]
    assert "partition body" in body["text"]
    assert f"{UI_URL}/runs/{result.dagster_run.run_id}" in body["text"]
    assert "refused the connection at postgresql://***@db/posts." in body["text"]
    assert "Retry later" not in body["text"]
    assert_no_secret(body["text"], receiver)


def test_without_a_ui_address_the_notice_names_the_run_and_has_no_link(monkeypatch, instance, receiver):
    configure(monkeypatch, webhook=receiver.url)
    monkeypatch.delenv("FTP_DAGSTER_UI_URL")
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance)

    evaluate(defs, instance, result, metrics)

    (body,) = receiver.bodies
    assert "run_url" not in body
    assert f"Dagster run {result.dagster_run.run_id} " in body["text"]
    assert "/runs/" not in body["text"]


def test_a_webhook_answering_500_raises_an_error_that_does_not_quote_its_url(
    monkeypatch, instance, receiver, caplog, capsys
):
    configure(monkeypatch, webhook=receiver.url)
    receiver.status = 500
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance)

    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG), pytest.raises(NotificationError) as raised:
        evaluate(defs, instance, result, metrics)
    logs = capsys.readouterr().err + caplog.text

    assert str(raised.value) == "the failure notification webhook (FTP_ALERT_WEBHOOK_URL) answered 500"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert_no_secret("".join(traceback.format_exception(raised.value)), receiver)
    assert "HTTP Request: POST <FTP_ALERT_WEBHOOK_URL>" in logs
    assert_no_secret(logs, receiver)
    assert len(receiver.bodies) == 1


def test_a_webhook_that_does_not_answer_raises_an_error_naming_the_variable_not_the_url():
    url = f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"  # a port nobody listens on
    with pytest.raises(NotificationError) as raised:
        post_notification(url, {"text": "hello"}, timeout_s=2)

    assert str(raised.value) == "the failure notification webhook (FTP_ALERT_WEBHOOK_URL) did not answer: ConnectError"
    assert WEBHOOK_TOKEN not in "".join(traceback.format_exception(raised.value))


def test_with_neither_a_webhook_nor_a_gateway_the_sensor_posts_nothing_and_skips(monkeypatch, instance, receiver):
    configure(monkeypatch)
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    result = fail_run(defs, instance)

    outcome = evaluate(defs, instance, result, metrics)

    assert receiver.bodies == []
    assert "nothing to do" in outcome.skip_message


def test_a_failing_webhook_fails_the_tick_and_the_cursor_moves_on_so_the_notice_is_not_retried(
    monkeypatch, instance, receiver
):
    """Evaluated as the daemon evaluates it (evaluate_tick): the webhook's error is the tick's
    error, and the next tick does not process the run again."""
    configure(monkeypatch, webhook=receiver.url)
    receiver.status = 500
    metrics = MetricsPublisher()
    defs = definitions(metrics)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)

    def tick(cursor: str | None):
        # No repository: the in-process runs have no code location, nor then has the sensor.
        context = build_sensor_context(instance=instance, cursor=cursor, resources={"metrics": metrics})
        return sensor.evaluate_tick(context)

    first = tick(None)  # the first tick only sets the cursor
    fail_run(defs, instance)
    failed = tick(first.cursor)
    (reaction,) = failed.dagster_run_reactions
    assert reaction.error is not None
    assert "answered 500" in reaction.error.to_string()
    assert_no_secret(reaction.error.to_string(), receiver)
    assert failed.cursor != first.cursor

    receiver.status = 200
    again = tick(failed.cursor)
    assert not again.dagster_run_reactions
    assert len(receiver.bodies) == 1


# --- the run-failure counts ----------------------------------------------------------------------


def test_the_failed_runs_of_each_job_are_pushed_to_the_pushgateway(monkeypatch, instance, pushgateway, receiver):
    configure(monkeypatch)
    metrics = MetricsPublisher(pushgateway_url=pushgateway)
    defs = definitions(metrics)
    defs.resolve_job_def("quiet_job").execute_in_process(instance=instance)  # a job that succeeds
    fail_run(defs, instance, "hook")
    before = time.time()
    second = fail_run(defs, instance, "body")

    evaluate(defs, instance, second, metrics)

    series = scraped(pushgateway)
    grouping = {"job": "ftp_assets", "stage": "runs"}
    assert series[("ftp_run_failures_total", frozenset({"dagster_job": "__ASSET_JOB", **grouping}.items()))] == 2
    assert series[("ftp_run_failures_total", frozenset({"dagster_job": "quiet_job", **grouping}.items()))] == 0
    last_failure = series[
        ("ftp_run_last_failure_timestamp_seconds", frozenset({"dagster_job": "__ASSET_JOB", **grouping}.items()))
    ]
    assert before - 5 <= last_failure <= time.time()
    # A job that never failed has a count of 0 and no moment of a latest failure.
    assert not any(
        name == "ftp_run_last_failure_timestamp_seconds" and ("dagster_job", "quiet_job") in labels
        for name, labels in series
    )
    assert receiver.bodies == []  # no webhook configured: no notification


def test_run_failure_samples_count_every_job_and_time_only_those_that_failed():
    samples = run_failure_samples(
        [JobFailures("training_job", 0, None), JobFailures("__ASSET_JOB", 3, 1_700_000_000.5)]
    )
    assert [(s.name, s.value, dict(s.labels)) for s in samples] == [
        ("ftp_run_failures_total", 3.0, {"dagster_job": "__ASSET_JOB"}),
        ("ftp_run_last_failure_timestamp_seconds", 1_700_000_000.5, {"dagster_job": "__ASSET_JOB"}),
        ("ftp_run_failures_total", 0.0, {"dagster_job": "training_job"}),
    ]


# --- first sentences and scrubbing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("The database refused. Retry later.", "The database refused."),
        ("Quota exceeded! Wait an hour.", "Quota exceeded!"),
        ("Is the server up? It did not answer.", "Is the server up?"),
        ("\n\n  First line without a full stop\nSecond line. More.", "First line without a full stop"),
        ("Version 1.2.3 is not supported. Upgrade.", "Version 1.2.3 is not supported."),
        ("Ends with a stop.", "Ends with a stop."),
        ("", ""),
    ],
)
def test_first_sentence_is_the_first_lines_first_sentence(text, sentence):
    assert first_sentence(text) == sentence


def test_first_sentence_is_cut_at_300_characters_with_an_ellipsis():
    sentence = first_sentence("x" * 1000)
    assert len(sentence) == 300
    assert sentence.endswith("…")


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (
            "refused at postgresql://ftp:s3cret@db/posts",
            [],
            "refused at postgresql://***@db/posts",
        ),
        ("tracking at https://user@mlflow:5000/api", [], "tracking at https://***@mlflow:5000/api"),
        ("key sk-abc123def was rejected", ["sk-abc123def"], "key *** was rejected"),
        # The password of a configured URL, quoted alone (a driver's message).
        ("password s3cret-long is wrong", ["postgresql://ftp:s3cret-long@db/posts"], "password *** is wrong"),
        ("dsn host=db user=ftp password=hunter22 port=5432", [], "dsn host=db user=ftp password=*** port=5432"),
        ("GET /x?token=abc&page=2 failed", [], "GET /x?token=***&page=2 failed"),
        ('config {"api_key": "abc"}', [], 'config {"api_key": "***"}'),
        ("Authorization: Bearer eyJhbGciOi.x-y", [], "Authorization: Bearer ***"),
        # The whole secret URL (a webhook's) is masked, not only a part of it.
        ("posting to http://127.0.0.1:9/T/B/tok failed", ["http://127.0.0.1:9/T/B/tok"], "posting to *** failed"),
        ("nothing secret here: https://127.0.0.1:8000/v1", [], "nothing secret here: https://127.0.0.1:8000/v1"),
        ("empty secrets change nothing", ["", ""], "empty secrets change nothing"),
    ],
)
def test_scrubbed_masks_every_secret(text, secrets, expected):
    assert scrubbed(text, secrets) == expected


def test_the_payloads_have_the_notice_and_slack_escapes_its_markup():
    notice = FailureNotice(
        job="experiment_evaluation",
        run_id="abc",
        run_url=None,
        assets=("ab_test_result",),
        partition=None,
        error="Sample ratio < 0.001 & stopped.",
    )
    assert json_payload(notice) == {
        "text": "Dagster run abc of job experiment_evaluation failed (asset ab_test_result).\n"
        "Error: Sample ratio < 0.001 & stopped.",
        "job": "experiment_evaluation",
        "run_id": "abc",
        "assets": ["ab_test_result"],
        "partition": None,
        "error": "Sample ratio < 0.001 & stopped.",
    }
    assert slack_payload(notice) == {
        "text": "Dagster run abc of job experiment_evaluation failed (asset ab_test_result).\n"
        "Error: Sample ratio &lt; 0.001 &amp; stopped."
    }
