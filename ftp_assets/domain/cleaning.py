"""Cleaning of the agent's post text before it becomes training data.

Every decision here is counted by the caller: a post is either kept (possibly with its text
repaired: Unicode normalized, invisible characters removed, PII replaced) or rejected for one
named reason. The checks are ordered cheapest first and the two PII regexes sit behind cheap
guards, because this runs once per post over windows of a million posts.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

EMAIL_PLACEHOLDER = "[email]"
PHONE_PLACEHOLDER = "[phone]"

# Characters that render as nothing or reorder text: zero-width space/non-joiner, bidi marks and
# embeddings/isolates, BOM, soft hyphen, and C0/C1 controls other than tab and newline. The
# zero-width *joiner* (U+200D) stays: emoji sequences such as family or profession emoji need it.
INVISIBLE = dict.fromkeys(
    [0x00AD, 0x200B, 0x200C, 0x200E, 0x200F, 0x2060, 0xFEFF]
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
    + [c for c in range(0x00, 0x20) if c not in (0x09, 0x0A)]
    + list(range(0x7F, 0xA0))
)

_HAS_INVISIBLE = re.compile("[" + "".join(re.escape(chr(c)) for c in INVISIBLE) + "]")

# Local part: RFC 5322's atext and dots, so unusual but valid addresses are caught too.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A phone number: optional country code, then at least 7 digits in groups separated by space, dot,
# dash or parentheses. Digit runs joined by commas (10,000,000), slashes and ISO dates are not.
_PHONE = re.compile(
    r"(?<![\w+])(?!\d{4}-\d\d-\d\d(?!\d))(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
    r"\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])"
)
_SEVEN_DIGITS = re.compile(r"\d(?:[ .()+-]{0,2}\d){6}")

# Text that addresses a language model rather than a reader. Training on it would teach the model
# to write such instructions, so a post that carries it is rejected, not repaired.
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|your)\b"
    r"[^.\n]{0,40}\b(?:instructions?|prompts?|rules|guidelines)\b"
    r"|\bsystem prompt\b|\byou are now (?:a|an|in)\b|\bjailbreak\b|\bdeveloper mode\b",
    re.IGNORECASE,
)
_INJECTION_HINTS = ("instruction", "prompt", "rules", "guideline", "you are now", "jailbreak", "developer mode")

_NOT_ALNUM = re.compile(r"[\W_]+")


class CleanText(NamedTuple):  # a tuple, not a dataclass: one is made per text of a million posts
    text: str
    emails: int
    phones: int
    repaired_unicode: bool


def normalize_unicode(text: str) -> str:
    """NFC form without invisible or control characters, and trimmed."""
    # A regex search is far cheaper than translate(), and most posts have nothing to remove.
    if _HAS_INVISIBLE.search(text):
        text = text.translate(INVISIBLE)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text.strip()


def scrub_pii(text: str) -> tuple[str, int, int]:
    """Replace e-mail addresses and phone numbers by placeholders; returns the counts too."""
    emails = phones = 0
    if "@" in text:
        text, emails = _EMAIL.subn(EMAIL_PLACEHOLDER, text)
    if _SEVEN_DIGITS.search(text):
        found = 0

        def replace(match: re.Match) -> str:
            nonlocal found
            candidate = match.group()
            digits = sum(c.isdigit() for c in candidate)
            grouped = candidate.startswith("+") or not candidate.isdigit()
            # "12 34" and "2024 10" are too short; a bare "1000000" is a figure, not a phone,
            # but ten or more bare digits are dialable.
            if digits < 7 or (not grouped and digits < 10):
                return candidate
            found += 1
            return PHONE_PLACEHOLDER

        text = _PHONE.sub(replace, text)
        phones = found
    return text, emails, phones


def clean_text(raw: str | None) -> CleanText | None:
    """The repaired text, or None when nothing readable is left."""
    if raw is None:
        return None
    text = normalize_unicode(raw)
    if not text:
        return None
    repaired_unicode = text != raw.strip()
    text, emails, phones = scrub_pii(text)
    return CleanText(text, emails, phones, repaired_unicode)


def looks_like_injection(text: str) -> bool:
    lowered = text.lower()
    if not any(hint in lowered for hint in _INJECTION_HINTS):
        return False
    return _INJECTION.search(text) is not None


def dedup_key(text: str) -> str:
    """The text as a duplicate detector sees it: compatibility-normalized, case-folded, and
    without punctuation, whitespace or symbols, so trivial variants of one post collide."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def clean_fields(raw_texts: tuple, max_chars: int) -> tuple[str | None, list[CleanText]]:
    """Clean the texts one example needs, in order; the first reason to reject it, if any
    (``too_long``, ``missing_text`` or ``model_instructions``), and the cleaned texts."""
    # Length first, over every text: no regex runs over a pasted document, and the posts query,
    # which leaves such posts out by their lengths alone, counts them under the same reason.
    if any(raw is not None and len(raw) > max_chars for raw in raw_texts):
        return "too_long", []
    cleaned: list[CleanText] = []
    for raw in raw_texts:
        if raw is None:
            return "missing_text", cleaned
        text = clean_text(raw)
        if text is None:
            return "missing_text", cleaned
        if looks_like_injection(text.text):
            return "model_instructions", cleaned
        cleaned.append(text)
    return None, cleaned
