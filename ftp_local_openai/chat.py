"""Chat replies: base models answer with fixed template text, fine-tuned ones sample their n-gram."""

from __future__ import annotations

import random

from ftp_assets.domain.tokens import encoding

from .ngram import NGramModel, join_words

# Snapshots that can be fine-tuned here (id -> the Unix time OpenAI lists as created).
BASE_MODELS = {
    "gpt-4o-mini-2024-07-18": 1721172717,
    "gpt-4o-2024-08-06": 1722814719,
    "gpt-4.1-2025-04-14": 1744316542,
    "gpt-4.1-mini-2025-04-14": 1744317547,
    "gpt-4.1-nano-2025-04-14": 1744321025,
}
# OpenAI accepts a family name and fine-tunes (or answers with) its current snapshot.
MODEL_ALIASES = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
}


# What every base model answers: it has learned no one's style, so it has nothing particular to say.
BASE_MODEL_REPLY = (
    "Here are a few thoughts on that. It is worth taking a moment to consider the main points, "
    "weigh the options, and share what you learn with others."
)


def fine_tuned_reply(model: NGramModel, rng: random.Random, temperature: float, max_tokens: int) -> tuple[str, bool]:
    """Text sampled from the model and whether max_tokens cut it short."""
    # Every word is at least one token, so max_tokens words always fill the token budget.
    words, cut_short = model.generate(rng, temperature, max_words=max_tokens)
    text, truncated = within_tokens(join_words(words), max_tokens)
    return text, cut_short or truncated


def within_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    tokens = encoding().encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text, False
    return encoding().decode(tokens[:max_tokens]), True
