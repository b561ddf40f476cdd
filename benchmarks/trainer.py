"""Benchmark of the self-hosted LoRA trainer (``ftp-train``) on this machine's CPU, with the tiny base.

    .venv/bin/python benchmarks/trainer.py [--sizes 1000 10000] [--threads 1] [--batch-size 8]

Builds the tiny base (ftp_trainer.tiny_base) from plain-dialect synthetic posts, then, for 1 k and
10 k training examples of the house dialect (ftp_trainer.synthetic), 1 epoch, LoRA rank 16, each
in a child process of its own (so its peak RSS is its own, from ``os.wait4``):

* trainer: ``python -m ftp_trainer train`` end to end; throughput and losses from its metrics.json
  (its duration includes the evaluation after the epoch and the checkpoints every 200 steps);
* baseline: a plain PyTorch loop on the same tiny base with the same PEFT LoRA adapter, the same
  tokenized examples (chat template, prompt tokens masked) in batches of the same size, AdamW and
  the same schedule; no TRL, no Trainer. Timed over the training loop alone.

Prints a table and the ratio trainer/baseline of the throughput. Figures: docs/trainer.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VALIDATION_EXAMPLES = 200


def _rss_mib(ru_maxrss_kib: int) -> float:
    return ru_maxrss_kib / 1024


def run_child(argv: list[str]) -> tuple[int, float, float, str]:
    """Run a child process; its exit status, wall seconds, peak RSS (MiB) and stderr tail."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.monotonic() - started, _rss_mib(usage.ru_maxrss), stderr[-2000:]


def baseline(base: str, train_file: str, validation_file: str, batch_size: int, threads: int, out: str) -> None:
    """The plain PyTorch loop (runs in a child process); writes its figures as JSON to ``out``."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from ftp_trainer.data import read_dataset

    torch.set_num_threads(threads)
    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)

    def encode(path: str) -> list[tuple[list[int], list[int]]]:
        rows = []
        for example in read_dataset(path).examples:
            prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            rows.append((ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :]))
        return rows

    def batches(rows: list[tuple[list[int], list[int]]]) -> list[dict[str, torch.Tensor]]:
        result = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            result.append(
                {
                    "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in chunk]),
                    "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk]),
                    "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in chunk]),
                }
            )
        return result

    train_rows = encode(train_file)
    random.Random(42).shuffle(train_rows)
    train_batches, validation_batches = batches(train_rows), batches(encode(validation_file))
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
    )

    def validation_loss() -> float:
        model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in validation_batches:
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * n
                tokens += n
        model.train()
        return total / tokens

    before = validation_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * len(train_batches)), len(train_batches))
    started = time.monotonic()
    for batch in train_batches:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    duration = time.monotonic() - started
    after = validation_loss()
    trained_tokens = sum(int(b["attention_mask"].sum()) for b in train_batches)
    figures = {
        "examples_per_second": len(train_rows) / duration,
        "tokens_per_second": trained_tokens / duration,
        "initial_eval_loss": before,
        "final_eval_loss": after,
        "duration_s": duration,
        "trained_tokens": trained_tokens,
    }
    Path(out).write_text(json.dumps(figures), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline-child", nargs=4, metavar=("BASE", "TRAIN", "VALIDATION", "OUT"))
    args = parser.parse_args()
    if args.baseline_child:
        baseline(*args.baseline_child[:3], args.batch_size, args.threads, args.baseline_child[3])
        return

    import transformers

    from ftp_trainer.synthetic import chat_examples, write_jsonl
    from ftp_trainer.tiny_base import build_tiny_base

    transformers.utils.logging.disable_progress_bar()

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, torch threads {args.threads}, ", end="")
    print(f"batch size {args.batch_size}, 1 epoch, LoRA rank 16, all-linear")
    root = Path(tempfile.mkdtemp(prefix="ftp-trainer-bench-"))
    texts = [m["content"] for example in chat_examples(1000, seed=99) for m in example["messages"]]
    started = time.monotonic()
    base = build_tiny_base(texts, root / "tiny-base", seed=0)
    info = json.loads((base / "ftp_tiny_base.json").read_text())
    print(
        f"tiny base: {info['parameters']:,} parameters, vocab {info['tokenizer_vocab_size']}, "
        f"built in {time.monotonic() - started:.1f} s ({info['pretrain_steps']} pre-training steps)"
    )
    validation = write_jsonl(root / "validation.jsonl", VALIDATION_EXAMPLES, seed=2, dialect="house")
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        train = write_jsonl(root / f"train-{size}.jsonl", size, seed=1, dialect="house")
        config = {"epochs": 1, "batch_size": args.batch_size, "threads": args.threads, "logging_steps": 50}
        out = root / f"out-{size}"
        status, wall, rss, stderr = run_child(
            [
                sys.executable,
                "-m",
                "ftp_trainer",
                "train",
                "--training-file",
                str(train),
                "--validation-file",
                str(validation),
                "--base-model",
                str(base),
                "--output-url",
                str(out),
                "--work-dir",
                str(root / f"work-{size}"),
                "--job-id",
                f"bench-{size}",
                "--dataset-hash",
                "bench",
                "--config",
                json.dumps(config),
            ]
        )
        if status:
            sys.exit(f"the trainer failed on {size} examples:\n{stderr}")
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"size": size, "run": "trainer (TRL)", "wall": wall, "rss": rss, **metrics})
        figures_file = root / f"baseline-{size}.json"
        status, wall, rss, stderr = run_child(
            [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
                "--baseline-child",
                str(base),
                str(train),
                str(validation),
                str(figures_file),
            ]
        )
        if status:
            sys.exit(f"the baseline failed on {size} examples:\n{stderr}")
        rows.append(
            {"size": size, "run": "baseline (torch)", "wall": wall, "rss": rss, **json.loads(figures_file.read_text())}
        )

    header = f"{'examples':>8}  {'run':<17} {'ex/s':>7} {'tok/s':>8} {'train s':>8} {'wall s':>7} {'peak RSS':>9}"
    print(f"\n{header}  {'val loss before -> after':>25}")
    for row in rows:
        print(
            f"{row['size']:>8}  {row['run']:<17} {row['examples_per_second']:>7.1f} {row['tokens_per_second']:>8.0f} "
            f"{row['duration_s']:>8.1f} {row['wall']:>7.1f} {row['rss']:>6.0f} MiB"
            f"  {row['initial_eval_loss']:>10.4f} -> {row['final_eval_loss']:.4f}"
        )
    print()
    for size in args.sizes:
        ours, plain = (
            next(r for r in rows if r["size"] == size and r["run"] == run)
            for run in ("trainer (TRL)", "baseline (torch)")
        )
        tokens_ratio = ours["tokens_per_second"] / plain["tokens_per_second"]
        examples_ratio = ours["examples_per_second"] / plain["examples_per_second"]
        print(f"{size:>6} examples: trainer/baseline {tokens_ratio:.2f} (tokens/s), {examples_ratio:.2f} (examples/s)")
    print(f"\nfiles under {root}")


if __name__ == "__main__":
    main()
