"""The CPU server through the official ``openai`` client, as the agent calls it: base and adapters
by name, batching that leaves each reply to its seed, the refusals, unloading and the API key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ftp_serving.server import RunningServer, running_server
from ftp_serving_tests.conftest import (
    BASE_NAME,
    Adapters,
    clone_adapter,
    new_job_id,
    retire,
    served_name,
    truncate_weights,
)

API_KEY = "test-key-not-secret"
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You write Threads posts."},
    {"role": "user", "content": "A post about coffee"},
]
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


@pytest.fixture(scope="module")
def server(adapters: Adapters) -> Iterator[RunningServer]:
    with running_server(adapters.base, BASE_NAME, adapters.root, api_key=API_KEY, max_loras=2, threads=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60)


def reply(client: openai.OpenAI, model: str, seed: int = 11, **options: object) -> str:
    arguments: dict[str, object] = {"max_tokens": 24, "temperature": 0.9, **options}
    completion = client.chat.completions.create(model=model, messages=PROMPT, seed=seed, **arguments)  # type: ignore[call-overload]
    content = completion.choices[0].message.content
    assert content is not None
    assert not any(token in content for token in CONTROL_TOKENS)
    return content


def test_base_and_adapter_answer_and_differ(client: openai.OpenAI, adapters: Adapters) -> None:
    completion = client.chat.completions.create(model=adapters.hook, messages=PROMPT, seed=3, max_tokens=20)
    assert completion.model == adapters.hook
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply(client, BASE_NAME) != reply(client, adapters.hook)
    assert reply(client, adapters.hook) != reply(client, adapters.body)


def test_greedy_decoding_ignores_the_seed(client: openai.OpenAI, adapters: Adapters) -> None:
    assert reply(client, adapters.hook, seed=1, temperature=0) == reply(client, adapters.hook, seed=2, temperature=0)


def test_the_same_seed_gives_the_same_reply_alone_or_batched(client: openai.OpenAI, adapters: Adapters) -> None:
    models = [BASE_NAME, adapters.hook, adapters.body]
    alone = {(model, seed): reply(client, model, seed) for model in models for seed in (1, 2)}
    assert alone[(BASE_NAME, 1)] != alone[(BASE_NAME, 2)]
    # Each request again, among many others with other seeds and prompts lengths, all at once.
    jobs = [(model, seed) for model in models for seed in (1, 2)] * 3 + [(m, s) for m in models for s in range(3, 9)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        batched = list(pool.map(lambda job: reply(client, *job), jobs))
    for (model, seed), text in zip(jobs, batched, strict=True):
        if (model, seed) in alone:
            assert text == alone[(model, seed)], (model, seed)


def test_stop_sequences_cut_the_reply(client: openai.OpenAI, adapters: Adapters) -> None:
    full = reply(client, BASE_NAME, seed=5)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = client.chat.completions.create(
        model=BASE_NAME, messages=PROMPT, seed=5, max_tokens=24, temperature=0.9, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.find(stop)]


def test_models_lists_the_base_and_the_resident_adapters(client: openai.OpenAI, adapters: Adapters) -> None:
    reply(client, adapters.hook)
    ids = [model.id for model in client.models.list()]
    assert ids[0] == BASE_NAME and adapters.hook in ids


def test_an_unknown_name_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist") as raised:
        reply(client, served_name("hook", new_job_id()))
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="not a self-hosted adapter's name"):
        reply(client, "gpt-4o-mini")


def test_truncated_weights_are_not_found_with_the_hash_in_the_message(
    client: openai.OpenAI, adapters: Adapters
) -> None:
    name = clone_adapter(adapters, adapters.hook)
    truncate_weights(adapters.root, name)
    with pytest.raises(openai.NotFoundError, match="SHA-256 hash"):
        reply(client, name)


def test_a_retired_adapter_is_refused(client: openai.OpenAI, adapters: Adapters) -> None:
    name = clone_adapter(adapters, adapters.hook)
    retire(adapters.root, name, reason="lost its experiment")
    with pytest.raises(openai.NotFoundError, match=r"retired \(lost its experiment"):
        reply(client, name)


def test_unloading_makes_the_next_request_resolve_again(
    client: openai.OpenAI, server: RunningServer, adapters: Adapters
) -> None:
    name = clone_adapter(adapters, adapters.hook)
    before = reply(client, name)
    assert name in server.engine.resident_adapters()
    http = client.with_options().post  # the client's own transport, with its key
    http("/unload_lora_adapter", body={"lora_name": name}, cast_to=httpx2.Response)
    assert name not in server.engine.resident_adapters()
    assert reply(client, name) == before  # resolved and loaded again
    http("/unload_lora_adapter", body={"lora_name": name}, cast_to=httpx2.Response)
    retire(adapters.root, name)
    with pytest.raises(openai.NotFoundError, match="retired"):
        reply(client, name)
    with pytest.raises(openai.BadRequestError, match="retired"):
        http("/load_lora_adapter", body={"lora_name": name}, cast_to=httpx2.Response)
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        http("/unload_lora_adapter", body={"lora_name": name}, cast_to=httpx2.Response)


def test_least_recently_used_adapters_are_evicted(
    client: openai.OpenAI, server: RunningServer, adapters: Adapters
) -> None:
    first, second, third = (clone_adapter(adapters, adapters.body, task="body") for _ in range(3))
    texts = {name: reply(client, name) for name in (first, second, third)}
    assert server.engine.resident_adapters() == [second, third]  # max_loras=2
    assert reply(client, first) == texts[first]  # loaded again, the same weights


def test_unsupported_options_are_bad_requests(client: openai.OpenAI, adapters: Adapters) -> None:
    with pytest.raises(openai.BadRequestError, match="Streaming"):
        client.chat.completions.create(model=BASE_NAME, messages=PROMPT, stream=True)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=BASE_NAME, messages=PROMPT, n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=BASE_NAME, messages=PROMPT, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=BASE_NAME, messages=[{"role": "user", "content": "coffee " * 2000}])


def test_a_wrong_or_missing_key_is_refused(server: RunningServer) -> None:
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.chat.completions.create(model=BASE_NAME, messages=PROMPT)
    assert "wrong-key" not in str(raised.value) and API_KEY not in str(raised.value)
    # The openai client refuses to send no key at all: a plain request without one.
    answer = httpx2.post(f"{server.base_url}/chat/completions", json={"model": BASE_NAME, "messages": PROMPT})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"
    assert httpx2.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200


def test_concurrent_requests_all_succeed(client: openai.OpenAI, adapters: Adapters) -> None:
    models = [BASE_NAME, adapters.hook, adapters.body]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        texts = list(pool.map(lambda i: reply(client, models[i % 3], seed=i), range(48)))
    assert len(texts) == 48 and all(isinstance(text, str) for text in texts)
    assert time.monotonic() - started < 60


def test_special_tokens_the_model_writes_are_kept_when_asked_as_vllm_does(
    client: openai.OpenAI, adapters: Adapters
) -> None:
    """Past its end of turn (ignore_eos) the tiny chat model writes the template's tokens: removed
    by default, kept with skip_special_tokens=false, which the readiness gate asks for."""
    options = {"ignore_eos": True}
    cleaned = client.chat.completions.create(
        model=BASE_NAME, messages=PROMPT, seed=4, max_tokens=80, temperature=0, extra_body=options
    )
    kept = client.chat.completions.create(
        model=BASE_NAME,
        messages=PROMPT,
        seed=4,
        max_tokens=80,
        temperature=0,
        extra_body=options | {"skip_special_tokens": False},
    )
    kept_text = kept.choices[0].message.content or ""
    assert any(token in kept_text for token in CONTROL_TOKENS), kept_text
    assert not any(token in (cleaned.choices[0].message.content or "") for token in CONTROL_TOKENS)
    # The stop token that ends a reply is never part of it, kept or not.
    ended = client.chat.completions.create(
        model=BASE_NAME, messages=PROMPT, max_tokens=200, temperature=0, extra_body={"skip_special_tokens": False}
    )
    assert ended.choices[0].finish_reason == "stop"
    assert not any(token in (ended.choices[0].message.content or "") for token in CONTROL_TOKENS)


def test_the_readiness_gate_fails_a_reply_that_does_not_end_within_the_budget(
    client: openai.OpenAI, adapters: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftp_assets.steps import readiness

    prompts = [list(PROMPT)]
    passed = readiness.check_readiness(client, adapters.hook, "self_hosted", "hook", prompts, self_served=True)
    assert passed.generations[0].finish_reason in ("stop", "length")
    monkeypatch.setitem(readiness.REPLY_MAX_TOKENS, "hook", 2)  # a budget no reply ends within
    failed = readiness.check_readiness(client, adapters.hook, "self_hosted", "hook", prompts, self_served=True)
    assert failed.failure == "none of the 1 replies ended within the task's 2 tokens"
