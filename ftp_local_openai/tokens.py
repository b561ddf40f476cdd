"""Token counts of chat requests, in OpenAI's units (:mod:`ftp_assets.domain.tokens`)."""

from __future__ import annotations

from ftp_assets.domain.tokens import count_message_tokens as count_text_message_tokens


def count_message_tokens(messages: list[dict]) -> int:
    """Tokens of a chat conversation as OpenAI bills it; content may come as a list of text parts."""
    return count_text_message_tokens(
        {"role": m["role"], "content": message_text(m), **({"name": m["name"]} if "name" in m else {})}
        for m in messages
    )


def message_text(message: dict) -> str:
    """A message's text; chat requests may send content as a list of text parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
