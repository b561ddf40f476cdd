"""Shared fixtures: a tiny base, two adapters trained on it by ftp_trainer, laid out as the pipeline does.

``<adapters root>/<task>/<job_id>/`` with the trainer's own ``manifest.json``, ``metrics.json`` and
``adapter/``; :func:`clone_adapter` copies a trained adapter under a new job id (its manifest's
job id rewritten, nothing else) so that a test can damage or retire its own copy.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftp_trainer.config import TrainerConfig
from ftp_trainer.progress import Reporter
from ftp_trainer.synthetic import chat_examples, write_jsonl
from ftp_trainer.tiny_base import build_tiny_base
from ftp_trainer.train import TrainJob, run

BASE_NAME = "tiny-base"
# A few seconds in all on two cores; a high learning rate so that the adapter visibly changes the replies.
ADAPTER_CONFIG = TrainerConfig(
    epochs=1, batch_size=8, learning_rate=1e-2, lora_rank=4, lora_alpha=16, logging_steps=5, threads=1, seed=7
)


@dataclass(frozen=True)
class Adapters:
    base: Path
    root: Path
    hook: str  # served model names
    body: str


def served_name(task: str, job_id: str) -> str:
    return f"threads-{task}-{job_id}"


def new_job_id() -> str:
    return f"sft-{uuid.uuid4().hex[:24]}"


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    work = tmp_path_factory.mktemp("serving")
    texts = [m["content"] for example in chat_examples(150, seed=99) for m in example["messages"]]
    base = build_tiny_base(texts, work / "base", seed=0, pretrain_steps=60, threads=2)
    root = work / "adapters"
    names = {}
    for task, seed in (("hook", 1), ("body", 2)):
        job_id = new_job_id()
        training = write_jsonl(work / f"{task}.jsonl", 80, seed=seed, dialect="house")
        job = TrainJob(
            training_file=str(training),
            base_model=str(base),
            output_url=str(root / task / job_id),
            work_dir=str(work / "work" / task),
            job_id=job_id,
            dataset_hash=f"dataset-{task}",
            config=ADAPTER_CONFIG,
        )
        run(job, Reporter())
        names[task] = served_name(task, job_id)
    return Adapters(base=base, root=root, hook=names["hook"], body=names["body"])


def folder_of(root: Path, name: str) -> Path:
    task, job_id = name.removeprefix("threads-").split("-", 1)
    return root / task / job_id


def clone_adapter(adapters: Adapters, source: str, root: Path | None = None, task: str = "hook") -> str:
    """A copy of ``source``'s folder under a new job id (in ``root``, by default the shared root)."""
    job_id = new_job_id()
    target = (root or adapters.root) / task / job_id
    shutil.copytree(folder_of(adapters.root, source), target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "job_id": job_id}))
    return served_name(task, job_id)


def retire(root: Path, name: str, reason: str = "replaced by a better adapter") -> None:
    record = {"reason": reason, "retired_at": "2026-11-27T12:00:00+00:00"}
    (folder_of(root, name) / "retired.json").write_text(json.dumps(record))


def truncate_weights(root: Path, name: str) -> None:
    weights = folder_of(root, name) / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
