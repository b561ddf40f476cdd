"""One training job: inputs to a LoRA adapter, its metrics and its manifest at the destination.

The steps, in order (docs/trainer.md):

1. a destination that already holds this job's ``manifest.json`` is finished: nothing to do;
2. the work dir is claimed for the job (``job.json``), the config and the JSONL files are read
   and converted (bad inputs are :class:`InputError`, before anything heavy is loaded);
3. the base model is loaded from a local folder or the local Hugging Face cache, never
   downloaded (``--build-tiny-base`` first builds a tiny base at a missing path);
4. TRL's ``SFTTrainer`` trains a PEFT LoRA adapter with completion-only loss, resuming from the
   work dir's last readable checkpoint;
5. the adapter, ``metrics.json`` and, last, ``manifest.json`` are copied to the destination.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ftp_trainer.config import TrainerConfig
from ftp_trainer.data import ChatDataset, message_texts, parse_jsonl, read_bytes
from ftp_trainer.errors import InputError, JobBusy

MANIFEST = "manifest.json"
METRICS = "metrics.json"
ADAPTER = "adapter"
JOB_FILE = "job.json"
LOCK_FILE = ".lock"
MANIFEST_FORMAT = 1
LIBRARIES = ("torch", "transformers", "peft", "trl", "tokenizers", "datasets")


@dataclass(frozen=True)
class TrainJob:
    training_file: str
    base_model: str
    output_url: str
    work_dir: str
    job_id: str
    dataset_hash: str
    config: TrainerConfig
    validation_file: str | None = None
    build_tiny_base: bool = False


@dataclass
class TrainResult:
    reused: bool
    metrics: dict[str, Any]
    manifest: dict[str, Any]


# --- the destination -------------------------------------------------------------------------


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def read_manifest(output_url: str) -> dict[str, Any] | None:
    """The destination's manifest when it is readable JSON, else None."""
    fs, root = fsspec.core.url_to_fs(output_url)
    try:
        with fs.open(_join(root, MANIFEST), "rb") as handle:
            manifest = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _read_json(fs: Any, path: str) -> dict[str, Any]:
    try:
        with fs.open(path, "rb") as handle:
            value = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def publish(staging: Path, output_url: str) -> None:
    """Copy the staged folder to the destination, ``manifest.json`` last (the completion marker)."""
    fs, root = fsspec.core.url_to_fs(output_url)
    if fs.exists(_join(root, MANIFEST)):
        raise InputError(f"The destination {output_url} already holds a finished job: it is never replaced.")
    if fs.exists(root):  # what a crashed earlier attempt left: no manifest, so not finished
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / MANIFEST)
    for path in files:  # adapter/ first, then metrics.json
        target = _join(root, path.relative_to(staging).as_posix())
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
    manifest = staging / MANIFEST
    if isinstance(fs, LocalFileSystem):
        partial = _join(root, f".{MANIFEST}.partial")
        fs.put_file(str(manifest), partial)
        os.replace(partial, _join(root, MANIFEST))  # atomic on a local disk
    else:
        fs.put_file(str(manifest), _join(root, MANIFEST))  # an object PUT is atomic


# --- the work dir ----------------------------------------------------------------------------


def claim_work_dir(work_dir: Path, job_id: str) -> None:
    """Create the work dir for ``job_id``, or accept it when it already belongs to that job."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file = work_dir / JOB_FILE
    if job_file.exists():
        try:
            owner = json.loads(job_file.read_text(encoding="utf-8")).get("job_id")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != job_id:
            raise InputError(f"The work dir {work_dir} belongs to job {owner!r}, not to job {job_id!r}.")
        return
    job_file.write_text(json.dumps({"job_id": job_id}) + "\n", encoding="utf-8")


def readable_checkpoint(checkpoint: Path) -> str | None:
    """Why the checkpoint cannot be resumed from, or None when it can."""
    import torch
    from safetensors import safe_open

    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state.get("global_step"), int):
            return "its trainer_state.json has no global_step"
        with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is no mapping
                weights.get_tensor(key)
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.load(checkpoint / name, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to read means: start clean
        return f"{type(error).__name__}: {error}"
    return None


def checkpoints_newest_first(checkpoints: Path) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    numbered = [(int(p.name.split("-")[1]), p) for p in found if p.name.split("-")[1].isdigit()]
    return [path for _, path in sorted(numbered, reverse=True)]


def resume_point(checkpoints: Path, reporter: Any) -> Path | None:
    """The newest readable checkpoint; unreadable ones (a crash while writing one) are logged and removed."""
    for checkpoint in checkpoints_newest_first(checkpoints):
        problem = readable_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        reporter.info(f"checkpoint {checkpoint.name} is unreadable ({problem}); removing it")
        shutil.rmtree(checkpoint)
    return None


# --- the base model --------------------------------------------------------------------------


def base_revision(config: Any, folder: Path | None) -> str:
    """The hub commit of the base when known, else a sha256 over its config and weight files."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    if folder is None:
        return "unknown"
    if folder.parent.name == "snapshots":  # the hub cache's layout: snapshots/<commit>/
        return folder.name
    digest = hashlib.sha256()
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    )
    for name in names:
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_base(job: TrainJob, training_bytes: bytes, reporter: Any) -> tuple[str, Path | None]:
    """What to pass to ``from_pretrained`` and the local folder, if the base is one."""
    path = Path(job.base_model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), path
    if job.build_tiny_base:
        from ftp_trainer.tiny_base import build_tiny_base, is_complete

        if not is_complete(path):
            reporter.info(f"building the tiny base at {path} from the training file's texts")
        built = build_tiny_base(message_texts(training_bytes), path, seed=job.config.seed)
        return str(built), built
    from transformers.utils import cached_file

    try:
        cached = cached_file(
            job.base_model,
            "config.json",
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):  # not in the cache, or not a repo id at all (a path that does not exist)
        cached = None
    if not isinstance(cached, str):
        raise InputError(
            f"The base model {job.base_model} is neither a local model folder nor in the local Hugging Face "
            "cache, and nothing is downloaded at run time."
        )
    return job.base_model, Path(cached).parent  # the snapshot folder, named by its commit


# --- training --------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = metadata.version(name)
    return versions


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_warning()


def build_trainer(
    job: TrainJob,
    base: str,
    train_set: ChatDataset,
    validation_set: ChatDataset | None,
    reporter: Any,
    planned_steps: int,
) -> Any:
    """The ``SFTTrainer`` of the job, with a fresh LoRA adapter on the base (seeded)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.trainer_utils import enable_full_determinism, set_seed
    from trl import SFTConfig, SFTTrainer

    from ftp_trainer.progress import ProgressCallback

    # The libraries' own calls of names they deprecated: nothing this program can change.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
    config = job.config
    cuda = torch.cuda.is_available()
    if config.threads:
        torch.set_num_threads(config.threads)
    # Deterministic kernels and seeded RNGs before the adapter is initialised.
    if cuda:
        # As enable_full_determinism, without its CUDA_LAUNCH_BLOCKING=1 (synchronous kernel
        # launches: much slower, and no more reproducible); a kernel without a deterministic
        # version warns rather than fails.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        set_seed(config.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        enable_full_determinism(config.seed)
    # Filling every new tensor with NaN (a debugging aid of deterministic mode) makes no result more
    # reproducible and nearly tripled the tiny model's training time on a CPU (docs/trainer.md).
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.eos_token is None:
        raise InputError(f"The base model {job.base_model} has a tokenizer without an end-of-sequence token.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # never a new token: the vocabulary stays the base's
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=dtype)

    peft_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    has_validation = validation_set is not None and bool(validation_set.examples)
    if not has_validation:
        eval_strategy = "no"
    elif config.eval_steps:
        eval_strategy = "steps"
    else:
        eval_strategy = "epoch"
    args = SFTConfig(
        output_dir=str(Path(job.work_dir) / "checkpoints"),
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_seq_length,
        seed=config.seed,
        data_seed=config.seed,
        warmup_steps=config.warmup_ratio,  # below 1: a ratio of the training steps
        lr_scheduler_type=config.lr_scheduler,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps or None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        completion_only_loss=True,
        use_cpu=not cuda,
        bf16=dtype == torch.bfloat16,
        fp16=False,
        activation_checkpointing=cuda,  # formerly gradient_checkpointing: memory for time, on a GPU only
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_set.examples),
        eval_dataset=Dataset.from_list(validation_set.examples) if has_validation and validation_set else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[ProgressCallback(reporter, planned_steps)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints the logs to stdout, which is Pipes'
    return trainer


def _entries(log_history: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [
        {"step": int(entry["step"]), "epoch": float(entry.get("epoch") or 0.0), "loss": float(entry[key])}
        for entry in log_history
        if key in entry
    ]


def run(job: TrainJob, reporter: Any) -> TrainResult:
    """Run the job end to end (see the module docstring)."""
    finished = _finished(job, reporter)
    if finished is not None:
        return finished
    work_dir = Path(job.work_dir)
    claim_work_dir(work_dir, job.job_id)
    with _exclusive(work_dir, job.job_id):
        # Another process may have finished the job while this one waited for nothing: look again.
        return _finished(job, reporter) or _train(job, reporter, work_dir)


def _finished(job: TrainJob, reporter: Any) -> TrainResult | None:
    existing = read_manifest(job.output_url)
    if existing is None:
        return None
    if existing.get("job_id") != job.job_id:
        raise InputError(
            f"The destination {job.output_url} already holds the finished job {existing.get('job_id')!r}, "
            f"not job {job.job_id!r}."
        )
    reporter.info(f"job {job.job_id} is already trained at {job.output_url}; nothing to do")
    fs, root = fsspec.core.url_to_fs(job.output_url)
    return TrainResult(reused=True, metrics=_read_json(fs, _join(root, METRICS)), manifest=existing)


@contextmanager
def _exclusive(work_dir: Path, job_id: str) -> Iterator[None]:
    """One process at a time trains a job: a second one would share its checkpoints and replace
    its output. The lock is the kernel's (``flock``), so a crashed holder releases it."""
    with open(work_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy(
                f"Job {job_id} is being trained by another process (its work dir {work_dir} is locked): "
                "wait for it to finish, then run again; the finished adapter is reused."
            ) from None
        yield


def _train(job: TrainJob, reporter: Any, work_dir: Path) -> TrainResult:
    training_bytes = read_bytes(job.training_file)
    train_set = parse_jsonl(training_bytes, job.training_file)
    if not train_set.examples:
        raise InputError(f"The training file {job.training_file} has no example to train on.")
    validation_set = None
    if job.validation_file is not None:
        validation_set = parse_jsonl(read_bytes(job.validation_file), job.validation_file)
    base, base_folder = resolve_base(job, training_bytes, reporter)

    _quiet_libraries()
    import torch

    config = job.config
    steps_per_epoch = math.ceil(
        math.ceil(len(train_set.examples) / config.batch_size) / config.gradient_accumulation_steps
    )
    planned_steps = steps_per_epoch * config.epochs
    trainer = build_trainer(job, base, train_set, validation_set, reporter, planned_steps)
    base_vocab_size = int(trainer.model.get_input_embeddings().num_embeddings)

    resume = resume_point(work_dir / "checkpoints", reporter)

    initial_eval_loss = None
    if validation_set is not None and validation_set.examples:
        initial_eval_loss = float(trainer.evaluate()["eval_loss"])  # the progress callback reports it as step 0
    # The duration is the training's: its steps, evaluations and checkpoints, not the loading or
    # the evaluation before training.
    started = time.monotonic()
    if resume is not None:
        reporter.info(f"resuming from {resume.name}")
    else:
        reporter.info("starting from the base with a fresh adapter")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    duration = time.monotonic() - started
    history = trainer.state.log_history
    eval_loss = _entries(history, "eval_loss")
    if initial_eval_loss is not None and (not eval_loss or eval_loss[-1]["step"] != trainer.state.global_step):
        trainer.evaluate()  # eval_steps did not fall on the last step: the final loss is still wanted
        eval_loss = _entries(trainer.state.log_history, "eval_loss")
    train_loss = _entries(history, "loss")

    tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    trained_tokens = tokens_per_epoch * config.epochs
    examples_seen = len(trainer.train_dataset) * config.epochs
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "initial_eval_loss": initial_eval_loss,
        "final_eval_loss": eval_loss[-1]["loss"] if eval_loss else None,
        "final_train_loss": train_loss[-1]["loss"] if train_loss else float(output.training_loss),
        "trained_tokens": trained_tokens,
        "training_examples": len(train_set.examples),
        "validation_examples": len(validation_set.examples) if validation_set else 0,
        "skipped_examples": train_set.skipped + (validation_set.skipped if validation_set else 0),
        "duration_s": round(duration, 3),
        "examples_per_second": examples_seen / duration if duration > 0 else 0.0,
        "tokens_per_second": trained_tokens / duration if duration > 0 else 0.0,
    }

    staging = work_dir / "output"
    shutil.rmtree(staging, ignore_errors=True)
    adapter_dir = staging / ADAPTER
    trainer.model.save_pretrained(str(adapter_dir))
    trainer.processing_class.save_pretrained(str(adapter_dir))
    (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    manifest = {
        "format": MANIFEST_FORMAT,
        "job_id": job.job_id,
        "base_model": job.base_model,
        "base_model_revision": base_revision(trainer.model.get_base_model().config, base_folder),
        "hyperparameters": config.to_dict(),
        "dataset_hash": job.dataset_hash,
        "training_file_sha256": train_set.sha256,
        "validation_file_sha256": validation_set.sha256 if validation_set else None,
        "library_versions": library_versions(),
        "adapter_sha256": _sha256_file(adapter_dir / "adapter_model.safetensors"),
        "lora_rank": config.lora_rank,
        "base_vocab_size": base_vocab_size,
        "device": device,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    publish(staging, job.output_url)
    reporter.info(f"adapter written to {job.output_url}")
    # Finished: the checkpoints (optimizer states, several times the adapter) are no longer needed.
    shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(reused=False, metrics=metrics, manifest=manifest)
