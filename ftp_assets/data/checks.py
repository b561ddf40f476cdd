"""Checks on ``training_jsonl``: the blocking ones stop a bad file before any paid training."""

from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, Config, MetadataValue, asset_check

from ftp_assets.data.assets import training_jsonl
from ftp_assets.domain.checks import duplicate_rate, invalid_lines
from ftp_assets.partitions import task_partitions
from ftp_assets.steps.data_path import TrainingDataset


class EnoughExamplesConfig(Config):
    min_examples: int = 100


@asset_check(
    asset=training_jsonl,
    blocking=True,
    partitions_def=task_partitions,
    description="Enough examples to fine-tune on; below it no training starts.",
)
def enough_examples(config: EnoughExamplesConfig, training_jsonl: TrainingDataset) -> AssetCheckResult:
    return AssetCheckResult(
        passed=training_jsonl.examples >= config.min_examples,
        severity=AssetCheckSeverity.ERROR,
        metadata={"examples": training_jsonl.examples, "min_examples": config.min_examples},
    )


@asset_check(
    asset=training_jsonl,
    blocking=True,
    partitions_def=task_partitions,
    description="Every line of both files follows OpenAI's chat fine-tuning format.",
)
def valid_format(training_jsonl: TrainingDataset) -> AssetCheckResult:
    paths = [p for p in (training_jsonl.training_path, training_jsonl.validation_path) if p]
    invalid = {Path(p).name: invalid_lines(Path(p)) for p in paths}
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
def low_duplicate_rate(config: DuplicateRateConfig, training_jsonl: TrainingDataset) -> AssetCheckResult:
    paths = [Path(p) for p in (training_jsonl.training_path, training_jsonl.validation_path) if p]
    rate = duplicate_rate(paths)
    return AssetCheckResult(
        passed=rate <= config.max_duplicate_rate,
        severity=AssetCheckSeverity.WARN,
        metadata={"duplicate_rate": rate, "max_duplicate_rate": config.max_duplicate_rate},
    )
