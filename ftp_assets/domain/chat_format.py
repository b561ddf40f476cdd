"""The OpenAI chat fine-tuning line format and its rules.

The rules are those of OpenAI's cookbook "Data preparation and analysis for chat model
fine-tuning": each line is an object with a ``messages`` list; each message has a ``role`` and a
``content`` (optionally ``name``, ``function_call``, ``weight``) and nothing else; roles are
system/user/assistant/function; content is a non-empty string; at least one assistant message.
Both the dataset builder and the local OpenAI-compatible service apply these rules, so a file the
builder writes is a file the service accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

ALLOWED_ROLES = frozenset({"system", "user", "assistant", "function"})
ALLOWED_MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "weight"})


def format_error(example: Any) -> str | None:
    """The cookbook's error code for one parsed line, or None when the line is valid."""
    if not isinstance(example, dict):
        return "data_type"
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing_messages_list"
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return "message_missing_key"
        if set(message) - ALLOWED_MESSAGE_KEYS:
            return "message_unrecognized_key"
        if message["role"] not in ALLOWED_ROLES:
            return "unrecognized_role"
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            return "missing_content"
    if not any(message["role"] == "assistant" for message in messages):
        return "example_missing_assistant_message"
    return None


def line_error(line: str | bytes) -> str | None:
    """Like :func:`format_error` for one raw JSONL line; unparsable JSON is ``invalid_json``."""
    try:
        example = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return "invalid_json"
    return format_error(example)


# OpenAI's cookbook rule for n_epochs="auto": 3 epochs, more (up to 25) so that at least 100
# examples are seen, fewer so that at most 25,000 are.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES, MAX_DEFAULT_EPOCHS = 3, 100, 25_000, 25


def auto_n_epochs(n_examples: int) -> int:
    """The epochs OpenAI picks for "auto" on a training file of ``n_examples`` examples."""
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(n_examples, 1)))
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS
