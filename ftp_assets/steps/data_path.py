"""The data path without Dagster: posts -> cleaned engaged posts (Parquet) -> chat JSONL files.

Both steps stream Arrow record batches, so memory stays flat however large the window is, and
both do their per-row work a column at a time in Arrow's C++ kernels, which release the GIL:
a few threads process batches side by side while the main thread writes them in order.

* ``collect_engaged_posts`` streams the selection (most engaging first, ties by id), cleans each
  batch (``clean_columns``: the row-wise rules of ``cleaning`` for the few rows that need them),
  keys it by two 64-bit hashes of the task's target text, exact and normalized, and writes the
  posts whose normalized text has not come before (``KeptTexts``): in stream order, the first
  of a group of duplicates is the most engaging.
* ``build_training_files`` turns batches of the Parquet file into JSONL lines in C++
  (``serialize_column``) and splits them by a hash of the post id.

Batches are written in stream order whatever the number of threads, so the rows, the files'
bytes and the ``dataset_hash`` do not depend on it. The assets in ``ftp_assets.data.assets``
and the benchmark call these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ftp_assets.adapters.posts_db import PostsDatabase, SelectionRule, TextLimit, Window
from ftp_assets.domain.clean_columns import clean_columns, clean_columns_ready, dedup_key_hashes, text_hashes
from ftp_assets.domain.dataset import (
    SplitFile,
    TokenStats,
    dataset_hash,
    serialize_column,
    split_and_sample,
    system_message,
)
from ftp_assets.domain.tokens import count_message_tokens

ENGAGED_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("persona_id", pa.string()),
        ("original_input", pa.string()),
        ("hook", pa.string()),
        ("body", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("impressions", pa.int64()),
        ("engagements", pa.int64()),
        ("engagement_rate", pa.float64()),
        # Hashes of the task's target text (exact, and its dedup key), the same in every thread.
        ("exact_key", pa.int64()),
        ("normalized_key", pa.int64()),
    ]
)
TASK_FIELDS = {"hook": ("original_input", "hook"), "body": ("original_input", "hook", "body")}
REJECTION_REASONS = (
    "missing_id",
    "too_long",
    "missing_text",
    "model_instructions",
    "duplicate_exact",
    "duplicate_normalized",
)
REPAIRS = ("posts_with_pii", "emails_replaced", "phones_replaced", "unicode_repaired")
PREVIEW_ROWS = 10
BATCH_ROWS = 20_000

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def map_in_order(function: Callable[[Item], Result], items: Iterable[Item], threads: int) -> Iterator[Result]:
    """``map`` over threads, results in the items' order, with at most ``threads + 1`` items in
    flight (``Executor.map`` would read every item first: the whole window). Arrow's memory is
    handed back to the system after each result: its allocator would keep the high-water mark."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > threads:
                yield pending.popleft().result()
                pa.default_memory_pool().release_unused()
        while pending:
            yield pending.popleft().result()
            pa.default_memory_pool().release_unused()


class WriterThread:
    """Runs writes one after another, in the order given, on a thread of its own, so that the
    output file's encoding, hashing and disk time overlap the next batches' work. At most two
    writes wait; a failed write is raised by the next call."""

    def __init__(self):
        self._thread = ThreadPoolExecutor(1)
        self._pending: deque = deque()

    def submit(self, write: Callable[..., object], *args) -> None:
        self._pending.append(self._thread.submit(write, *args))
        while len(self._pending) > 2:
            self._pending.popleft().result()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._thread.shutdown()


@dataclass
class EngagedPosts:
    """Where the cleaned selection is stored and how it was made."""

    path: str
    task: str
    window_start: datetime
    window_end: datetime
    rows: int
    funnel: dict[str, int]
    rejected: dict[str, int]
    repairs: dict[str, int]
    preview: list[dict] = field(default_factory=list)
    # Where a copy of the file is kept for steps in other pods ("" when local only).
    shared_folder: str = ""


def _clean_batch(batch: pa.RecordBatch, task: str, max_text_chars: int) -> tuple[pa.RecordBatch, Counter, Counter]:
    """One batch of the selection, cleaned for the task, as ``ENGAGED_SCHEMA`` rows."""
    cleaned = clean_columns([batch.column(name) for name in TASK_FIELDS[task]], max_text_chars)
    kept = batch.filter(pa.array(cleaned.keep))
    texts = dict(zip(TASK_FIELDS[task], cleaned.texts, strict=True))
    target = cleaned.texts[-1]  # the text the model learns to write comes last
    impressions, engagements = kept.column("impressions"), kept.column("engagements")
    columns = {
        **{name: kept.column(name) for name in ("id", "persona_id", "created_at")},
        "original_input": texts["original_input"],
        "hook": texts["hook"],
        "body": texts.get("body", pa.nulls(kept.num_rows, pa.string())),
        "impressions": impressions,
        "engagements": engagements,
        "engagement_rate": pc.divide(pc.cast(engagements, pa.float64()), pc.cast(impressions, pa.float64())),
        "exact_key": pa.array(text_hashes(target)),
        "normalized_key": pa.array(dedup_key_hashes(target)),
    }
    return (
        pa.RecordBatch.from_arrays([columns[name] for name in ENGAGED_SCHEMA.names], schema=ENGAGED_SCHEMA),
        cleaned.rejected,
        cleaned.repairs,
    )


class KeptTexts:
    """The posts kept so far, as the normalized keys of their target texts (sorted) and each
    one's exact key: 16 bytes a kept post, the only state that grows with the window.

    The selection streams most engaging first (ties: lowest id), so the first post of a group of
    duplicates to arrive is the one to keep, and each later one is counted: an exact duplicate
    has the kept post's very text, a normalized one differs from it only in case, spacing,
    punctuation or compatibility forms."""

    def __init__(self):
        self.normalized = np.empty(0, dtype=np.int64)
        self.exact = np.empty(0, dtype=np.int64)

    def keep_new(self, normalized: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Which posts of the next batch (in stream order) to keep; also the numbers of exact
        and of normalized duplicates among the others."""
        groups, first = np.unique(normalized, return_index=True)
        at = np.searchsorted(self.normalized, groups)
        seen = np.zeros(len(groups), dtype=bool)
        inside = at < len(self.normalized)
        seen[inside] = self.normalized[at[inside]] == groups[inside]
        kept_exact = exact[first]  # the exact key of each group's kept post
        kept_exact[seen] = self.exact[at[seen]]
        group_of = np.searchsorted(groups, normalized)
        keep = np.zeros(len(normalized), dtype=bool)
        keep[first[~seen]] = True
        duplicate = ~keep
        exact_duplicates = int(np.count_nonzero(duplicate & (exact == kept_exact[group_of])))
        self.normalized = np.insert(self.normalized, at[~seen], groups[~seen])
        self.exact = np.insert(self.exact, at[~seen], exact[first[~seen]])
        return keep, exact_duplicates, int(np.count_nonzero(duplicate)) - exact_duplicates


def collect_engaged_posts(
    db: PostsDatabase,
    task: str,
    window: Window,
    rule: SelectionRule,
    out_path: Path,
    *,
    max_text_chars: int = 2_000,
    threads: int | None = None,
) -> EngagedPosts:
    """Select the window's qualifying posts, clean them for ``task``, drop duplicates over the
    whole window, write them as Parquet. ``threads`` (default: the cores, up to 4) clean
    batches side by side."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rejected: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    kept_texts = KeptTexts()
    rows = 0
    preview: list[dict] = []
    with ThreadPoolExecutor(2) as background:
        # The funnel is one aggregate over the window: the server computes it meanwhile, and the
        # cleaning's patterns are built while the server sorts the selection.
        # Posts without ids, or with a needed text over the limit, are left out by the query
        # (a pasted document is never transferred) and counted by the funnel.
        texts = TextLimit(TASK_FIELDS[task], max_text_chars)
        funnel_future = background.submit(db.window_funnel, window, rule, texts)
        background.submit(clean_columns_ready)
        batches = db.stream_selection(window, rule, batch_rows=BATCH_ROWS, texts=texts)
        with (
            pq.ParquetWriter(out_path, ENGAGED_SCHEMA, use_dictionary=["persona_id"]) as parquet,
            WriterThread() as writer,
        ):
            for cleaned, batch_rejected, batch_repairs in map_in_order(
                lambda batch: _clean_batch(batch, task, max_text_chars), batches, threads or default_threads()
            ):
                rejected.update(batch_rejected)
                repairs.update(batch_repairs)
                keep, exact, normalized = kept_texts.keep_new(
                    cleaned.column("normalized_key").to_numpy(), cleaned.column("exact_key").to_numpy()
                )
                rejected["duplicate_exact"] += exact
                rejected["duplicate_normalized"] += normalized
                kept = cleaned.filter(pa.array(keep))
                if kept.num_rows:
                    writer.submit(parquet.write_batch, kept)
                    rows += kept.num_rows
                    preview += kept.slice(0, PREVIEW_ROWS - len(preview)).to_pylist()
        counts = funnel_future.result()
    rejected.update(counts.rejected)
    return EngagedPosts(
        path=str(out_path),
        task=task,
        window_start=window.start,
        window_end=window.end,
        rows=rows,
        funnel=counts.funnel,
        rejected={r: rejected[r] for r in REJECTION_REASONS},
        repairs={r: repairs[r] for r in REPAIRS},
        preview=preview,
    )


@dataclass
class DatasetOptions:
    system_templates: Mapping[str, str] = field(default_factory=dict)
    max_tokens_per_example: int = 4_096
    validation_share: float = 0.10
    min_validation_examples: int = 10
    count_all_tokens_below: int = 20_000
    token_sample_share: float = 0.01
    n_epochs: int = 3
    usd_per_million_training_tokens: float = 3.00


@dataclass
class TrainingDataset:
    task: str
    training_path: str
    validation_path: str | None
    training_examples: int
    validation_examples: int
    dropped: dict[str, int]
    dataset_hash: str
    training_tokens: float
    tokens_exact: bool
    tokens_relative_standard_error: float
    mean_tokens_per_example: float
    max_tokens_per_example: int
    billed_training_tokens: float
    estimated_cost_usd: float
    n_epochs: int
    usd_per_million_training_tokens: float
    preview: list[dict] = field(default_factory=list)
    # Where a copy of the files is kept for steps in other pods ("" when local only).
    shared_folder: str = ""

    @property
    def examples(self) -> int:
        return self.training_examples + self.validation_examples


@dataclass
class _Lines:
    """The JSONL lines of one batch of engaged posts, ready to append."""

    training: pa.Buffer | bytes
    validation: pa.Buffer | bytes
    training_lines: int
    validation_lines: int
    tokens: TokenStats
    dropped: Counter
    preview: list[dict]


def _joined(lines: pa.Array) -> pa.Buffer | bytes:
    """The values of a string array back to back (each already ends in a newline)."""
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]


def _lines_of_batch(
    batch: pa.RecordBatch, task: str, options: DatasetOptions, sample_share: float, system_json: Callable[[str], str]
) -> _Lines:
    """Lines are built a column at a time in C++ (``serialize_column``); Python touches only the
    rows whose tokens it must count."""
    ids, personas, inputs, hooks, bodies = batch.columns
    names = pc.unique(personas)
    systems = pa.array([system_json(name) for name in names.to_pylist()], type=pa.string())
    lines = serialize_column(
        task, systems.take(pc.index_in(personas, value_set=names)), inputs, hooks, bodies, end="\n"
    )
    # The cookbook's rules hold by construction (three messages, fixed roles and keys) but for
    # empty content, which is checked here: such a line is dropped, never written.
    texts = [inputs, hooks] + ([bodies] if task == "body" else [])
    has_content = np.logical_and.reduce(
        [
            pc.fill_null(pc.and_(pc.greater(pc.utf8_length(t), 0), pc.invert(pc.utf8_is_space(t))), False).to_numpy(
                zero_copy_only=False
            )
            for t in texts
        ]
    )
    blank_systems = [
        name
        for name, system in zip(names.to_pylist(), systems.to_pylist(), strict=True)
        if not json.loads(system).strip()
    ]
    if blank_systems:
        has_content &= ~pc.is_in(personas, value_set=pa.array(blank_systems, pa.string())).to_numpy(
            zero_copy_only=False
        )
    dropped: Counter[str] = Counter({"over_token_limit": 0})
    dropped["invalid_format:missing_content"] += int((~has_content).sum())
    validation_rows, sample_rows = split_and_sample(ids.to_numpy(), options.validation_share, sample_share)
    sizes = pc.fill_null(pc.binary_length(lines), 1).to_numpy() - 1  # without the newline
    keep = has_content.copy()
    for row in np.flatnonzero(keep & (sizes > options.max_tokens_per_example)):  # the byte bound
        if count_message_tokens(json.loads(lines[row].as_py())["messages"]) > options.max_tokens_per_example:
            keep[row] = False
            dropped["over_token_limit"] += 1
    chosen = keep & ~validation_rows
    tokens = TokenStats()
    tokens.add_many(sizes[chosen])
    preview: list[dict] = []
    for row in np.flatnonzero(chosen & (sample_rows | (sample_share >= 1.0))):
        messages = json.loads(lines[row].as_py())["messages"]
        tokens.add_sample(int(sizes[row]), count_message_tokens(messages))
        if len(preview) < PREVIEW_ROWS:
            preview.append(
                {"post_id": ids[row].as_py(), "user": messages[1]["content"], "assistant": messages[2]["content"]}
            )
    return _Lines(
        training=_joined(lines.filter(pa.array(chosen))),
        validation=_joined(lines.filter(pa.array(keep & validation_rows))),
        training_lines=int(chosen.sum()),
        validation_lines=int((keep & validation_rows).sum()),
        tokens=tokens,
        dropped=dropped,
        preview=preview,
    )


def _concatenate(parts: list[Path], target: Path) -> bytes:
    """Join part files in order into ``target``; the SHA-256 of the result."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            part.unlink()
    return digest.digest()


def build_training_files(
    engaged: EngagedPosts, out_dir: Path, options: DatasetOptions, threads: int | None = None
) -> TrainingDataset:
    """Write training.jsonl and validation.jsonl for the engaged posts of one task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    training_path, validation_path = out_dir / "training.jsonl", out_dir / "validation.jsonl"
    sample_share = 1.0 if engaged.rows <= options.count_all_tokens_below else options.token_sample_share
    systems: dict[str, str] = {}

    def system_json(persona: str) -> str:
        if persona not in systems:
            systems[persona] = json.dumps(
                system_message(persona, engaged.task, options.system_templates), ensure_ascii=False
            )
        return systems[persona]

    training, validation = SplitFile(training_path), SplitFile(validation_path)
    tokens = TokenStats()
    dropped: Counter[str] = Counter({"over_token_limit": 0})
    preview: list[dict] = []
    # pre_buffer=False: pre-buffering reads row groups ahead, and its memory grows with the file.
    batches = pq.ParquetFile(engaged.path, pre_buffer=False).iter_batches(
        batch_size=BATCH_ROWS, columns=["id", "persona_id", "original_input", "hook", "body"]
    )
    with WriterThread() as writer:
        for lines in map_in_order(
            lambda batch: _lines_of_batch(batch, engaged.task, options, sample_share, system_json),
            batches,
            threads or default_threads(),
        ):
            writer.submit(training.write, lines.training, lines.training_lines)
            writer.submit(validation.write, lines.validation, lines.validation_lines)
            tokens = TokenStats.combined([tokens, lines.tokens])
            dropped.update(lines.dropped)
            preview += lines.preview[: PREVIEW_ROWS - len(preview)]
    validation_digest: bytes | None  # None once the validation lines are folded into training
    training_digest, validation_digest = training.close(), validation.close()
    training_lines, validation_lines = training.lines, validation.lines
    has_validation = validation_lines >= options.min_validation_examples
    if not has_validation:
        # Too few for a meaningful validation loss: fold them into training instead.
        training_digest = _concatenate(
            [training_path.rename(out_dir / "training.part.jsonl"), validation_path], training_path
        )
        validation_digest = None
        tokens = _recount_tokens(training_path)
        training_lines, validation_lines = training_lines + validation_lines, 0

    billed = tokens.estimated_total * options.n_epochs
    return TrainingDataset(
        task=engaged.task,
        training_path=str(training_path),
        validation_path=str(validation_path) if has_validation else None,
        training_examples=training_lines,
        validation_examples=validation_lines,
        dropped=dict(dropped),
        dataset_hash=dataset_hash(training_digest, validation_digest),
        training_tokens=tokens.estimated_total,
        tokens_exact=tokens.exact,
        tokens_relative_standard_error=tokens.relative_standard_error,
        mean_tokens_per_example=tokens.sampled_tokens / tokens.sampled_examples if tokens.sampled_examples else 0.0,
        max_tokens_per_example=tokens.max_tokens_seen,
        billed_training_tokens=billed,
        estimated_cost_usd=billed / 1e6 * options.usd_per_million_training_tokens,
        n_epochs=options.n_epochs,
        usd_per_million_training_tokens=options.usd_per_million_training_tokens,
        preview=preview,
    )


def _recount_tokens(path: Path) -> TokenStats:
    """Exact counts for a file small enough to have no validation split."""
    stats = TokenStats()
    with open(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\n")
            stats.add_bytes(len(line))
            stats.add_sample(len(line), count_message_tokens(json.loads(line)["messages"]))
    return stats
