"""Shared fixtures: synthetic chat files, a tiny base and one real training run (session-scoped)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftp_trainer.config import TrainerConfig
from ftp_trainer.progress import Reporter
from ftp_trainer.synthetic import chat_examples, write_jsonl
from ftp_trainer.tiny_base import build_tiny_base
from ftp_trainer.train import TrainJob, TrainResult, run

# Small enough for a few seconds a run on two CPU cores; a learning rate that shows learning in 50 steps.
TEST_CONFIG = {
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lora_rank": 8,
    "lora_alpha": 16,
    "logging_steps": 5,
    "threads": 1,
    "seed": 7,
}


@dataclass(frozen=True)
class Files:
    train: Path
    validation: Path


@dataclass(frozen=True)
class Trained:
    job: TrainJob
    result: TrainResult
    lines: list[str]
    output: Path


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("data")
    return Files(
        write_jsonl(folder / "train.jsonl", 200, seed=1, dialect="house"),
        write_jsonl(folder / "val.jsonl", 40, seed=2, dialect="house"),
    )


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base pre-trained briefly on the plain dialect; the training files are in the house dialect."""
    texts = [m["content"] for example in chat_examples(300, seed=99) for m in example["messages"]]
    return build_tiny_base(texts, tmp_path_factory.mktemp("bases") / "tiny", seed=0, pretrain_steps=120)


def make_job(files: Files, base: Path, root: Path, job_id: str = "job-1", **config: object) -> TrainJob:
    return TrainJob(
        training_file=str(files.train),
        validation_file=str(files.validation),
        base_model=str(base),
        output_url=str(root / "out"),
        work_dir=str(root / "work"),
        job_id=job_id,
        dataset_hash="dataset-hash-1",
        config=TrainerConfig(**{**TEST_CONFIG, **config}),  # type: ignore[arg-type]
    )


def train(job: TrainJob) -> Trained:
    reporter = Reporter()
    result = run(job, reporter)
    return Trained(job, result, reporter.lines, Path(job.output_url))


@pytest.fixture(scope="session")
def trained(files: Files, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train(make_job(files, tiny_base, tmp_path_factory.mktemp("run-a")))


def ftp_train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ftp_trainer", *args]


def train_args(job: TrainJob, *extra: str) -> list[str]:
    args = [
        "train",
        "--training-file",
        job.training_file,
        "--base-model",
        job.base_model,
        "--output-url",
        job.output_url,
        "--work-dir",
        job.work_dir,
        "--job-id",
        job.job_id,
        "--dataset-hash",
        job.dataset_hash,
        "--config",
        json.dumps(job.config.to_dict()),
    ]
    if job.validation_file:
        args += ["--validation-file", job.validation_file]
    return [*args, *extra]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path
