"""The training schedule of a job and what one step does to the model."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .dataset import assistant_word_sequences
from .ngram import NGramModel


@dataclass(frozen=True)
class Step:
    number: int
    epoch: int  # from 1
    ends_epoch: bool
    batch: list[list[str]]  # word sequences to train on
    valid_batch: list[list[str]] | None  # word sequences to measure the validation loss on


def word_sequences(examples: list[dict]) -> list[list[str]]:
    return [words for example in examples for words in assistant_word_sequences(example)]


def training_steps(
    training: list[dict], validation: list[dict] | None, hyperparameters: dict, seed: int
) -> Iterator[Step]:
    """Every step of the job; the seed fixes the order, so a resumed job replays the same steps."""
    rng = random.Random(seed)
    batch_size = hyperparameters["batch_size"]
    starts = range(0, len(training), batch_size)
    number = 0
    for epoch in range(1, hyperparameters["n_epochs"] + 1):
        order = list(range(len(training)))
        rng.shuffle(order)
        for start in starts:
            number += 1
            batch = word_sequences([training[i] for i in order[start : start + batch_size]])
            valid_batch = None
            if validation:
                valid_batch = word_sequences(rng.sample(validation, min(batch_size, len(validation))))
            yield Step(number, epoch, start == starts[-1], batch, valid_batch)


def train_step(model: NGramModel, step: Step) -> dict:
    """Trains the model on the step's batch; returns the step's metrics as OpenAI names them.

    The training loss is measured before the model sees the batch, so it shows what the model had
    learnt from the earlier ones (after the first epoch it has seen them all, and it drops)."""
    metrics: dict = {"step": step.number}
    metrics["train_loss"], metrics["train_mean_token_accuracy"] = model.evaluate(step.batch)
    model.update(step.batch)
    if step.valid_batch:
        metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = model.evaluate(step.valid_batch)
    return metrics
