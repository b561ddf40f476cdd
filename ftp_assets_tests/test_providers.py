"""The OpenAI provider and ``run_fine_tune``, over HTTP against the local OpenAI-compatible service."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import httpx2
import openai
import pytest
import sqlalchemy as sa
from dagster import DagsterExecutionInterruptedError

from ftp_assets.adapters.experiments_store import ExperimentStore
from ftp_assets.adapters.fine_tuning_jobs import CREATED, INTENT, FineTuningJobStore
from ftp_assets.adapters.providers import (
    BudgetExceeded,
    FineTuneRequest,
    FineTuningFailed,
    FineTuningTimeout,
    OpenAIFineTuningProvider,
    run_fine_tune,
)
from ftp_assets.adapters.providers.base import FineTuningNeedsAttention
from ftp_local_openai import running_service

SECRET_KEY = "sk-test-SECRET-4f9c2e7a1b"
# Slow enough that a job is still running when a test interrupts it: one epoch of 20 examples is
# 20 steps of 0.1 s.
STEP_SECONDS = 0.1
TOPICS = [
    "morning routines",
    "remote work",
    "learning to cook",
    "running a first marathon",
    "saving money",
    "reading more books",
    "starting a podcast",
    "keeping houseplants alive",
    "public speaking",
    "learning a language",
    "moving cities",
    "side projects",
    "sleep",
    "coffee",
    "walking meetings",
    "journaling",
    "saying no",
    "deep work",
    "travelling light",
    "mentoring",
]


def write_examples(path: Path, task: str, count: int = 20) -> Path:
    system = f"Write the {'opening line' if task == 'hook' else 'body'} of a Threads post."
    with path.open("w") as jsonl:
        for topic in TOPICS[:count]:
            answer = (
                f"Nobody tells you the hard part of {topic} is starting."
                if task == "hook"
                else f"I tried {topic} for a month. Small steps every day beat one big push."
            )
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Topic: {topic}"},
                {"role": "assistant", "content": answer},
            ]
            jsonl.write(json.dumps({"messages": messages}) + "\n")
    return path


def make_request(folder: Path, task: str = "hook", *, validation: bool = True, **changes) -> FineTuneRequest:
    fields = dict(
        task=task,
        dataset_hash=f"sha256-{task}-0001",
        training_file=write_examples(folder / f"{task}_train.jsonl", task),
        validation_file=write_examples(folder / f"{task}_valid.jsonl", task, count=10) if validation else None,
        base_model="gpt-4o-mini-2024-07-18",
        suffix=f"threads-{task}",
        n_epochs=1,
        seed=7,
        dagster_run_id="run-1234",
    )
    return FineTuneRequest(**{**fields, **changes})


def client_for(service, api_key: str | None = None, **http_hooks) -> openai.OpenAI:
    """The official client; ``http_hooks`` (httpx's ``request``/``response`` event hooks) stand in
    for what the network can do to a call."""
    http_client = openai.DefaultHttpxClient(event_hooks=http_hooks) if http_hooks else None
    return openai.OpenAI(base_url=service.base_url, api_key=api_key or service.api_key, http_client=http_client)


def job_records(request: FineTuneRequest) -> FineTuningJobStore:
    """The job records in a SQLite database beside the request's files: runs on the same files
    share them, as a deployment's runs share its database."""
    engine = sa.create_engine(f"sqlite:///{request.training_file.parent / 'ftp.sqlite3'}")
    ExperimentStore(engine).init_schema()
    return FineTuningJobStore(engine)


def run(service, request: FineTuneRequest, log_lines: list[str], *, client: openai.OpenAI | None = None, **options):
    # A short overall timeout, so a runner that never sees the end fails the test instead of hanging it.
    settings = dict(
        jobs=job_records(request),
        log=log_lines.append,
        estimated_cost_usd=1.0,
        budget_usd=10.0,
        timeout_s=30,
        poll_initial_s=0.02,
        poll_max_s=0.2,
    )
    provider = OpenAIFineTuningProvider(client or client_for(service))
    return run_fine_tune(provider, request, **{**settings, **options})


def service_jobs(service) -> list:
    return list(client_for(service).fine_tuning.jobs.list(limit=100))


def service_events(service, job_id: str) -> list:
    """Oldest first."""
    return list(client_for(service).fine_tuning.jobs.list_events(job_id, limit=100))[::-1]


@pytest.fixture
def slow_openai(tmp_path):
    """A service whose jobs take a few seconds, with a distinctive key to look for in the output."""
    with running_service(tmp_path / "slow_openai", api_key=SECRET_KEY, step_seconds=STEP_SECONDS) as service:
        yield service


# The provider resolves "auto" to 5 epochs of 20 examples: more events than one page holds, so
# the event pages must be followed.
@pytest.mark.parametrize(
    ("task", "validation", "n_epochs", "epochs_run"), [("hook", True, 1, 1), ("body", False, "auto", 5)]
)
def test_a_job_runs_to_a_fine_tuned_model_and_logs_each_event_once(
    local_openai, tmp_path, task, validation, n_epochs, epochs_run
):
    log_lines: list[str] = []
    request = make_request(tmp_path, task, validation=validation, n_epochs=n_epochs)

    result = run(local_openai, request, log_lines)

    [job] = service_jobs(local_openai)
    assert job.status == "succeeded"
    assert result.model_id == job.fine_tuned_model and result.model_id.startswith("ft:gpt-4o-mini-2024-07-18:")
    assert f":threads-{task}:" in result.model_id
    assert (result.job_id, result.training_file_id) == (job.id, job.training_file)
    assert result.trained_tokens == job.trained_tokens > 0
    assert job.metadata == {
        "ftp_key": request.idempotency_key,
        "ftp_dataset_hash": request.dataset_hash,
        "ftp_task": task,
        "dagster_run_id": "run-1234",
    }
    assert job.method.supervised.hyperparameters.n_epochs == epochs_run and job.seed == 7
    # The provider's resolved hyperparameters, not the requested "auto".
    assert result.hyperparameters == job.method.supervised.hyperparameters.model_dump()
    assert result.hyperparameters["n_epochs"] == epochs_run
    assert (job.validation_file is not None) == validation

    events = service_events(local_openai, job.id)
    if n_epochs == "auto":
        assert len(events) > 100, "meant to need more than one page of events"
    event_lines = [line for line in log_lines if line.startswith(f"[{job.id}]")]
    assert event_lines == [f"[{job.id}] {event.level}: {event.message}" for event in events]

    metrics = [event.data for event in events if event.type == "metrics"]
    assert [step.step for step in result.step_metrics] == [data["step"] for data in metrics]
    assert [step.train_loss for step in result.step_metrics] == [data["train_loss"] for data in metrics]
    assert result.final_train_loss == metrics[-1]["train_loss"]
    if validation:
        final_checkpoint = max(
            client_for(local_openai).fine_tuning.jobs.checkpoints.list(job.id), key=lambda c: c.step_number
        )
        assert final_checkpoint.metrics.full_valid_loss is not None
        assert result.final_valid_loss == final_checkpoint.metrics.full_valid_loss
    else:
        assert result.final_valid_loss is None
    assert result.duration_s == job.finished_at - job.created_at


def test_a_succeeded_job_is_reused_instead_of_trained_again(local_openai, tmp_path):
    first = run(local_openai, make_request(tmp_path), [])
    log_lines: list[str] = []

    second = run(local_openai, make_request(tmp_path, dagster_run_id="run-5678"), log_lines)

    assert second.model_id == first.model_id and second.job_id == first.job_id
    assert len(service_jobs(local_openai)) == 1
    assert any("Re-attached" in line for line in log_lines)


@pytest.mark.parametrize("provider_keeps_metadata", [True, False])
def test_a_run_that_died_while_polling_reattaches_to_its_job(slow_openai, tmp_path, provider_keeps_metadata):
    """Found again by its metadata, or, on a provider that drops metadata, by the job record."""
    slow_openai.faults.drop_metadata(not provider_keeps_metadata)
    request = make_request(tmp_path, validation=False)
    # The first run got as far as submitting, then stopped waiting with the job still running.
    with pytest.raises(FineTuningTimeout) as stopped:
        run(slow_openai, request, [], timeout_s=0.3)
    log_lines: list[str] = []

    result = run(slow_openai, request, log_lines)

    [job] = service_jobs(slow_openai)
    assert job.id == stopped.value.job_id == result.job_id and job.status == "succeeded"
    assert [file.purpose for file in client_for(slow_openai).files.list()].count("fine-tune") == 1
    assert any("Re-attached" in line and job.id in line for line in log_lines)
    record = job_records(request).get(request.idempotency_key)
    assert (record.status, record.job_id, record.task, record.dataset_hash) == (
        CREATED,
        job.id,
        "hook",
        request.dataset_hash,
    )
    assert record.hyperparameters == {
        "n_epochs": 1,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "seed": 7,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"n_epochs": 2},
        {"batch_size": 4},
        {"learning_rate_multiplier": 0.5},
        {"seed": 8},
        {"base_model": "gpt-4.1-mini-2025-04-14"},
    ],
)
def test_a_request_that_changes_the_model_is_a_new_job_not_a_retry(local_openai, tmp_path, change):
    first = run(local_openai, make_request(tmp_path), [])
    log_lines: list[str] = []

    changed = run(local_openai, make_request(tmp_path, **change), log_lines)

    assert changed.job_id != first.job_id and len(service_jobs(local_openai)) == 2
    assert not any("Re-attached" in line for line in log_lines)
    # The same request again is a retry.
    assert run(local_openai, make_request(tmp_path, **change), []).job_id == changed.job_id


def test_the_idempotency_key_is_a_compact_hash_of_what_changes_the_model(tmp_path):
    request = make_request(tmp_path)
    assert len(request.idempotency_key) == 64 and int(request.idempotency_key, 16) >= 0
    # Neither the run nor the suffix nor where the files are changes the model.
    (tmp_path / "elsewhere").mkdir()
    same = make_request(tmp_path / "elsewhere", dagster_run_id="another-run", suffix="other")
    assert same.idempotency_key == request.idempotency_key
    assert make_request(tmp_path, learning_rate_multiplier=2).idempotency_key == (
        make_request(tmp_path, learning_rate_multiplier=2.0).idempotency_key
    )


def test_bursts_of_rate_limits_and_server_errors_are_survived(local_openai, tmp_path):
    log_lines: list[str] = []

    def log_and_break_the_service(line: str) -> None:
        # More failures in a row than the client's own retries absorb, so the runner's loop must.
        if line.startswith("[") and not any(logged.startswith("[") for logged in log_lines):
            local_openai.faults.fail_next_responses(4)
        log_lines.append(line)

    local_openai.faults.rate_limit_next(4, retry_after=0.05)
    result = run(local_openai, make_request(tmp_path), [], log=log_and_break_the_service)

    [job] = service_jobs(local_openai)
    assert result.model_id == job.fine_tuned_model and job.status == "succeeded"
    unavailable = [line for line in log_lines if "unavailable" in line]
    assert any("429" in line and "rate_limit_exceeded" in line for line in unavailable)
    assert any("500" in line for line in unavailable)


def is_create(request: httpx2.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/fine_tuning/jobs")


def lose_the_first_create_answer(lost_answers: list[str]):
    """An httpx response hook: the service creates the job but its answer never arrives (as when
    a connection drops); a blind retry of the create would start a second paid job."""

    def hook(response: httpx2.Response) -> None:
        if is_create(response.request) and not lost_answers:
            lost_answers.append(str(response.request.url))
            raise httpx2.ReadTimeout("answer lost on the way back", request=response.request)

    return hook


def test_a_create_whose_answer_is_lost_is_looked_up_not_repeated(local_openai, tmp_path):
    lost_answers: list[str] = []
    client = client_for(local_openai, response=[lose_the_first_create_answer(lost_answers)])
    log_lines: list[str] = []

    result = run(local_openai, make_request(tmp_path), log_lines, client=client)

    [job] = service_jobs(local_openai)
    assert lost_answers and result.job_id == job.id
    assert any("Re-attached" in line and job.id in line for line in log_lines)


def test_a_lost_create_answer_on_a_provider_that_drops_metadata_asks_a_person(local_openai, tmp_path):
    """Neither the record (no id came back) nor the provider (no metadata) can name the job that
    may exist: the step stops instead of paying again, and says how to go on."""
    local_openai.faults.drop_metadata()
    request = make_request(tmp_path)
    client = client_for(local_openai, response=[lose_the_first_create_answer([])])

    with pytest.raises(FineTuningNeedsAttention) as stopped:
        run(local_openai, request, [], client=client)
    with pytest.raises(FineTuningNeedsAttention):
        run(local_openai, request, [])

    [job] = service_jobs(local_openai)
    assert job.metadata is None
    message = str(stopped.value)
    key = request.idempotency_key
    assert "task hook" in message and "run-1234" in message and "SECRET" not in message
    assert "clear the intent (DELETE FROM ftp_fine_tuning_jobs" in message and key in message
    records = job_records(request)
    assert (records.get(key).status, records.get(key).job_id) == (INTENT, None)

    # The person finds the job in the provider's list and records it, as the message says.
    with records.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE ftp_fine_tuning_jobs SET job_id = :job_id, status = 'created' WHERE key = :key"),
            {"job_id": job.id, "key": key},
        )
    assert run(local_openai, request, []).job_id == job.id
    assert len(service_jobs(local_openai)) == 1


def test_a_refused_create_leaves_no_intent_behind(local_openai, tmp_path):
    request = make_request(tmp_path, base_model="no-such-model")

    with pytest.raises(FineTuningFailed, match="model_not_available"):
        run(local_openai, request, [])

    assert job_records(request).get(request.idempotency_key) is None and service_jobs(local_openai) == []


@pytest.mark.parametrize("retry_after", [-5.0, 0.05])
def test_a_rate_limited_create_is_retried_after_a_bounded_wait(local_openai, tmp_path, retry_after):
    """A 429 means nothing was created: the create is tried again, after the provider's
    ``retry-after`` clamped to [0, time left] (a negative one used to crash the step)."""

    def rate_limit_the_first_create(request: httpx2.Request) -> None:
        if is_create(request) and not sleeps:
            local_openai.faults.rate_limit_next(1, retry_after=retry_after)

    sleeps: list[float] = []
    client = client_for(local_openai, request=[rate_limit_the_first_create])

    result = run(local_openai, make_request(tmp_path), [], client=client, sleep=sleeps.append)

    [job] = service_jobs(local_openai)
    assert result.job_id == job.id and job.status == "succeeded"
    assert sleeps and all(0 <= seconds <= 30 for seconds in sleeps)


def test_a_retry_after_beyond_the_deadline_is_cut_to_it_and_then_gives_up(local_openai, tmp_path):
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    local_openai.faults.rate_limit_next(100, retry_after=3600)
    client = client_for(local_openai).with_options(max_retries=0)

    with pytest.raises(FineTuningTimeout) as timeout:
        run(local_openai, make_request(tmp_path), [], client=client, timeout_s=2.0, sleep=sleep, clock=lambda: now[0])

    assert sleeps == [2.0] and timeout.value.job_id is None
    local_openai.faults.clear()
    assert service_jobs(local_openai) == []


def test_a_failing_job_raises_the_providers_code_and_message_and_is_not_reused(local_openai, tmp_path):
    local_openai.faults.fail_next_job()

    with pytest.raises(FineTuningFailed) as failure:
        run(local_openai, make_request(tmp_path), [])

    [failed] = service_jobs(local_openai)
    assert failed.status == "failed"
    assert (failure.value.code, failure.value.provider_message) == (failed.error.code, failed.error.message)
    assert failed.error.code in str(failure.value) and failed.error.message in str(failure.value)

    retried = run(local_openai, make_request(tmp_path), [])
    assert len(service_jobs(local_openai)) == 2 and retried.job_id != failed.id


def test_a_malformed_file_is_rejected_by_the_services_validation(local_openai, tmp_path):
    request = make_request(tmp_path, validation=False)
    lines = request.training_file.read_text().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "Topic: no answer given"}]})
    request.training_file.write_text("\n".join(lines) + "\n")

    with pytest.raises(FineTuningFailed) as failure:
        run(local_openai, request, [])

    [job] = service_jobs(local_openai)
    assert job.status == "failed" and job.error.code == failure.value.code == "invalid_training_file"
    assert "Line 3" in failure.value.provider_message and job.error.message in str(failure.value)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, DagsterExecutionInterruptedError])
def test_a_run_interrupted_while_creating_cancels_the_job_it_created(slow_openai, tmp_path, interruption):
    """The interruption arrives while the create call is in flight: the job exists but its id
    never reached the run, which finds it by its key to cancel it."""

    def interrupt_when_the_job_is_created(response: httpx2.Response) -> None:
        if is_create(response.request):
            raise interruption()

    request = make_request(tmp_path)
    log_lines: list[str] = []
    with pytest.raises(interruption):
        run(
            slow_openai,
            request,
            log_lines,
            client=client_for(slow_openai, response=[interrupt_when_the_job_is_created]),
        )

    [job] = service_jobs(slow_openai)
    assert job.status == "cancelled"
    assert f"Run interrupted: cancelled fine-tuning job {job.id} (status cancelled)." in log_lines
    assert job_records(request).get(request.idempotency_key).job_id == job.id
    # A re-run pays for a new job: the cancelled one is no model.
    assert run(slow_openai, request, []).job_id != job.id


def test_a_run_interrupted_while_uploading_has_nothing_to_cancel(local_openai, tmp_path):
    def interrupt_the_upload(response: httpx2.Response) -> None:
        if response.request.method == "POST" and response.request.url.path.endswith("/files"):
            raise KeyboardInterrupt()

    request = make_request(tmp_path)
    log_lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run(local_openai, request, log_lines, client=client_for(local_openai, response=[interrupt_the_upload]))

    assert service_jobs(local_openai) == [] and job_records(request).get(request.idempotency_key) is None
    assert not any("interrupted" in line for line in log_lines)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, DagsterExecutionInterruptedError])
def test_an_interrupted_run_cancels_its_job(slow_openai, tmp_path, interruption):
    sleeps: list[float] = []

    def sleep_until_interrupted(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise interruption()

    log_lines: list[str] = []
    with pytest.raises(interruption):
        run(slow_openai, make_request(tmp_path), log_lines, sleep=sleep_until_interrupted)

    [job] = service_jobs(slow_openai)
    assert job.status == "cancelled"
    assert f"Run interrupted: cancelled fine-tuning job {job.id} (status cancelled)." in log_lines


def test_a_job_that_outlasts_the_timeout_is_left_running_for_a_rerun(slow_openai, tmp_path):
    with pytest.raises(FineTuningTimeout) as timeout:
        run(slow_openai, make_request(tmp_path), [], timeout_s=0.3)

    [job] = service_jobs(slow_openai)
    assert job.status not in ("succeeded", "failed", "cancelled") and timeout.value.job_id == job.id
    assert "re-attaches" in str(timeout.value)


def test_the_budget_guard_refuses_before_anything_is_uploaded(local_openai, tmp_path):
    with pytest.raises(BudgetExceeded) as refusal:
        run(local_openai, make_request(tmp_path), [], estimated_cost_usd=12.5, budget_usd=10.0)

    assert "$12.50" in str(refusal.value) and "$10.00" in str(refusal.value)
    assert list(client_for(local_openai).files.list()) == [] and service_jobs(local_openai) == []


def test_the_api_key_appears_in_no_log_result_or_error(slow_openai, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    log_lines: list[str] = []
    result = run(slow_openai, make_request(tmp_path, "body"), log_lines)
    slow_openai.faults.fail_next_job()
    with pytest.raises(FineTuningFailed) as job_failure:
        run(slow_openai, make_request(tmp_path, "hook"), log_lines)
    with pytest.raises(FineTuningFailed) as refused:
        run_fine_tune(
            OpenAIFineTuningProvider(client_for(slow_openai, api_key=SECRET_KEY + "-wrong")),
            make_request(tmp_path, "hook"),
            jobs=job_records(make_request(tmp_path, "hook")),
            log=log_lines.append,
            estimated_cost_usd=1.0,
            budget_usd=10.0,
        )
    assert refused.value.code == "invalid_api_key"

    tracebacks = ["".join(traceback.format_exception(error.value)) for error in (job_failure, refused)]
    output = "\n".join([*log_lines, repr(result), caplog.text, *tracebacks])
    assert "SECRET" not in output
