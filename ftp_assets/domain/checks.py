"""Checks that re-read written JSONL files, independent of the code that wrote them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ftp_assets.domain.chat_format import line_error
from ftp_assets.domain.cleaning import dedup_key


def invalid_lines(path: Path) -> list[str]:
    """``"<line number>: <error code>"`` for every line that breaks the format rules."""
    found = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            error = line_error(line)
            if error:
                found.append(f"{number}: {error}")
    return found


def duplicate_rate(paths: Iterable[Path]) -> float:
    """Share of lines whose last assistant message repeats an earlier one's, normalized."""
    seen: set[int] = set()
    lines = duplicates = 0
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                messages = json.loads(line)["messages"]
                answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
                key = hash(dedup_key(answer))
                lines += 1
                duplicates += key in seen
                seen.add(key)
    return duplicates / lines if lines else 0.0
