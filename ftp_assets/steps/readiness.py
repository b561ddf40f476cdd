"""The readiness gate: before users see a new model, it must answer a handful of the validation
file's prompts through the endpoint that will serve it, each reply non-empty, valid UTF-8, free of
chat-template control tokens and within the task's length.

The check calls the endpoint through the official ``openai`` client, exactly as the agent will;
a model the endpoint cannot load (an unknown name, an adapter whose bytes fail their hash) fails
on its first prompt with the endpoint's own message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import openai

from ftp_assets.adapters.posts_db import redacted
from ftp_assets.domain.dataset import REPLY_MAX_CHARS, REPLY_MAX_TOKENS

PROMPTS = 5
# ChatML, Llama 2/3, Mistral and Gemma turn markers, and sentencepiece's sentence tokens: text a
# model should never write, which shows a chat template or a stop token gone wrong.
CONTROL_TOKEN = re.compile(
    r"<\|[a-z_]{2,32}\|>|<\|(?:im_start|im_end|endoftext|eot_id|begin_of_text|end_of_text)|</?s>|\[/?INST\]"
    r"|<(?:start|end)_of_turn>",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Generation:
    prompt: str  # the user message
    reply: str | None
    problem: str | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Readiness:
    model: str
    endpoint: str
    generations: tuple[Generation, ...]
    failure: str | None  # one sentence; None when every reply passed

    @property
    def ready(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "ready": self.ready,
            "failure": self.failure,
            "generations": [asdict(generation) for generation in self.generations],
        }


def validation_prompts(path: str | Path, count: int = PROMPTS) -> list[list[dict]]:
    """The first ``count`` examples of a chat JSONL file, each without its assistant reply."""
    prompts: list[list[dict]] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if len(prompts) == count:
                break
            messages = json.loads(line)["messages"]
            prompts.append([message for message in messages if message["role"] != "assistant"])
    return prompts


def reply_problem(reply: str | None, *, max_chars: int | None) -> str | None:
    """Why a reply is not fit for users, or None; ``max_chars`` None skips the length."""
    if reply is None or not reply.strip():
        return "the reply is empty"
    if "\ufffd" in reply:
        return "the reply is not valid UTF-8 (it holds the replacement character U+FFFD)"
    try:
        reply.encode("utf-8")
    except UnicodeEncodeError:
        return "the reply is not valid UTF-8 (it holds a lone surrogate)"
    token = CONTROL_TOKEN.search(reply)
    if token:
        return f"the reply holds the chat-template control token {token.group(0)!r}"
    if max_chars is not None and len(reply) > max_chars:
        return f"the reply has {len(reply)} characters, over the task's {max_chars}"
    return None


def check_readiness(
    client: openai.OpenAI,
    model: str,
    endpoint: str,
    task: str,
    prompts: Sequence[list[dict]],
    *,
    self_served: bool = False,
) -> Readiness:
    """Ask ``model`` at ``endpoint`` each prompt (greedy, the task's token budget) and check every
    reply; stops at the first error the endpoint returns.

    ``self_served``: the endpoint serves our own adapters (vLLM, ftp-serve), whose typical breakage
    is a chat template or end of turn gone wrong. It is then asked to leave the special tokens the
    model wrote in the text (``skip_special_tokens=false``, which OpenAI refuses), so that a reply
    starting a new turn shows its control token instead of having it silently removed; and when
    every reply is cut at the budget (``finish_reason`` ``length``), the model does not stop."""
    extra = {"skip_special_tokens": False} if self_served else None
    generations: list[Generation] = []
    failure = None
    if not prompts:
        return Readiness(model, endpoint, (), f"there are no validation prompts to ask {model}")
    for index, messages in enumerate(prompts, start=1):
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        try:
            reply = client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=REPLY_MAX_TOKENS[task],
                temperature=0,
                seed=index,
                extra_body=extra,
            )
        except openai.APIConnectionError:
            failure = f"nothing answers at endpoint {endpoint!r} ({redacted(str(client.base_url))})"
        except openai.APIStatusError as error:
            failure = f"endpoint {endpoint!r} answered {error.status_code} for {model}: {_message(error)}"
        else:
            choice = reply.choices[0] if reply.choices else None
            text = choice.message.content if choice else None
            finish = choice.finish_reason if choice else None
            # The length judges a reply that ended by itself: one cut at the token budget has the
            # budget's length, the cut the agent makes too.
            limit = None if finish == "length" else REPLY_MAX_CHARS[task]
            problem = reply_problem(text, max_chars=limit)
            generations.append(Generation(prompt=user, reply=text, problem=problem, finish_reason=finish))
            if problem and failure is None:
                failure = f"prompt {index}: {problem}"
            continue
        generations.append(Generation(prompt=user, reply=None, problem=failure))
        break
    if self_served and failure is None and all(generation.finish_reason == "length" for generation in generations):
        # One long reply is a long reply; all of them cut is a model that never ends its turn.
        failure = f"none of the {len(generations)} replies ended within the task's {REPLY_MAX_TOKENS[task]} tokens"
    return Readiness(model, endpoint, tuple(generations), failure)


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return error.message
