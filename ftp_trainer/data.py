"""Chat fine-tuning JSONL (the OpenAI format) to TRL's conversational prompt/completion examples.

Each line is ``{"messages": [{"role": ..., "content": ...}, ...]}``; messages may carry ``name``
or ``weight``. The prompt is every message before the LAST assistant message, the completion is
that assistant message; ``name`` and ``weight`` are dropped. An example whose last assistant
message has weight 0 teaches nothing under completion-only loss, so it is skipped and counted.
Messages after the last assistant message (there should be none) are dropped with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import fsspec

from ftp_trainer.errors import InputError

ROLES = frozenset({"system", "user", "assistant"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight"})


@dataclass
class ChatDataset:
    """The converted examples of one file, with what was skipped and the file's digest."""

    examples: list[dict[str, list[dict[str, str]]]] = field(default_factory=list)
    skipped: int = 0
    sha256: str = ""


def read_bytes(url: str) -> bytes:
    """The bytes of a local path or fsspec URL; a missing or unreadable file is an :class:`InputError`."""
    try:
        with fsspec.open(url, "rb") as handle:
            data: bytes = handle.read()
    except FileNotFoundError:
        raise InputError(f"The file {url} does not exist.") from None
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read {url}: {error}.") from None
    return data


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "a message is not an object"
    unknown = set(message) - MESSAGE_KEYS
    if unknown:
        return f"a message has the unknown key '{sorted(unknown)[0]}'"
    if message.get("role") not in ROLES:
        return f"a message has the role {json.dumps(message.get('role'))}, not system, user or assistant"
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return "a message has no text content"
    weight = message.get("weight", 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        return f"a message has the weight {json.dumps(weight)}, not 0 or 1"
    return None


def convert_example(example: Any) -> dict[str, list[dict[str, str]]] | None:
    """TRL's ``{"prompt": [...], "completion": [...]}`` for one parsed line; None when it is skipped.

    Raises ValueError (with the reason) for a line that is not a valid chat example.
    """
    if not isinstance(example, dict) or not isinstance(example.get("messages"), list) or not example["messages"]:
        raise ValueError("the line is not an object with a non-empty 'messages' list")
    messages = example["messages"]
    for message in messages:
        problem = _message_problem(message)
        if problem:
            raise ValueError(problem)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("the example has no assistant message")
    if messages[last].get("weight", 1) == 0:
        return None
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    completion = [{"role": "assistant", "content": messages[last]["content"]}]
    return {"prompt": prompt, "completion": completion}


def parse_jsonl(data: bytes, source: str) -> ChatDataset:
    """Every line of a JSONL file converted; a bad line is an :class:`InputError` naming it."""
    dataset = ChatDataset(sha256=hashlib.sha256(data).hexdigest())
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"Line {number} of {source} is not valid JSON.") from None
        try:
            converted = convert_example(parsed)
        except ValueError as error:
            raise InputError(f"Line {number} of {source} is not a chat example: {error}.") from None
        if converted is None:
            dataset.skipped += 1
        else:
            dataset.examples.append(converted)
    return dataset


def read_dataset(url: str) -> ChatDataset:
    """The converted examples of the JSONL file at a local path or fsspec URL."""
    return parse_jsonl(read_bytes(url), url)


def message_texts(data: bytes) -> list[str]:
    """The contents of every message (all roles) of a JSONL file: the tiny base's corpus."""
    texts: list[str] = []
    for line in data.splitlines():
        try:
            parsed = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("messages"), list):
            texts.extend(
                m["content"] for m in parsed["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)
            )
    return texts


def conversations(data: bytes) -> list[list[dict[str, str]]]:
    """The valid conversations of a JSONL file (role and content only): what the tiny base pre-trains on."""
    result: list[list[dict[str, str]]] = []
    for line in data.splitlines():
        try:
            converted = convert_example(json.loads(line))
        except (ValueError, UnicodeDecodeError):
            continue
        if converted is not None:
            result.append(converted["prompt"] + converted["completion"])
    return result
