"""Numbers read from the environment when the code location loads."""

from __future__ import annotations

import os
from collections.abc import Callable


def env_number(name: str, default: float, kind: Callable[[str], float] = float) -> float:
    """A positive number from the environment variable ``name``, ``default`` when it is unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive {getattr(kind, '__name__', 'number')}, got {raw!r}.")
    return value
