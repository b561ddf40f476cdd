"""Which arm of an experiment serves a generation: a deterministic hash the agent can reimplement.

The algorithm, exactly (any language with SHA-256 and 64-bit integers can reproduce it):

1. ``key = f"{experiment_id}:{unit_id}"`` encoded as UTF-8. An integer ``unit_id`` is written in
   base 10 without sign padding or separators (``42`` -> ``"42"``); a string is used as is.
2. ``digest = SHA-256(key)``; ``h = the first 8 bytes of digest as a big-endian unsigned 64-bit
   integer``.
3. ``bucket = (h >> 11) / 2**53``: the top 53 bits, so the division is exact in an IEEE-754 double
   and the bucket lies in [0, 1) (dividing all 64 bits by 2**64 can round up to 1.0).
4. The unit is served by the challenger when ``bucket < challenger_share``, else by the champion.

The experiments table gives the agent, per arm, the model id and the name of the endpoint that
serves it (docs/serving.md's endpoints file): :func:`route` returns the three together.

Consequences the experiment relies on: the same unit always gets the same arm; buckets are uniform,
so the challenger's share of units matches ``challenger_share`` up to binomial noise; a unit in the
challenger arm at share ``s`` stays there at any larger share (ramping up never moves a unit back);
and different experiments hash the same unit independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Arm = Literal["challenger", "champion"]

_BUCKET_BITS = 53


def bucket(experiment_id: str, unit_id: str | int) -> float:
    """The unit's position in [0, 1) for this experiment (steps 1-3 of the module docstring)."""
    if not isinstance(experiment_id, str):
        raise TypeError(f"experiment_id must be a str, got {type(experiment_id).__name__}")
    # bool is an int subclass, and str(True) == "True" would silently hash a flag, not a post id.
    if isinstance(unit_id, bool) or not isinstance(unit_id, (str, int)):
        raise TypeError(f"unit_id must be a str or an int, got {type(unit_id).__name__}")
    digest = hashlib.sha256(f"{experiment_id}:{unit_id}".encode()).digest()
    top_64_bits = int.from_bytes(digest[:8], "big")
    return (top_64_bits >> (64 - _BUCKET_BITS)) / 2**_BUCKET_BITS


def assign_arm(experiment_id: str, unit_id: str | int, challenger_share: float) -> Arm:
    """``"challenger"`` when the unit's bucket is below ``challenger_share``, else ``"champion"``.

    ``challenger_share`` is the fraction of units the challenger serves, in [0, 1]: 0 sends every
    unit to the champion, 1 every unit to the challenger.
    """
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must lie in [0, 1], got {challenger_share!r}")
    return "challenger" if bucket(experiment_id, unit_id) < challenger_share else "champion"


@dataclass(frozen=True)
class Route:
    """What the agent calls for a unit: the arm, the model id, and the endpoint's name."""

    arm: Arm
    model: str
    endpoint: str


def route(
    experiment_id: str,
    unit_id: str | int,
    challenger_share: float,
    *,
    champion: tuple[str, str],
    challenger: tuple[str, str],
) -> Route:
    """The unit's arm (:func:`assign_arm`) with that arm's ``(model, endpoint)``."""
    arm = assign_arm(experiment_id, unit_id, challenger_share)
    model, endpoint = challenger if arm == "challenger" else champion
    return Route(arm=arm, model=model, endpoint=endpoint)
