"""Small helpers that turn domain results into metadata people can read in the Dagster UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from dagster import MetadataValue


def preview_table(rows: Sequence[Mapping], max_chars: int = 120) -> MetadataValue:
    def short(value):
        text = str(value)
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    frame = pd.DataFrame([{key: short(value) for key, value in row.items()} for row in rows])
    return MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "_no rows_")


def counts_table(counts: Mapping[str, int | float], header: tuple[str, str] = ("reason", "posts")) -> MetadataValue:
    frame = pd.DataFrame(list(counts.items()), columns=list(header))
    return MetadataValue.md(frame.to_markdown(index=False))
