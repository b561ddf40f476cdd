"""Synthetic chat examples in the OpenAI fine-tuning format, for the tests, the benchmark and demos.

A small, highly regular language: the reply is a fixed function of the request's style, topic,
persona and weekday, so a model that learns lowers its loss on held-out examples. Invented text
about invented topics; nothing comes from a real post or person.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

SYSTEM = "You write short Threads posts for the agent."
TOPICS = ("home coffee", "city cycling", "sourdough", "night running", "balcony plants", "budget travel", "chess")
PERSONAS = ("Mara", "Jonas", "Priya", "Tomasz", "Aiko")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# The replies of the "house" dialect, the style a fine-tuned model is to learn: the same requests,
# other words. A base pre-trained on the plain dialect has something left to learn from it.
HOUSE_STYLES = {
    "tip": "House rule for {topic}: one small step a day. {persona} checks in on {weekday}. Stay curious!",
    "story": "True story: {persona} and {topic}, one {weekday} morning. Worth it. Stay curious!",
    "question": "Be honest: is {topic} overrated? {persona} will answer on {weekday}. Stay curious!",
    "list": "The {topic} checklist: start, repeat, enjoy. Tag {persona} on {weekday}. Stay curious!",
}
STYLES = {
    "tip": "Quick tip on {topic}: start small, keep notes, and review every {weekday}. {persona} swears by it.",
    "story": "Last {weekday} {persona} tried {topic} for the first time. It went better than planned.",
    "question": "What is your take on {topic}? {persona} says {weekday} is the best day for it.",
    "list": "Three things about {topic}: plan it, try it, share it. Ask {persona} on {weekday}.",
}


def chat_examples(count: int, *, seed: int = 0, dialect: str = "plain") -> Iterator[dict[str, list[dict[str, str]]]]:
    """``count`` examples of a dialect ("plain" or "house"); the same seed gives the same examples."""
    styles = HOUSE_STYLES if dialect == "house" else STYLES
    rng = random.Random(seed)
    for _ in range(count):
        style = rng.choice(sorted(STYLES))
        topic, persona, weekday = rng.choice(TOPICS), rng.choice(PERSONAS), rng.choice(WEEKDAYS)
        user = f"Write a {style} post about {topic} for {persona}, to go out on {weekday}."
        reply = styles[style].format(topic=topic, persona=persona, weekday=weekday)
        yield {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": reply},
            ]
        }


def write_jsonl(path: str | Path, count: int, *, seed: int = 0, dialect: str = "plain") -> Path:
    """Write ``count`` examples to ``path`` as JSONL; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in chat_examples(count, seed=seed, dialect=dialect):
            handle.write(json.dumps(example) + "\n")
    return path
