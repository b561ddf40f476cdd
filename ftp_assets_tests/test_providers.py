"""The OpenAI provider and ``run_fine_tune``, over HTTP against the local OpenAI-compatible service."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import httpx2
import openai
import pytest
from dagster import DagsterExecutionInterruptedError

from ftp_assets.adapters.providers import (
    BudgetExceeded,
    FineTuneRequest,
    FineTuningFailed,
    FineTuningTimeout,
    OpenAIFineTuningProvider,
    run_fine_tune,
)
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


def client_for(service, api_key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url, api_key=api_key or service.api_key)


def run(service, request: FineTuneRequest, log_lines: list[str], **options):
    # A short overall timeout, so a runner that never sees the end fails the test instead of hanging it.
    settings = dict(
        log=log_lines.append,
        estimated_cost_usd=1.0,
        budget_usd=10.0,
        timeout_s=30,
        poll_initial_s=0.02,
        poll_max_s=0.2,
    )
    return run_fine_tune(OpenAIFineTuningProvider(client_for(service)), request, **{**settings, **options})


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
        "ftp_dataset_hash": request.dataset_hash,
        "ftp_task": task,
        "dagster_run_id": "run-1234",
    }
    assert job.method.supervised.hyperparameters.n_epochs == epochs_run and job.seed == 7
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


def test_a_run_that_died_while_polling_reattaches_to_its_job(slow_openai, tmp_path):
    request = make_request(tmp_path, validation=False)
    # The crashed process got as far as submitting; nothing of it survives but the service's state.
    submitted = OpenAIFineTuningProvider(client_for(slow_openai)).submit(request).job
    assert submitted.status not in ("succeeded", "failed", "cancelled")
    log_lines: list[str] = []

    result = run(slow_openai, request, log_lines)

    [job] = service_jobs(slow_openai)
    assert job.id == submitted.job_id == result.job_id and job.status == "succeeded"
    assert [file.purpose for file in client_for(slow_openai).files.list()].count("fine-tune") == 1
    assert any("Re-attached" in line and job.id in line for line in log_lines)


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


def test_a_create_whose_answer_is_lost_is_looked_up_not_repeated(local_openai, tmp_path):
    """The service creates the job but its answer never arrives (as when a connection drops);
    a blind retry of the create would start a second paid job."""
    lost_answers: list[str] = []

    def lose_the_first_create_answer(response: httpx2.Response) -> None:
        request = response.request
        if request.method == "POST" and request.url.path.endswith("/fine_tuning/jobs") and not lost_answers:
            lost_answers.append(str(request.url))
            raise httpx2.ReadTimeout("answer lost on the way back", request=request)

    client = openai.OpenAI(
        base_url=local_openai.base_url,
        api_key=local_openai.api_key,
        http_client=openai.DefaultHttpxClient(event_hooks={"response": [lose_the_first_create_answer]}),
    )

    submission = OpenAIFineTuningProvider(client).submit(make_request(tmp_path))

    [job] = service_jobs(local_openai)
    assert lost_answers and submission.reattached and submission.job.job_id == job.id


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
            log=log_lines.append,
            estimated_cost_usd=1.0,
            budget_usd=10.0,
        )
    assert refused.value.code == "invalid_api_key"

    tracebacks = ["".join(traceback.format_exception(error.value)) for error in (job_failure, refused)]
    output = "\n".join([*log_lines, repr(result), caplog.text, *tracebacks])
    assert "SECRET" not in output
