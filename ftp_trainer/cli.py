"""``ftp-train``: the trainer's command line (docs/trainer.md#the-command).

``ftp-train train ...`` trains one job; ``ftp-train build-tiny-base ...`` builds the tiny base.
A bad input exits with status 2 and one sentence on stderr; anything else that fails exits
non-zero with its traceback. stdout carries nothing but Dagster Pipes' messages.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ftp_trainer.config import load_config
from ftp_trainer.errors import InputError, JobBusy

EXIT_BAD_INPUT = 2
EXIT_BUSY = 75  # EX_TEMPFAIL: another process trains the job now; later, its adapter is reused


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors, as one sentence and status 2
        raise InputError(f"{message[0].upper()}{message[1:]}.")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ftp-train", description="Train a LoRA adapter on chat fine-tuning JSONL.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train one job's adapter")
    train.add_argument("--training-file", required=True, help="JSONL, a local path or fsspec URL")
    train.add_argument("--validation-file", help="JSONL, a local path or fsspec URL")
    train.add_argument("--base-model", required=True, help="a local model folder or a hub name in the local cache")
    train.add_argument("--output-url", required=True, help="the destination folder, a local path or fsspec URL")
    train.add_argument("--work-dir", required=True, help="checkpoints and staging, local")
    train.add_argument("--job-id", required=True)
    train.add_argument("--dataset-hash", required=True)
    train.add_argument("--config", help="the TrainerConfig as a JSON object")
    train.add_argument("--config-file", help="a file holding the TrainerConfig as a JSON object")
    train.add_argument("--build-tiny-base", action="store_true", help="build a tiny base at a missing --base-model")
    tiny = commands.add_parser("build-tiny-base", help="build the tiny base from a JSONL corpus")
    tiny.add_argument("--corpus", required=True, help="chat JSONL whose message texts are the corpus")
    tiny.add_argument("--output", required=True, help="the base's folder")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


@contextlib.contextmanager
def _pipes_or_none() -> Iterator[Any]:
    """The Dagster Pipes context when Dagster launched this process, else None."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes


def _train(args: argparse.Namespace) -> int:
    from ftp_trainer.train import TrainJob, run

    config = load_config(args.config, args.config_file)
    job = TrainJob(
        training_file=args.training_file,
        validation_file=args.validation_file,
        base_model=args.base_model,
        output_url=args.output_url,
        work_dir=args.work_dir,
        job_id=args.job_id,
        dataset_hash=args.dataset_hash,
        config=config,
        build_tiny_base=args.build_tiny_base,
    )
    with _pipes_or_none() as pipes:
        from ftp_trainer.progress import Reporter

        reporter = Reporter(pipes)
        # Pipes' stdout writer holds the real stdout; everything printed from here goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                result = run(job, reporter)
            except (InputError, JobBusy) as error:
                reporter.error(str(error))
                raise
        reporter.result({"metrics": result.metrics, "manifest": result.manifest, "reused": result.reused})
    return 0


def _build_tiny_base(args: argparse.Namespace) -> int:
    from ftp_trainer.data import message_texts, read_bytes
    from ftp_trainer.tiny_base import build_tiny_base

    texts = message_texts(read_bytes(args.corpus))
    if not texts:
        raise InputError(f"The corpus {args.corpus} has no message text.")
    with contextlib.redirect_stdout(sys.stderr):
        path = build_tiny_base(texts, args.output, seed=args.seed)
    print(f"tiny base at {path}", file=sys.stderr)
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    # SIGINT (Dagster's termination of a subprocess) and SIGTERM (a pod's deletion) stop training
    # even when the launcher left them ignored: a process started in the background inherits an
    # ignored SIGINT, and Python then installs no handler of its own.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # Nothing is ever downloaded: a base model is a local folder or already in the local cache.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _parser().parse_args(argv)
        if args.command == "train":
            return _train(args)
        return _build_tiny_base(args)
    except InputError as error:
        print(f"ftp-train: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobBusy as error:
        print(f"ftp-train: {error}", file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt as interruption:
        print(f"ftp-train: interrupted ({interruption or 'SIGINT'}); no adapter was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
