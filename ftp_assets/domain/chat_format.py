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
