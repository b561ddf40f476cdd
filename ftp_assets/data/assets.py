"""``engaged_posts`` and ``training_jsonl``: thin assets over :mod:`ftp_assets.steps.data_path`."""

from dataclasses import replace
from datetime import timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from ftp_assets.adapters.posts_db import DEFAULT_WINDOW_DAYS, PostsDatabaseError, SelectionRule, Window
from ftp_assets.metadata import counts_table, preview_table
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import DatasetStorage, MetricsPublisher, PostsDatabaseResource
from ftp_assets.run_context import configured_instant
from ftp_assets.steps.data_path import (
    DatasetOptions,
    EngagedPosts,
    TrainingDataset,
    build_training_files,
    collect_engaged_posts,
)
from ftp_assets.steps.loop_metrics import selection_samples


class EngagedPostsConfig(Config):
    window_end: str | None = Field(
        default=None,
        description="End of the window (ISO-8601, UTC if no offset). The schedule sets its tick "
        "time; a manual run without it uses the time the run was created, so a retry reads the same rows.",
    )
    window_days: int = Field(default=DEFAULT_WINDOW_DAYS, description="Length of the window in days.")
    engagement_threshold: float = Field(default=0.06, description="Minimum engagements / impressions.")
    min_impressions: int = Field(default=100, description="Posts with fewer impressions are left out.")
    max_text_chars: int = Field(default=2_000, description="Longer texts are rejected as over-long.")
    threads: int | None = Field(
        default=None,
        description="Threads that clean batches side by side (Arrow's kernels release the GIL): "
        "default one per core, up to 4. The result does not depend on it.",
    )


def _check_config(config: EngagedPostsConfig) -> None:
    if not 0 < config.engagement_threshold <= 1:
        raise Failure(f"engagement_threshold must be in (0, 1], got {config.engagement_threshold}.")
    if config.min_impressions < 1:
        raise Failure(f"min_impressions must be at least 1, got {config.min_impressions}.")
    if config.window_days < 1:
        raise Failure(f"window_days must be at least 1, got {config.window_days}.")


@asset(
    partitions_def=task_partitions,
    group_name="data",
    kinds={"sql", "parquet"},
    description="The window's posts whose engagement rate clears the bar, cleaned for the task "
    "(each rejection and repair counted), stored as Parquet.",
)
def engaged_posts(
    context: AssetExecutionContext,
    config: EngagedPostsConfig,
    posts_db: PostsDatabaseResource,
    dataset_storage: DatasetStorage,
    metrics: MetricsPublisher,
) -> Output[EngagedPosts]:
    _check_config(config)
    task = context.partition_key
    end = configured_instant(config.window_end, context)
    window = Window(start=end - timedelta(days=config.window_days), end=end)
    rule = SelectionRule(threshold=config.engagement_threshold, min_impressions=config.min_impressions)
    try:
        db = posts_db.open()
    except PostsDatabaseError as error:
        raise Failure(str(error)) from None
    folder = dataset_storage.folder(task, context.run.run_id)
    result = collect_engaged_posts(
        db,
        task,
        window,
        rule,
        folder / "engaged_posts.parquet",
        max_text_chars=config.max_text_chars,
        threads=config.threads,
    )
    if result.rows == 0:
        raise Failure(
            f"No usable {task} post in [{window.start.isoformat()}, {window.end.isoformat()}) reaches an "
            f"engagement rate of {rule.threshold} with at least {rule.min_impressions} impressions "
            f"({result.funnel['in_window']} posts in the window)."
        )
    result = replace(result, shared_folder=dataset_storage.publish(folder, result.path))
    metrics.publish(context.log, "selection", task, lambda: selection_samples(result))
    return Output(
        result,
        metadata={
            "rows": result.rows,
            "window_start": result.window_start.isoformat(),
            "window_end": result.window_end.isoformat(),
            "engagement_threshold": rule.threshold,
            "min_impressions": rule.min_impressions,
            "posts_in_window": result.funnel["in_window"],
            "selection_funnel": counts_table(result.funnel),
            "rejected": counts_table(result.rejected),
            "rejected_total": sum(result.rejected.values()),
            "repairs": counts_table(result.repairs, ("repair", "count")),
            "path": MetadataValue.path(result.path),
            **({"shared_folder": MetadataValue.path(result.shared_folder)} if result.shared_folder else {}),
            "preview": preview_table(
                [{k: r[k] for k in ("id", "persona_id", "engagement_rate", "hook", "body")} for r in result.preview]
            ),
        },
    )


class TrainingJsonlConfig(Config):
    system_templates: dict[str, str] = Field(
        default_factory=dict,
        description="System message per persona id (key 'default' for the rest); placeholders "
        "{persona}, {instruction}, {task}.",
    )
    max_tokens_per_example: int = 4_096
    validation_share: float = 0.10
    min_validation_examples: int = Field(default=10, description="Fewer go into training instead.")
    n_epochs: int = Field(default=3, description="Epochs assumed for the billed-token estimate.")
    usd_per_million_training_tokens: float = Field(default=3.00, description="Provider's training price.")
    threads: int | None = Field(default=None, description="As for engaged_posts.")


@asset(
    partitions_def=task_partitions,
    group_name="data",
    kinds={"openai", "jsonl"},
    description="OpenAI chat fine-tuning JSONL (training and validation) for the task, every line "
    "checked and its tokens counted, with the dataset's content hash.",
)
def training_jsonl(
    context: AssetExecutionContext,
    config: TrainingJsonlConfig,
    engaged_posts: EngagedPosts,
    dataset_storage: DatasetStorage,
) -> Output[TrainingDataset]:
    if not 0 <= config.validation_share < 1:
        raise Failure(f"validation_share must be in [0, 1), got {config.validation_share}.")
    options = DatasetOptions(**config.model_dump(exclude={"threads"}))
    folder = dataset_storage.folder(context.partition_key, context.run.run_id)
    # A retry in another pod fetches the Parquet file that engaged_posts left in shared storage.
    engaged = replace(engaged_posts, path=dataset_storage.local_file(engaged_posts.path, engaged_posts.shared_folder))
    dataset = build_training_files(engaged, folder, options, threads=config.threads)
    dataset = replace(
        dataset, shared_folder=dataset_storage.publish(folder, dataset.training_path, dataset.validation_path)
    )
    token_note = (
        "exact"
        if dataset.tokens_exact
        else f"estimated from a sample, relative standard error {dataset.tokens_relative_standard_error:.2%}"
    )
    metadata: dict[str, Any] = {
        "dataset_hash": dataset.dataset_hash,
        "training_examples": dataset.training_examples,
        "validation_examples": dataset.validation_examples,
        "dropped": counts_table(dataset.dropped),
        "training_path": MetadataValue.path(dataset.training_path),
        "training_tokens": round(dataset.training_tokens),
        "token_counts": token_note,
        "mean_tokens_per_example": round(dataset.mean_tokens_per_example, 1),
        "max_tokens_per_example": dataset.max_tokens_per_example,
        "n_epochs_assumed": dataset.n_epochs,
        "estimated_billed_training_tokens": round(dataset.billed_training_tokens),
        "estimated_cost_usd": round(dataset.estimated_cost_usd, 4),
        "preview": preview_table(dataset.preview),
    }
    if dataset.validation_path:
        metadata["validation_path"] = MetadataValue.path(dataset.validation_path)
    if dataset.shared_folder:
        metadata["shared_folder"] = MetadataValue.path(dataset.shared_folder)
    return Output(dataset, metadata=metadata)
