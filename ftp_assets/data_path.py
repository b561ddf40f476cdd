"""The data path without Dagster: posts -> cleaned engaged posts (Parquet) -> chat JSONL files.

Both steps stream in batches, so memory stays flat however large the window is; the assets in
``ftp_assets.assets.data`` and the benchmark call these functions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ftp_assets.domain.chat_format import format_error
from ftp_assets.domain.cleaning import clean_fields, dedup_key
from ftp_assets.domain.dataset import (
    SplitFile,
    TokenStats,
    build_example,
    count_tokens,
    dataset_hash,
    is_token_sample,
    is_validation,
    serialize,
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
    ]
)
REJECTION_REASONS = ("missing_text", "too_long", "model_instructions", "duplicate_exact", "duplicate_normalized")
PREVIEW_ROWS = 10


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


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def collect_engaged_posts(
    db: PostsDatabase,
    task: str,
    window: Window,
    rule: SelectionRule,
    out_path: Path,
    *,
    max_text_chars: int = 2_000,
    batch_size: int = 20_000,
) -> EngagedPosts:
    """Select the window's qualifying posts, clean them for ``task``, write them as Parquet."""
    funnel = db.window_funnel(window, rule)
    rejected: Counter[str] = Counter({reason: 0 for reason in REJECTION_REASONS})
    repairs: Counter[str] = Counter({"posts_with_pii": 0, "emails_replaced": 0, "phones_replaced": 0,
                                     "unicode_repaired": 0})  # fmt: skip
    seen_exact: set[int] = set()
    seen_normalized: set[int] = set()
    preview: list[dict] = []
    rows = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Row positions of original_input, hook and body: what the task's example needs.
    needed = (2, 3) if task == "hook" else (2, 3, 4)

    with pq.ParquetWriter(out_path, ENGAGED_SCHEMA) as writer:
        for batch in db.stream_selection(window, rule, batch_size=batch_size):
            columns: dict[str, list] = {name: [] for name in ENGAGED_SCHEMA.names}
            for row in batch:
                reason, cleaned = clean_fields(tuple(row[i] for i in needed), max_text_chars)
                if reason:
                    rejected[reason] += 1
                    continue
                target = cleaned[-1].text  # the text the model learns to write comes last
                exact = hash(target)
                if exact in seen_exact:
                    rejected["duplicate_exact"] += 1
                    continue
                normalized = hash(dedup_key(target))
                if normalized in seen_normalized:
                    rejected["duplicate_normalized"] += 1
                    continue
                seen_exact.add(exact)
                seen_normalized.add(normalized)

                emails = sum(c.emails for c in cleaned)
                phones = sum(c.phones for c in cleaned)
                repairs["posts_with_pii"] += bool(emails or phones)
                repairs["emails_replaced"] += emails
                repairs["phones_replaced"] += phones
                repairs["unicode_repaired"] += any(c.repaired_unicode for c in cleaned)

                texts = [c.text for c in cleaned] + ([None] if task == "hook" else [])
                post_id, persona_id, _, _, _, created_at, impressions, engagements = row
                record = dict(
                    id=post_id, persona_id=persona_id, original_input=texts[0], hook=texts[1], body=texts[2],
                    created_at=_utc(created_at), impressions=impressions, engagements=engagements,
                    engagement_rate=engagements / impressions,
                )  # fmt: skip
                for name, value in record.items():
                    columns[name].append(value)
                if len(preview) < PREVIEW_ROWS:
                    preview.append(record)
                rows += 1
            if columns["id"]:
                writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=ENGAGED_SCHEMA))

    return EngagedPosts(
        path=str(out_path), task=task, window_start=window.start, window_end=window.end, rows=rows,
        funnel=funnel, rejected=dict(rejected), repairs=dict(repairs), preview=preview,
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


def build_training_files(engaged: EngagedPosts, out_dir: Path, options: DatasetOptions) -> TrainingDataset:
    """Write training.jsonl and validation.jsonl for the engaged posts of one task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    training = SplitFile(out_dir / "training.jsonl")
    validation = SplitFile(out_dir / "validation.jsonl")
    tokens = TokenStats()
    dropped: Counter[str] = Counter({"over_token_limit": 0})
    sample_share = 1.0 if engaged.rows <= options.count_all_tokens_below else options.token_sample_share
    systems: dict[str, str] = {}
    preview: list[dict] = []

    for batch in pq.ParquetFile(engaged.path).iter_batches(batch_size=20_000):
        data = batch.to_pydict()
        for post_id, persona_id, original_input, hook, body in zip(
            data["id"], data["persona_id"], data["original_input"], data["hook"], data["body"]
        ):
            system = systems.get(persona_id)
            if system is None:
                system = systems[persona_id] = system_message(persona_id, engaged.task, options.system_templates)
            example = build_example(engaged.task, system, original_input, hook, body)
            error = format_error(example)
            if error:
                dropped[f"invalid_format:{error}"] += 1
                continue
            line = serialize(example)
            exact_tokens = None
            if len(line) > options.max_tokens_per_example:
                exact_tokens = count_tokens(example["messages"])
                if exact_tokens > options.max_tokens_per_example:
                    dropped["over_token_limit"] += 1
                    continue
            if is_validation(post_id, options.validation_share):
                validation.write(line)
                continue
            training.write(line)
            tokens.add_bytes(len(line))
            if sample_share >= 1.0 or is_token_sample(post_id, sample_share):
                tokens.add_sample(len(line), exact_tokens or count_tokens(example["messages"]))
            if len(preview) < PREVIEW_ROWS:
                preview.append({"post_id": post_id, "user": example["messages"][1]["content"],
                                "assistant": example["messages"][2]["content"]})  # fmt: skip

    training_digest = training.close()
    validation_digest = validation.close()
    validation_path: Path | None = validation.path
    validation_examples = validation.lines
    if validation.lines < options.min_validation_examples:
        # Too few for a meaningful validation loss: fold them into training instead.
        training_digest = _append(training.path, validation.path)
        validation.path.unlink()
        validation_path, validation_digest, validation_examples = None, None, 0
        tokens = _recount_tokens(training.path)

    billed = tokens.estimated_total * options.n_epochs
    return TrainingDataset(
        task=engaged.task,
        training_path=str(training.path),
        validation_path=str(validation_path) if validation_path else None,
        training_examples=training.lines + (validation.lines if validation_path is None else 0),
        validation_examples=validation_examples,
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


def _append(target: Path, source: Path) -> bytes:
    with open(target, "ab") as out, open(source, "rb") as extra:
        out.write(extra.read())
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _recount_tokens(path: Path) -> TokenStats:
    """Exact counts for a file small enough to have no validation split."""
    stats = TokenStats()
    with open(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\n")
            stats.add_bytes(len(line))
            stats.add_sample(len(line), count_tokens(json.loads(line)["messages"]))
    return stats
