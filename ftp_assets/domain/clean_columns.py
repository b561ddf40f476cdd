"""The cleaning and dedup keys of ``cleaning``, for whole Arrow columns at once.

Most posts need no repair: plain text, no PII, nothing addressed to a model. One RE2 search per
field (``pyarrow.compute``: C++, without the GIL) finds the rows that might need one, and only
those go through the row-wise functions of ``cleaning``, so every decision stays theirs. The
other rows are kept as they are, and their dedup keys come from Arrow kernels.

The search is a superset of what the row-wise functions act on, built at first use from this
Python's ``unicodedata``: "plain" characters are those the row-wise functions leave alone
(already NFKC, no combining mark, case folding that Arrow's lowercasing matches, no hidden
ASCII letter under a case mapping); any other non-ASCII character sends its row to Python. A
property test holds the two paths together on hostile Unicode.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ftp_assets.domain.cleaning import INVISIBLE, clean_fields, dedup_key

# Characters above this are rare enough to go to Python without being classified one by one.
_SCANNED_UP_TO = 0x30000
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# The prompt-injection pattern of ``cleaning`` without its word boundaries, so it matches
# wherever the row-wise one does (and a little more); non-ASCII look-alikes of its letters
# (the Kelvin sign, a dotless i) are not plain, so their rows go to Python anyway.
_INJECTION_SUPERSET = (
    r"(?i:(?:ignore|disregard|forget|override)[^.\n]{0,40}(?:previous|prior|above|earlier|all|your)"
    r"[^.\n]{0,40}(?:instructions?|prompts?|rules|guidelines)|system prompt|you are now (?:a|an|in)"
    r"|jailbreak|developer mode)"
)
# What ``scrub_pii`` looks at: an '@', or seven digits close together (non-ASCII digits are not plain).
_PII_SUPERSET = r"@|[0-9](?:[ .()+-]{0,2}[0-9]){6}"
# ASCII whitespace that ``str.strip`` removes (other whitespace is not plain).
_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "


def _char_class(code_points: list[int]) -> str:
    """An RE2 character class (without brackets) of the code points, as ranges."""
    ranges: list[str] = []
    start = previous = None
    for point in [*sorted(code_points), None]:
        if point is not None and previous is not None and point == previous + 1:
            previous = point
            continue
        if start is not None:
            ranges.append(f"\\x{{{start:x}}}" + (f"-\\x{{{previous:x}}}" if previous != start else ""))
        start = previous = point
    return "".join(ranges)


@dataclass(frozen=True)
class _Patterns:
    needs_rows: str  # a field matching this goes through the row-wise cleaning
    not_plain: str  # a text matching this gets its dedup key from the row-wise function
    not_alnum: str  # what the dedup key drops from a lowercased plain text


def _scanned(start: int, stop: int) -> Iterator[list[int]]:
    """The code points from start to stop in blocks (the scan's garbage stays small), surrogates
    left out."""
    for first in range(start, stop, 4096):
        yield [point for point in range(first, min(first + 4096, stop)) if not 0xD800 <= point < 0xE000]


@lru_cache(maxsize=1)
def _patterns() -> _Patterns:
    # Characters a canonical composition can absorb into the one before them (NFC "maybe").
    composing = set()
    for block in _scanned(0x80, _SCANNED_UP_TO):
        for point in block:
            decomposition = unicodedata.decomposition(chr(point))
            if decomposition and not decomposition.startswith("<") and len(decomposition.split()) == 2:
                composing.add(int(decomposition.split()[1], 16))
    not_plain: list[int] = []
    not_alnum = [c for c in range(0x80) if not chr(c).isalnum()]
    for block in _scanned(0x80, _SCANNED_UP_TO):
        chars = [chr(point) for point in block]
        lowered = pc.utf8_lower(pa.array(chars)).to_pylist()  # what Arrow's kernel will do
        not_plain += [
            point
            for point, char, lower in zip(block, chars, lowered, strict=True)
            if point in INVISIBLE
            or point in composing
            or char.isspace()
            or char.isdecimal()
            or unicodedata.combining(char)
            or not unicodedata.is_normalized("NFKC", char)
            or char.casefold() != lower
            or _ASCII_LETTERS & set(char.lower() + char.upper() + char.casefold())
        ]
        not_alnum += [point for point, char in zip(block, chars, strict=True) if not char.isalnum()]
    beyond = f"\\x{{{_SCANNED_UP_TO:x}}}-\\x{{10ffff}}"
    not_plain_class = "[" + _char_class(not_plain) + beyond + "]"
    controls = "\\x00-\\x08\\x0b-\\x1f\\x7f"
    needs_rows = "|".join(
        [
            not_plain_class,
            f"[{controls}]",
            f"^[{_ASCII_SPACE}]",
            f"[{_ASCII_SPACE}]$",
            "^$",
            _PII_SUPERSET,
            _INJECTION_SUPERSET,
        ]
    )
    return _Patterns(needs_rows, not_plain_class, "[" + _char_class(not_alnum) + "]+")


def clean_columns_ready() -> None:
    """Build the patterns now (about 0.2 s, once per process) rather than on the first batch."""
    _patterns()


@dataclass
class CleanedColumns:
    keep: np.ndarray  # per input row: kept (else rejected for a counted reason)
    texts: list[pa.Array]  # the kept rows' cleaned fields, in the order given
    rejected: Counter
    repairs: Counter


def clean_columns(fields: list[pa.Array], max_chars: int) -> CleanedColumns:
    """``cleaning.clean_fields`` for every row of the columns; fields in the order that function
    takes them (the target text last)."""
    patterns = _patterns()
    rows = len(fields[0])
    # One search over the fields end to end: the pattern is compiled once per call, not per field.
    every_field = pa.concat_arrays([texts.cast(pa.large_string()) for texts in fields])
    suspect = pc.or_kleene(
        pc.match_substring_regex(every_field, patterns.needs_rows), pc.greater(pc.utf8_length(every_field), max_chars)
    )
    needs_rows = np.logical_or.reduce(pc.fill_null(suspect, True).to_numpy(zero_copy_only=False).reshape(-1, rows))
    keep = np.ones(rows, dtype=bool)
    rejected: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    rowwise = np.flatnonzero(needs_rows)
    if len(rowwise) == 0:
        return CleanedColumns(keep, list(fields), rejected, repairs)
    picked = pa.array(rowwise)
    raw_rows = zip(*(texts.take(picked).to_pylist() for texts in fields), strict=True)
    replacements: list[list[str]] = [[] for _ in fields]
    for row, raw in zip(rowwise, raw_rows, strict=True):
        reason, cleaned = clean_fields(raw, max_chars)
        if reason:
            rejected[reason] += 1
            keep[row] = False
            continue
        emails = sum(c.emails for c in cleaned)
        phones = sum(c.phones for c in cleaned)
        repairs["posts_with_pii"] += bool(emails or phones)
        repairs["emails_replaced"] += emails
        repairs["phones_replaced"] += phones
        repairs["unicode_repaired"] += any(c.repaired_unicode for c in cleaned)
        for column, text in zip(replacements, cleaned, strict=True):
            column.append(text.text)
    mask = pa.array(needs_rows[keep])
    texts = [
        pc.replace_with_mask(column.filter(pa.array(keep)), mask, pa.array(new, type=column.type))
        for column, new in zip(fields, replacements, strict=True)
    ]
    return CleanedColumns(keep, texts, rejected, repairs)


def text_hashes(texts: pa.Array) -> np.ndarray:
    """64-bit SipHash of each text (pandas' fixed key: the same on every machine and run)."""
    return pd.util.hash_array(texts.to_numpy(zero_copy_only=False), categorize=False).view(np.int64)


def dedup_key_hashes(texts: pa.Array) -> np.ndarray:
    """``text_hashes`` of ``cleaning.dedup_key`` of each (non-null) text."""
    patterns = _patterns()
    keys = pc.utf8_lower(texts)
    for common in (" ", "\n"):  # plain removals first: the regex then has far fewer matches
        keys = pc.replace_substring(keys, common, "")
    keys = pc.replace_substring_regex(keys, patterns.not_alnum, "")
    rowwise = pc.match_substring_regex(texts, patterns.not_plain)
    if pc.any(rowwise).as_py():
        exact = [dedup_key(text) for text in texts.filter(rowwise).to_pylist()]
        keys = pc.replace_with_mask(keys, rowwise, pa.array(exact, type=keys.type))
    return text_hashes(keys)
