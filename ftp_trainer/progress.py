"""Progress lines to the Dagster run (through Pipes) or, without Pipes, to stderr.

stdout stays free for Pipes' messages: the lines go to ``pipes.log`` or stderr, never stdout.
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import TrainerCallback


class Reporter:
    """Where progress lines and the final result go: a Pipes context, or stderr."""

    def __init__(self, pipes: Any | None = None) -> None:
        self.pipes = pipes
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)
        if self.pipes is not None:
            self.pipes.log.info(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def error(self, line: str) -> None:
        if self.pipes is not None:
            self.pipes.log.error(line)

    def result(self, payload: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message(payload)


def train_line(step: int, max_steps: int, epoch: float, loss: float, learning_rate: float) -> str:
    return f"step {step}/{max_steps} epoch {epoch:.2f}: train loss {loss:.4f}, lr {learning_rate:.1e}"


def eval_line(step: int, max_steps: int, epoch: float, loss: float) -> str:
    return f"step {step}/{max_steps} epoch {epoch:.2f}: validation loss {loss:.4f}"


class ProgressCallback(TrainerCallback):
    """A line per logging step and per evaluation."""

    def __init__(self, reporter: Reporter, planned_steps: int) -> None:
        self.reporter = reporter
        self.planned_steps = planned_steps

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        max_steps = state.max_steps or self.planned_steps
        epoch = float(state.epoch or 0.0)
        if "loss" in logs:
            self.reporter.info(
                train_line(
                    state.global_step, max_steps, epoch, float(logs["loss"]), float(logs.get("learning_rate", 0))
                )
            )
        if "eval_loss" in logs:
            self.reporter.info(eval_line(state.global_step, max_steps, epoch, float(logs["eval_loss"])))
