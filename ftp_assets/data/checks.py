"""Checks on ``training_jsonl``: the blocking ones stop a bad file before any paid training."""

from functools import partial
from pathlib import Path

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    Config,
    MetadataValue,
    asset_check,
)

from ftp_assets.data.assets import training_jsonl
from ftp_assets.domain.checks import duplicate_rate, invalid_lines
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import DatasetStorage, MetricsPublisher
from ftp_assets.steps.data_path import TrainingDataset
from ftp_assets.steps.loop_metrics import dataset_samples


def _local_files(dataset: TrainingDataset, storage: DatasetStorage) -> list[Path]:
    """The training and validation files, fetched from shared storage when checked in another pod."""
    paths = [p for p in (dataset.training_path, dataset.validation_path) if p]
    return [Path(storage.local_file(p, dataset.shared_folder)) for p in paths]


class EnoughExamplesConfig(Config):
    min_examples: int = 100


@asset_check(
    asset=training_jsonl,
    blocking=True,
    partitions_def=task_partitions,
    description="Enough examples to fine-tune on; below it no training starts.",
)
def enough_examples(
    context: AssetCheckExecutionContext,
    config: EnoughExamplesConfig,
    training_jsonl: TrainingDataset,
    metrics: MetricsPublisher,
) -> AssetCheckResult:
    passed = training_jsonl.examples >= config.min_examples
    # The dataset's metrics go with the verdict: the alert on short training data reads both.
    samples = partial(dataset_samples, training_jsonl, minimum_examples=config.min_examples, sufficient=passed)
    metrics.publish(context.log, "dataset", training_jsonl.task, samples)
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={"examples": training_jsonl.examples, "min_examples": config.min_examples},
    )


@asset_check(
    asset=training_jsonl,
    blocking=True,
    partitions_def=task_partitions,
    description="Every line of both files follows OpenAI's chat fine-tuning format.",
)
def valid_format(training_jsonl: TrainingDataset, dataset_storage: DatasetStorage) -> AssetCheckResult:
    invalid = {path.name: invalid_lines(path) for path in _local_files(training_jsonl, dataset_storage)}
    return AssetCheckResult(
        passed=not any(invalid.values()),
        severity=AssetCheckSeverity.ERROR,
        metadata={f"invalid_lines_{name.split('.')[0]}": len(found) for name, found in invalid.items()}
        | {"first_errors": MetadataValue.json({n: found[:5] for n, found in invalid.items()})},
    )


class DuplicateRateConfig(Config):
    max_duplicate_rate: float = 0.01


@asset_check(
    asset=training_jsonl,
    partitions_def=task_partitions,
    description="Share of examples whose assistant text repeats another's (normalized).",
)
def low_duplicate_rate(
    config: DuplicateRateConfig, training_jsonl: TrainingDataset, dataset_storage: DatasetStorage
) -> AssetCheckResult:
    rate = duplicate_rate(_local_files(training_jsonl, dataset_storage))
    return AssetCheckResult(
        passed=rate <= config.max_duplicate_rate,
        severity=AssetCheckSeverity.WARN,
        metadata={"duplicate_rate": rate, "max_duplicate_rate": config.max_duplicate_rate},
    )
