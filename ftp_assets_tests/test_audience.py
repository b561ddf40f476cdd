"""The simulated audience and the synthetic demo posts.

The audience model must reward its documented features, so that selecting the engaging posts
selects better posts (what the demo's fine-tuning and A/B experiment rely on); the demo corpus
must be deterministic, inside the contract, and carry every documented kind of dirt.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftp_demo.audience import (
    FEATURE_EFFECTS,
    PERSONAS,
    engagement_features,
    expected_engagement_rate,
    simulate_reactions,
)
from ftp_demo.posts import (
    ABSURD_IMPRESSIONS,
    DIRTY_KINDS,
    VERY_LONG_TEXT_MIN_CHARS,
    generate_demo_posts,
    generate_demo_posts_with_labels,
    write_post,
)

END = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CONTRACT_COLUMNS = {
    "id",
    "persona_id",
    "original_input",
    "hook",
    "body",
    "created_at",
    "impressions",
    "engagements",
    "hook_model",
    "body_model",
}
PLAIN_HOOK = "I changed how I think about cold email."  # 39 characters: in the sweet spot
PLAIN_BODY = "For years I got cold email wrong. Simple, not easy."

# (feature, hook, body): the plain post changed in that one feature only.
ONE_FEATURE_VARIANTS = [
    ("question_hook", "Why did I change how I think about cold email?", PLAIN_BODY),
    ("number_in_hook", "I changed how I think about cold email in 2024.", PLAIN_BODY),
    ("addresses_reader", "You should change how you think about cold email.", PLAIN_BODY),
    ("hook_length_sweet_spot", "On cold email.", PLAIN_BODY),  # the plain post has it, this lacks it
    ("list_in_body", PLAIN_HOOK, PLAIN_BODY + "\n\nWhat changed:\n- shorter lines\n- one ask"),
    ("list_in_body", PLAIN_HOOK, PLAIN_BODY + "\n1) shorter lines\n2) one ask"),
    ("concrete_takeaway", PLAIN_HOOK, PLAIN_BODY + "\n\nTry this: cut the first paragraph."),
    ("emoji", PLAIN_HOOK + " 🚀", PLAIN_BODY),
    ("emoji", PLAIN_HOOK, PLAIN_BODY + " ✅"),
]
POSITIVE_FEATURES = {name for name, effect in FEATURE_EFFECTS.items() if effect > 1}


def normalized(text: str | None) -> str:
    return re.sub(r"[\W_]+", "", (text or "").casefold())


@pytest.mark.parametrize("feature, hook, body", ONE_FEATURE_VARIANTS)
@pytest.mark.parametrize("persona_id", PERSONAS)
def test_each_positive_feature_raises_expected_engagement(persona_id, feature, hook, body):
    plain = expected_engagement_rate(persona_id, PLAIN_HOOK, PLAIN_BODY)
    variant = expected_engagement_rate(persona_id, hook, body)
    with_feature, without_feature = (plain, variant) if feature == "hook_length_sweet_spot" else (variant, plain)
    assert feature in POSITIVE_FEATURES
    assert with_feature / without_feature == pytest.approx(FEATURE_EFFECTS[feature])
    assert engagement_features(hook, body) ^ engagement_features(PLAIN_HOOK, PLAIN_BODY) == {feature}


@pytest.mark.parametrize("hook", [None, "", "  \n\t", "I changed how I think about cold email. " * 5])
def test_blank_and_overlong_hooks_lower_expected_engagement(hook):
    assert expected_engagement_rate("indie_dev", hook, PLAIN_BODY) < expected_engagement_rate(
        "indie_dev", "On cold email.", PLAIN_BODY
    )


def test_rates_span_the_documented_range():
    best_hook = "Are you making these 5 mistakes with cold email? 🚀"
    best_body = "For years I got it wrong.\n\nWhat changed:\n- shorter lines\n- one ask\n\nTry this: cut it."
    assert engagement_features(best_hook, best_body) == POSITIVE_FEATURES
    for persona_id in PERSONAS:
        assert 0.03 <= expected_engagement_rate(persona_id, "On cold email.", PLAIN_BODY) <= 0.05
        assert 0.08 <= expected_engagement_rate(persona_id, best_hook, best_body) <= 0.13
    baselines = {expected_engagement_rate(p, "On cold email.", PLAIN_BODY) for p in PERSONAS}
    assert len(baselines) == len(PERSONAS)  # each persona has its own audience


def test_unknown_persona_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="'cat_influencer'"):
        expected_engagement_rate("cat_influencer", PLAIN_HOOK, PLAIN_BODY)


def test_simulated_reactions_are_seeded_and_calibrated():
    def draws(seed, hook):
        rng = np.random.default_rng(seed)
        return np.array([simulate_reactions(rng, "growth_marketer", hook, PLAIN_BODY) for _ in range(20_000)])

    plain = draws(7, "On cold email.")
    assert np.array_equal(plain, draws(7, "On cold email."))
    assert not np.array_equal(plain, draws(8, "On cold email."))
    impressions, engagements = plain[:, 0], plain[:, 1]
    assert impressions.min() >= 1 and (engagements >= 0).all() and (engagements <= impressions).all()
    assert 700 <= np.median(impressions) <= 900
    assert impressions.max() > 20 * np.median(impressions)  # heavy tail
    expected = expected_engagement_rate("growth_marketer", "On cold email.", PLAIN_BODY)
    assert engagements.sum() / impressions.sum() == pytest.approx(expected, rel=0.05)
    question = draws(7, "Why does cold email feel so hard?")
    question_rate = question[:, 1].sum() / question[:, 0].sum()
    assert question_rate > 1.3 * engagements.sum() / impressions.sum()


@settings(max_examples=200, deadline=None)
@given(hook=st.none() | st.text(), body=st.none() | st.text(), seed=st.integers(0, 2**32 - 1))
def test_any_text_gets_a_valid_rate_and_reactions(hook, body, seed):
    rate = expected_engagement_rate("money_coach", hook, body)
    assert 0 < rate < 0.2
    impressions, engagements = simulate_reactions(np.random.default_rng(seed), "money_coach", hook, body)
    assert 0 <= engagements <= impressions


def test_engagement_bar_selects_a_plausible_share_of_better_posts():
    rows = list(generate_demo_posts(3_000, seed=11, end=END, dirty_share=0))
    observed = np.array([row["engagements"] / row["impressions"] for row in rows])
    expected = np.array([expected_engagement_rate(row["persona_id"], row["hook"], row["body"]) for row in rows])
    selected = observed >= 0.06
    assert 0.10 <= selected.mean() <= 0.40
    # A model that writes like the selected posts writes posts this audience likes more.
    assert expected[selected].mean() >= 1.15 * expected.mean()


def test_write_post_varies_its_style_and_is_seeded():
    for persona_id in PERSONAS:
        rng, same_seed_rng = np.random.default_rng(5), np.random.default_rng(5)
        posts = [write_post(rng, persona_id) for _ in range(400)]
        assert posts == [write_post(same_seed_rng, persona_id) for _ in range(400)]
        features = [engagement_features(hook, body) for _, hook, body in posts]
        assert set().union(*features) == POSITIVE_FEATURES
        assert sum(not (f - {"hook_length_sweet_spot"}) for f in features) >= 40  # plenty of plain posts
        assert all(text.strip() for post in posts for text in post)
        assert len({hook for _, hook, _ in posts}) > 50


def test_generator_is_deterministic_for_a_seed():
    first = list(generate_demo_posts_with_labels(300, seed=42, end=END))
    assert first == list(generate_demo_posts_with_labels(300, seed=42, end=END))
    assert [row for row, _ in first] == list(generate_demo_posts(300, seed=42, end=END))
    assert first != list(generate_demo_posts_with_labels(300, seed=43, end=END))


def test_rows_respect_the_contract():
    end = datetime(2025, 6, 2, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    rows = list(generate_demo_posts(1_000, seed=1, end=end, days=7, first_id=10_001))
    assert [row["id"] for row in rows] == list(range(10_001, 11_001))
    times = [row["created_at"] for row in rows]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert min(times) >= end - timedelta(days=7) and max(times) < end
    assert times == sorted(times)
    assert max(times) - min(times) > timedelta(days=6, hours=23)
    for row in rows:
        assert set(row) == CONTRACT_COLUMNS
        assert row["persona_id"] in PERSONAS
        assert type(row["impressions"]) is int and type(row["engagements"]) is int
        for column in ("original_input", "hook", "body", "hook_model", "body_model"):
            text = row[column]
            if text is not None:
                assert "\x00" not in text  # PostgreSQL text cannot hold NUL
                text.encode("utf-8")  # raises on a lone surrogate


def test_every_dirty_kind_appears_from_200_rows():
    kinds = [kind for _, kind in generate_demo_posts_with_labels(200, seed=3, end=END)]
    assert set(kinds) - {None} == set(DIRTY_KINDS)
    assert len(kinds) - kinds.count(None) <= 20


def test_dirty_share_is_honoured():
    kinds = [kind for _, kind in generate_demo_posts_with_labels(4_000, seed=3, end=END, dirty_share=0.05)]
    assert len(kinds) - kinds.count(None) == 200
    assert kinds[0] is None  # the first row is clean: duplicates need an earlier post
    assert all(kind is None for _, kind in generate_demo_posts_with_labels(500, seed=3, end=END, dirty_share=0))


def _has_defect(kind, row, earlier_clean_rows):
    texts = [row["original_input"], row["hook"], row["body"]]
    hook_and_body = f"{row['hook']} {row['body']}"
    for field in ("original_input", "hook", "body"):
        if kind == f"null_{field}":
            return row[field] is None
        if kind == f"empty_{field}":
            return row[field] == ""
        if kind == f"whitespace_only_{field}":
            return row[field] != "" and row[field].isspace()
    checks = {
        "zero_impressions": lambda: row["impressions"] == 0,
        "negative_counts": lambda: min(row["impressions"], row["engagements"]) < 0,
        "engagements_above_impressions": lambda: row["engagements"] > row["impressions"] > 0,
        "absurd_counts": lambda: row["impressions"] >= ABSURD_IMPRESSIONS,
        "exact_duplicate": lambda: any(
            (r["persona_id"], r["hook"], r["body"]) == (row["persona_id"], row["hook"], row["body"])
            for r in earlier_clean_rows
        ),
        "near_duplicate": lambda: any(
            (normalized(r["hook"]), normalized(r["body"])) == (normalized(row["hook"]), normalized(row["body"]))
            and (r["hook"], r["body"]) != (row["hook"], row["body"])
            for r in earlier_clean_rows
        ),
        "very_long_text": lambda: min(len(row["hook"]), len(row["body"])) > VERY_LONG_TEXT_MIN_CHARS,
        "odd_unicode": lambda: (
            "\u200d" in hook_and_body
            and "\u200f" in hook_and_body
            and not unicodedata.is_normalized("NFC", hook_and_body)
        ),
        "email_in_text": lambda: re.search(r"\w@\w+\.\w", hook_and_body) is not None,
        "phone_in_text": lambda: re.search(r"\d(?:[ ()+-]{0,2}\d){6}", hook_and_body) is not None,
        "prompt_injection": lambda: any(
            re.search(
                r"\b(?:ignore|disregard|forget)\b.*\b(?:instructions|rules|guidelines)\b|developer mode", t or "", re.I
            )
            for t in texts
        ),
    }
    return checks[kind]()


def test_each_dirty_row_has_its_defect_and_clean_rows_have_none():
    clean_rows = []
    for row, kind in generate_demo_posts_with_labels(2_000, seed=9, end=END):
        if kind is not None:
            assert _has_defect(kind, row, clean_rows), (kind, row)
            continue
        assert not any(_has_defect(k, row, []) for k in DIRTY_KINDS if "duplicate" not in k), row
        assert 0 <= row["engagements"] <= row["impressions"] < 10**7
        clean_rows.append(row)
    assert len(clean_rows) == 1_900


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"n": -1}, "n must be"),
        ({"days": 0}, "days must be"),
        ({"dirty_share": 1.5}, "dirty_share must be"),
        ({"end": datetime(2025, 6, 2)}, "timezone-aware"),
    ],
)
def test_bad_arguments_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        next(generate_demo_posts(**{"n": 10, "seed": 1, "end": END, **arguments}))
