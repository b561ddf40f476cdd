"""The data path without Dagster: posts -> cleaned engaged posts (Parquet) -> chat JSONL files.

Both steps stream in batches, so memory stays flat however large the window is, and both spread
their CPU-bound Python work over worker processes:

* ``collect_engaged_posts`` cuts the window into ``SLICES`` fixed time slices. Each slice is
  streamed (most engaging first, ties by id), cleaned and written as a Parquet part with stable
  dedup keys, by a worker or inline. Duplicates are then found over the whole window at once from
  the key columns alone (numpy, no per-row Python): in each group of posts with the same
  normalized text the most engaging is kept. The parts are filtered and joined in slice order.
* ``build_training_files`` gives each worker a run of the Parquet file's row groups and joins
  the JSONL parts in order.

The slices are fixed, not one per worker, so the rows, the files' bytes and the
``dataset_hash`` are the same whatever the number of workers. The assets in
``ftp_assets.assets.data`` and the benchmark call these functions.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ftp_assets.domain.cleaning import clean_fields, dedup_key
from ftp_assets.domain.dataset import (
    SplitFile,
    TokenStats,
    count_tokens,
    dataset_hash,
    serialize_column,
    split_and_sample,
    system_message,
)
from ftp_assets.posts_db import PostsDatabase, SelectionRule, Window

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
        # Dedup keys of the task's target text (exact, and normalized), stable across processes.
        ("exact_key", pa.int64()),
        ("normalized_key", pa.int64()),
    ]
)
REJECTION_REASONS = ("missing_text", "too_long", "model_instructions", "duplicate_exact", "duplicate_normalized")
REPAIRS = ("posts_with_pii", "emails_replaced", "phones_replaced", "unicode_repaired")
PREVIEW_ROWS = 10
BATCH_ROWS = 20_000
SLICES = 4
# Below this many candidate posts one process is quicker than starting workers.
PARALLEL_FROM_ROWS = 50_000


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent may hold database connections and threads (Dagster's).
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _stable_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


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


@dataclass
class _Slice:
    rejected: Counter
    repairs: Counter


def _clean_slice(url: str, table: str, task: str, window: Window, rule: SelectionRule, out_path: Path,
                 max_text_chars: int) -> _Slice:  # fmt: skip
    """Clean one slice of the window into a Parquet part (runs in a worker, or inline)."""
    db = PostsDatabase(url, table)
    rejected: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    # Row positions of original_input, hook and body: what the task's example needs.
    needed = (2, 3) if task == "hook" else (2, 3, 4)
    with pq.ParquetWriter(out_path, ENGAGED_SCHEMA) as writer:
        for batch in db.stream_selection(window, rule, batch_size=BATCH_ROWS):
            columns: list[list] = [[] for _ in ENGAGED_SCHEMA.names]
            for row in batch:
                reason, cleaned = clean_fields(tuple(row[i] for i in needed), max_text_chars)
                if reason:
                    rejected[reason] += 1
                    continue
                target = cleaned[-1].text  # the text the model learns to write comes last
                emails = sum(c.emails for c in cleaned)
                phones = sum(c.phones for c in cleaned)
                repairs["posts_with_pii"] += bool(emails or phones)
                repairs["emails_replaced"] += emails
                repairs["phones_replaced"] += phones
                repairs["unicode_repaired"] += any(c.repaired_unicode for c in cleaned)
                post_id, persona_id, _, _, _, created_at, impressions, engagements = row
                values = (post_id, persona_id, cleaned[0].text, cleaned[1].text,
                          cleaned[2].text if task == "body" else None, created_at, impressions, engagements,
                          engagements / impressions, _stable_key(target), _stable_key(dedup_key(target)))  # fmt: skip
                for column, value in zip(columns, values):
                    column.append(value)
            if columns[0]:
                # pyarrow stores aware datetimes as UTC and takes SQLite's naive ones as UTC.
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=ENGAGED_SCHEMA))
    db.engine.dispose()
    return _Slice(rejected, repairs)


def keep_most_engaging(rates: np.ndarray, ids: np.ndarray, exact_keys: np.ndarray,
                       normalized_keys: np.ndarray) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """Which posts to keep: the most engaging (ties: lowest id) of each group with the same
    normalized text. Also counts the others: an exact duplicate has the kept post's very text, a
    normalized one differs from it only in case, spacing, punctuation or compatibility forms."""
    order = np.lexsort((ids, -rates))
    groups, first, group_of = np.unique(normalized_keys[order], return_index=True, return_inverse=True)
    kept_in_order = np.zeros(len(order), dtype=bool)
    kept_in_order[first] = True
    same_text = exact_keys[order] == exact_keys[order][first][group_of]
    keep = np.empty(len(order), dtype=bool)
    keep[order] = kept_in_order
    exact = int(np.count_nonzero(~kept_in_order & same_text))
    return keep, exact, len(order) - len(groups) - exact


def _join_kept(parts: list[Path], out_path: Path, rejected: Counter) -> tuple[int, list[dict]]:
    """Drop the duplicates over the whole window and join the parts in slice order; returns the
    number of rows and a preview of the most engaging."""
    keys = pa.concat_tables(
        pq.read_table(part, columns=["engagement_rate", "id", "exact_key", "normalized_key"]) for part in parts
    )
    rates, ids, exact_keys, normalized_keys = (column.to_numpy() for column in keys.columns)
    keep, exact, normalized = keep_most_engaging(rates, ids, exact_keys, normalized_keys)
    rejected["duplicate_exact"] += exact
    rejected["duplicate_normalized"] += normalized
    order = np.lexsort((ids, -rates))
    top = set(order[keep[order]][:PREVIEW_ROWS].tolist())
    preview: list[dict] = []
    offset = 0
    with pq.ParquetWriter(out_path, ENGAGED_SCHEMA) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS):
                mask = keep[offset:offset + batch.num_rows]
                here = [i - offset for i in sorted(top) if offset <= i < offset + batch.num_rows]
                if here:
                    preview += batch.take(pa.array(here, type=pa.int64())).to_pylist()
                offset += batch.num_rows
                if mask.any():
                    writer.write_batch(batch.filter(pa.array(mask)))
            part.unlink()
    preview.sort(key=lambda row: (-row["engagement_rate"], row["id"]))
    return int(keep.sum()), preview


def collect_engaged_posts(
    db: PostsDatabase,
    task: str,
    window: Window,
    rule: SelectionRule,
    out_path: Path,
    *,
    max_text_chars: int = 2_000,
    workers: int | None = None,
) -> EngagedPosts:
    """Select the window's qualifying posts, clean them for ``task``, write them as Parquet.
    ``workers`` defaults to the cores (up to 4) for large windows and 1 for small ones."""
    funnel = db.window_funnel(window, rule)
    candidates = funnel["in_window"] - sum(v for k, v in funnel.items() if k != "in_window")
    if workers is None:
        workers = default_workers() if candidates >= PARALLEL_FROM_ROWS else 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    step = (window.end - window.start) / SLICES
    slices = [Window(window.start + step * i, window.end if i == SLICES - 1 else window.start + step * (i + 1))
              for i in range(SLICES)]  # fmt: skip
    parts = [out_path.with_name(f"{out_path.stem}.part{i}.parquet") for i in range(SLICES)]
    jobs = [(db.url, db.table.name, task, piece, rule, part, max_text_chars) for piece, part in zip(slices, parts)]
    if workers == 1:
        results = [_clean_slice(*job) for job in jobs]
    else:
        with _pool(workers) as pool:
            results = list(pool.map(_clean_slice, *zip(*jobs)))
    rejected: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    for result in results:
        rejected.update(result.rejected)
        repairs.update(result.repairs)
    rows, preview = _join_kept(parts, out_path, rejected)
    return EngagedPosts(
        path=str(out_path), task=task, window_start=window.start, window_end=window.end, rows=rows,
        funnel=funnel, rejected={r: rejected[r] for r in REJECTION_REASONS}, repairs={r: repairs[r] for r in REPAIRS},
        preview=preview,
    )  # fmt: skip


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

    @property
    def examples(self) -> int:
        return self.training_examples + self.validation_examples


@dataclass
class _Part:
    training: Path
    validation: Path
    training_lines: int
    validation_lines: int
    training_sha256: bytes
    validation_sha256: bytes
    tokens: TokenStats
    dropped: Counter
    preview: list[dict]


def _build_part(engaged_path: str, row_groups: list[int], task: str, options: DatasetOptions, sample_share: float,
                training_path: Path, validation_path: Path) -> _Part:  # fmt: skip
    """Write the JSONL lines of some row groups (runs in a worker, or inline). Lines are built a
    column at a time in C++ (``serialize_column``); Python touches only the rows it must count."""
    training, validation = SplitFile(training_path), SplitFile(validation_path)
    tokens = TokenStats()
    dropped: Counter[str] = Counter({"over_token_limit": 0})
    systems: dict[str, str] = {}
    preview: list[dict] = []
    columns = ["id", "persona_id", "original_input", "hook", "body"]
    for batch in pq.ParquetFile(engaged_path).iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups,
                                                           columns=columns):  # fmt: skip
        ids, personas, inputs, hooks, bodies = batch.columns
        for persona in pc.unique(personas).to_pylist():
            if persona not in systems:
                systems[persona] = system_message(persona, task, options.system_templates)
        system_json = {persona: json.dumps(text, ensure_ascii=False) for persona, text in systems.items()}
        line_array = serialize_column(task, pa.array([system_json[p] for p in personas.to_pylist()]),
                                      inputs, hooks, bodies)  # fmt: skip
        # The cookbook's rules hold by construction (three messages, fixed roles and keys) but for
        # empty content, which is checked here: such a line is dropped, never written.
        texts = [inputs, hooks] + ([bodies] if task == "body" else [])
        has_content = np.logical_and.reduce([pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(t)), 0),
                                                          False).to_numpy(zero_copy_only=False) for t in texts])  # fmt: skip
        if not all(text.strip() for text in systems.values()):
            has_content[:] = False
        dropped["invalid_format:missing_content"] += int((~has_content).sum())
        lines = line_array.to_pylist()
        validation_rows, sample_rows = split_and_sample(ids.to_pylist(), options.validation_share, sample_share)
        sizes = pc.binary_length(line_array).to_numpy(zero_copy_only=False)
        keep = has_content.copy()
        for row in np.flatnonzero(keep & (sizes > options.max_tokens_per_example)):  # the byte bound
            if count_tokens(json.loads(lines[row])["messages"]) > options.max_tokens_per_example:
                keep[row] = False
                dropped["over_token_limit"] += 1
        validation.write_lines([line for line, k, v in zip(lines, keep, validation_rows) if k and v])
        chosen = keep & ~validation_rows
        training.write_lines([line for line, k in zip(lines, chosen) if k])
        tokens.add_many(sizes[chosen])
        for row in np.flatnonzero(chosen & (sample_rows | (sample_share >= 1.0))):
            messages = json.loads(lines[row])["messages"]
            tokens.add_sample(len(lines[row].encode()), count_tokens(messages))
            if len(preview) < PREVIEW_ROWS:
                preview.append({"post_id": ids[row].as_py(), "user": messages[1]["content"],
                                "assistant": messages[2]["content"]})  # fmt: skip
    return _Part(training.path, validation.path, training.lines, validation.lines, training.close(),
                 validation.close(), tokens, dropped, preview)  # fmt: skip


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


def build_training_files(engaged: EngagedPosts, out_dir: Path, options: DatasetOptions,
                         workers: int | None = None) -> TrainingDataset:  # fmt: skip
    """Write training.jsonl and validation.jsonl for the engaged posts of one task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    training_path, validation_path = out_dir / "training.jsonl", out_dir / "validation.jsonl"
    sample_share = 1.0 if engaged.rows <= options.count_all_tokens_below else options.token_sample_share
    row_groups = list(range(pq.ParquetFile(engaged.path).num_row_groups))
    if workers is None:
        workers = default_workers() if engaged.rows >= PARALLEL_FROM_ROWS else 1
    workers = max(1, min(workers, len(row_groups)))
    if workers == 1:
        parts = [_build_part(engaged.path, row_groups, engaged.task, options, sample_share, training_path,
                             validation_path)]  # fmt: skip
        training_digest, validation_digest = parts[0].training_sha256, parts[0].validation_sha256
    else:
        shares = [row_groups[i * len(row_groups) // workers:(i + 1) * len(row_groups) // workers]
                  for i in range(workers)]  # fmt: skip
        with _pool(workers) as pool:
            parts = list(pool.map(_build_part, *zip(*[
                (engaged.path, groups, engaged.task, options, sample_share,
                 out_dir / f"training.part{i}.jsonl", out_dir / f"validation.part{i}.jsonl")
                for i, groups in enumerate(shares)
            ])))  # fmt: skip
        training_digest = _concatenate([p.training for p in parts], training_path)
        validation_digest = _concatenate([p.validation for p in parts], validation_path)

    tokens = TokenStats.combined(p.tokens for p in parts)
    dropped: Counter[str] = Counter({"over_token_limit": 0})
    for part in parts:
        dropped.update(part.dropped)
    training_lines = sum(p.training_lines for p in parts)
    validation_lines = sum(p.validation_lines for p in parts)
    has_validation = validation_lines >= options.min_validation_examples
    if not has_validation:
        # Too few for a meaningful validation loss: fold them into training instead.
        training_digest = _concatenate([training_path.rename(out_dir / "training.part.jsonl"),
                                        validation_path], training_path)  # fmt: skip
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
        preview=next((p.preview for p in parts if p.preview), []),
    )


def _recount_tokens(path: Path) -> TokenStats:
    """Exact counts for a file small enough to have no validation split."""
    stats = TokenStats()
    with open(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\n")
            stats.add_bytes(len(line))
            stats.add_sample(len(line), count_tokens(json.loads(line)["messages"]))
    return stats
