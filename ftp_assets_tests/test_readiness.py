"""The readiness gate: the reply checks, and the gate against a real OpenAI-compatible endpoint
(the local service) through the official client: a model it serves passes, one it does not
serve and an endpoint that does not answer fail in one sentence."""

from __future__ import annotations

import json
import socket

import openai
import pytest

from ftp_assets.steps.readiness import check_readiness, reply_problem, validation_prompts

SERVED = "gpt-4o-mini-2024-07-18"  # a base model the local service answers for


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("Five habits that changed my mornings?", None),
        ("", "the reply is empty"),
        ("   \n", "the reply is empty"),
        (None, "the reply is empty"),
        ("caf\ufffd", "not valid UTF-8"),
        ("broken \udcff surrogate", "not valid UTF-8"),
        ("A hook<|im_end|>", "control token '<|im_end|>'"),
        ("<|im_start|>assistant\nhi", "control token '<|im_start|>'"),
        ("[INST] write [/INST]", "control token '[INST]'"),
        ("done</s>", "control token '</s>'"),
        ("x" * 281, "281 characters, over the task's 280"),
    ],
)
def test_a_reply_is_fit_to_post_or_says_why_not(reply, problem):
    found = reply_problem(reply, max_chars=280)
    assert found is None if problem is None else problem in found


def test_the_prompts_are_the_validation_files_without_their_replies(tmp_path):
    lines = [
        {
            "messages": [
                {"role": "system", "content": f"s{i}"},
                {"role": "user", "content": f"u{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(8)
    ]
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    prompts = validation_prompts(path, 5)
    assert len(prompts) == 5
    assert prompts[0] == [{"role": "system", "content": "s0"}, {"role": "user", "content": "u0"}]


def prompts(count: int = 3) -> list[list[dict]]:
    return [
        [{"role": "system", "content": "You write hooks."}, {"role": "user", "content": f"topic {i}"}]
        for i in range(count)
    ]


def test_a_served_model_passes_and_its_generations_are_kept(local_openai):
    with openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key) as client:
        readiness = check_readiness(client, SERVED, "openai", "hook", prompts())
    assert readiness.ready and readiness.failure is None
    assert [g.prompt for g in readiness.generations] == ["topic 0", "topic 1", "topic 2"]
    assert all(g.reply and g.problem is None for g in readiness.generations)
    assert json.loads(json.dumps(readiness.as_dict()))["ready"] is True


def test_a_model_the_endpoint_does_not_serve_fails_at_its_first_prompt(local_openai):
    with openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key) as client:
        readiness = check_readiness(client, "ft:unknown", "openai", "hook", prompts())
    assert not readiness.ready and len(readiness.generations) == 1
    assert readiness.failure.startswith("endpoint 'openai' answered 404 for ft:unknown")


def test_an_endpoint_that_does_not_answer_fails_saying_where():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as client:
        readiness = check_readiness(client, "m", "self_hosted", "body", prompts())
    assert readiness.failure == f"nothing answers at endpoint 'self_hosted' (http://127.0.0.1:{port}/v1/)"


def test_no_prompts_is_a_failure_not_a_pass(local_openai):
    with openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key) as client:
        assert check_readiness(client, SERVED, "openai", "hook", []).failure == (
            f"there are no validation prompts to ask {SERVED}"
        )


def test_the_length_is_judged_on_replies_that_ended_by_themselves(local_openai):
    """The local service's n-gram models run to the token budget: cut there, a long reply has the
    agent's own length, not the model's; the same reply ending by itself would be judged."""
    with openai.OpenAI(base_url=local_openai.base_url, api_key=local_openai.api_key) as client:
        readiness = check_readiness(client, SERVED, "openai", "body", prompts(5))
    cut = [g for g in readiness.generations if g.finish_reason == "length"]
    assert readiness.ready, readiness.failure
    assert all(g.problem is None for g in cut)
    assert reply_problem("x" * 501, max_chars=500) is not None and reply_problem("x" * 501, max_chars=None) is None
