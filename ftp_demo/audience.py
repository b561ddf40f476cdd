"""A seeded audience model for the demo. SIMULATION: it describes no real audience.

The demo has no real readers, so this module plays them. It exists so that the weekly cycle has
something true to learn: a few text features really raise engagement here, hence the posts that
clear the engagement bar carry those features more often, a model fine-tuned on them writes them
more often, and the A/B experiment of the demo measures a real lift. The effects are invented
but in the direction social-media folklore claims; nothing here should be quoted as a finding.

Expected engagement rate of a post = persona baseline x the product of the effects of the
features the post has:

==========================  ================================================  ======
feature                     present when                                      effect
==========================  ================================================  ======
``question_hook``           the hook contains "?"                             x1.30
``number_in_hook``          the hook contains a digit ("5 mistakes", "2025")  x1.20
``addresses_reader``        the hook says "you", "your", "yours", "yourself"  x1.15
``hook_length_sweet_spot``  the stripped hook has 30 to 80 characters         x1.10
``overlong_hook``           the stripped hook has more than 140 characters    x0.80
``blank_hook``              the hook is missing or whitespace only            x0.50
``list_in_body``            at least 2 body lines start with "-", "*", "•"    x1.20
                            or "1." / "1)"
``concrete_takeaway``       the body says "Try this:", "Takeaway:",           x1.15
                            "Do this today:" or "Action step:"
``emoji``                   an emoji anywhere in the hook or body             x1.05
==========================  ================================================  ======

Persona baselines (the rate of a post with none of the features):

====================  ========
persona               baseline
====================  ========
``growth_marketer``   0.037
``indie_dev``         0.034
``fitness_coach``     0.041
``money_coach``       0.039
``product_designer``  0.035
====================  ========

A plain post thus sits near 0.04, the median demo post near 0.047 and a post with every positive
feature at 0.10 to 0.12. A 6% bar then keeps about a quarter of the demo posts, and their mean
expected rate is about 25% above the average post's: the bar selects better posts, not only
lucky ones, which is the lift a model fine-tuned on them can hope to show.

Reactions (:func:`simulate_reactions`): impressions are lognormal with median 800 and log-sd 1.0
(heavy-tailed: a few posts reach tens of thousands of views, at least 1); the post's true rate is
the expected rate times a mean-one lognormal factor with log-sd 0.2 (everything about a post the
features do not capture); engagements are binomial(impressions, true rate).
"""

from __future__ import annotations

import math
import re

import numpy as np

PERSONA_BASELINE_RATES: dict[str, float] = {
    "growth_marketer": 0.037,
    "indie_dev": 0.034,
    "fitness_coach": 0.041,
    "money_coach": 0.039,
    "product_designer": 0.035,
}
PERSONAS: tuple[str, ...] = tuple(PERSONA_BASELINE_RATES)

FEATURE_EFFECTS: dict[str, float] = {
    "question_hook": 1.30,
    "number_in_hook": 1.20,
    "addresses_reader": 1.15,
    "hook_length_sweet_spot": 1.10,
    "overlong_hook": 0.80,
    "blank_hook": 0.50,
    "list_in_body": 1.20,
    "concrete_takeaway": 1.15,
    "emoji": 1.05,
}

IMPRESSIONS_MEDIAN = 800
IMPRESSIONS_LOG_SD = 1.0
POST_QUALITY_LOG_SD = 0.2

_DIGIT = re.compile(r"\d")
_READER = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
_TAKEAWAY = re.compile(r"\b(?:try this|takeaway|do this today|action step)\s*:", re.IGNORECASE)
# The emoji blocks the demo posts and real posts use (pictographs, symbols, dingbats).
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")


def engagement_features(hook: str | None, body: str | None) -> frozenset[str]:
    """The names of the :data:`FEATURE_EFFECTS` a post has. ``None`` text counts as empty."""
    hook = hook or ""
    body = body or ""
    stripped_hook = hook.strip()
    features = set()
    if not stripped_hook:
        features.add("blank_hook")
    elif len(stripped_hook) > 140:
        features.add("overlong_hook")
    elif 30 <= len(stripped_hook) <= 80:
        features.add("hook_length_sweet_spot")
    if "?" in hook:
        features.add("question_hook")
    if _DIGIT.search(hook):
        features.add("number_in_hook")
    if _READER.search(hook):
        features.add("addresses_reader")
    if len(_LIST_LINE.findall(body)) >= 2:
        features.add("list_in_body")
    if _TAKEAWAY.search(body):
        features.add("concrete_takeaway")
    if _EMOJI.search(hook) or _EMOJI.search(body):
        features.add("emoji")
    return frozenset(features)


def expected_engagement_rate(persona_id: str, hook: str | None, body: str | None) -> float:
    """The audience's mean engagement rate for this post (see the tables above)."""
    try:
        rate = PERSONA_BASELINE_RATES[persona_id]
    except KeyError:
        raise ValueError(f"unknown persona {persona_id!r}; the audience model knows {', '.join(PERSONAS)}") from None
    for feature in engagement_features(hook, body):
        rate *= FEATURE_EFFECTS[feature]
    return rate


def simulate_reactions(
    rng: np.random.Generator, persona_id: str, hook: str | None, body: str | None
) -> tuple[int, int]:
    """One post's (impressions, engagements) drawn from the audience model with ``rng``."""
    expected_rate = expected_engagement_rate(persona_id, hook, body)
    impressions = max(1, round(rng.lognormal(math.log(IMPRESSIONS_MEDIAN), IMPRESSIONS_LOG_SD)))
    # Mean-one factor (mu = -sd^2/2), so the expected rate above really is the mean rate.
    quality = rng.lognormal(-(POST_QUALITY_LOG_SD**2) / 2, POST_QUALITY_LOG_SD)
    true_rate = min(1.0, expected_rate * quality)
    engagements = int(rng.binomial(impressions, true_rate))
    return impressions, engagements
