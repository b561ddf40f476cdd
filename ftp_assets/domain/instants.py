"""Instants in UTC: configuration and cursors carry them as ISO-8601 text."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_instant(value: str) -> datetime:
    """An ISO-8601 date-time as UTC (a value without offset is taken as UTC)."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 date-time.") from None
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
