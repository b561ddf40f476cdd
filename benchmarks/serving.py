"""Benchmark of the CPU adapter server (``ftp_serving``): sequential versus concurrent requests.

    .venv/bin/python benchmarks/serving.py [--requests 400] [--concurrency 16] [--max-tokens 40] [--threads 2]

Builds the tiny base (ftp_trainer.tiny_base) and trains one LoRA adapter on it with ftp_trainer,
laid out as the pipeline does, then serves both with ``ftp_serving.server.running_server`` and
sends the same chat completions through the official ``openai`` client, half to the base and
half to the adapter, each of exactly ``--max-tokens`` tokens (vLLM's ``ignore_eos``):

* baseline: one request at a time (every request decoded alone);
* concurrent: ``--concurrency`` client threads (the server micro-batches what arrives together).

Prints requests/s and generated tokens/s of both and the ratio concurrent/sequential.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def build(root: Path, threads: int) -> tuple[Path, str]:
    """The tiny base and one trained adapter under ``root/adapters``; the base and the adapter's name."""
    from ftp_trainer.config import TrainerConfig
    from ftp_trainer.progress import Reporter
    from ftp_trainer.synthetic import chat_examples, write_jsonl
    from ftp_trainer.tiny_base import build_tiny_base
    from ftp_trainer.train import TrainJob, run

    texts = [m["content"] for example in chat_examples(1000, seed=99) for m in example["messages"]]
    base = build_tiny_base(texts, root / "tiny-base", seed=0, threads=threads)
    job_id = f"sft-{uuid.uuid4().hex[:24]}"
    training = write_jsonl(root / "train.jsonl", 400, seed=1, dialect="house")
    config = TrainerConfig(epochs=1, batch_size=8, learning_rate=1e-3, lora_rank=16, threads=threads)
    job = TrainJob(
        training_file=str(training),
        base_model=str(base),
        output_url=str(root / "adapters" / "hook" / job_id),
        work_dir=str(root / "work"),
        job_id=job_id,
        dataset_hash="bench",
        config=config,
    )
    run(job, Reporter())
    return base, f"threads-hook-{job_id}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import openai
    import transformers

    from ftp_serving.server import running_server

    transformers.utils.logging.disable_progress_bar()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, torch threads {args.threads}")
    root = Path(tempfile.mkdtemp(prefix="ftp-serving-bench-"))
    started = time.monotonic()
    base, adapter = build(root, args.threads)
    print(f"tiny base and adapter built in {time.monotonic() - started:.1f} s")

    with running_server(base, "tiny-base", root / "adapters", threads=args.threads) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)

        def complete(index: int) -> int:
            completion = client.chat.completions.create(
                model=adapter if index % 2 else "tiny-base",
                messages=[{"role": "user", "content": f"Write post number {index} about coffee"}],
                max_tokens=args.max_tokens,
                temperature=0.8,
                seed=index,
                extra_body={"ignore_eos": True},
            )
            assert completion.usage is not None
            return completion.usage.completion_tokens

        for index in range(8):  # warm-up: the adapter loaded, the first kernels run
            complete(index)
        results = {}
        started = time.monotonic()
        tokens = sum(complete(index) for index in range(args.requests))
        results["sequential"] = (time.monotonic() - started, tokens)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            tokens = sum(pool.map(complete, range(args.requests)))
        results[f"concurrent ({args.concurrency})"] = (time.monotonic() - started, tokens)

    print(f"\n{args.requests} chat completions of {args.max_tokens} tokens, half base, half adapter")
    print(f"{'run':<16} {'seconds':>8} {'requests/s':>11} {'tokens/s':>9}")
    for run_name, (seconds, tokens) in results.items():
        print(f"{run_name:<16} {seconds:>8.1f} {args.requests / seconds:>11.1f} {tokens / seconds:>9.0f}")
    (sequential, _), (concurrent, _) = results.values()
    print(f"\nconcurrent/sequential: {sequential / concurrent:.2f}x requests/s")
    print(f"files under {root}")


if __name__ == "__main__":
    main()
