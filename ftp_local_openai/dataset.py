"""Reading a fine-tuning file the way OpenAI does, and the hyperparameters OpenAI would pick."""

from __future__ import annotations

import json
import math

from ftp_assets.domain.chat_format import auto_n_epochs, line_error

from .ngram import split_words
from .tokens import count_message_tokens

MIN_TRAINING_EXAMPLES = 10
# Our own choice for "auto" (OpenAI does not publish its rule): about this many steps an epoch,
# so a job's length does not grow with its data.
STEPS_PER_EPOCH = 25
AUTO_LEARNING_RATE_MULTIPLIER = 1.8

RULE_DESCRIPTIONS = {
    "invalid_json": "the line is not valid JSON",
    "data_type": "each line must be a JSON object",
    "missing_messages_list": "each example must have a non-empty `messages` list",
    "message_missing_key": "each message must have a `role` and a `content`",
    "message_unrecognized_key": "a message may only have role, content, name, function_call and weight",
    "unrecognized_role": "a role must be system, user, assistant or function",
    "missing_content": "a message's content must be a non-empty string",
    "example_missing_assistant_message": "each example must have at least one assistant message",
}


class FileRejected(Exception):
    """A file that breaks OpenAI's rules; ``error`` is the job's error object."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


def read_examples(content: bytes, param: str) -> list[dict]:
    """The examples of a fine-tuning file; ``param`` is ``training_file`` or ``validation_file``."""
    code = f"invalid_{param}"
    try:
        lines = content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise FileRejected(code, "Invalid file format. The file is not UTF-8 text.", param) from None
    broken = [(number, rule) for number, line in enumerate(lines, start=1) if (rule := line_error(line))]
    if broken:
        number, rule = broken[0]
        raise FileRejected(
            code,
            f"Invalid file format. Line {number}: {RULE_DESCRIPTIONS[rule]} ({rule}). "
            f"{len(broken)} of {len(lines)} lines break the format rules.",
            param,
        )
    if not lines:
        raise FileRejected(code, "Invalid file format. The file has no examples.", param)
    return [json.loads(line) for line in lines]


def check_training_size(examples: list[dict]) -> None:
    if len(examples) < MIN_TRAINING_EXAMPLES:
        raise FileRejected(
            "invalid_n_examples",
            f"Training file has {len(examples)} example(s), but must have at least {MIN_TRAINING_EXAMPLES} examples",
            "training_file",
        )


def assistant_word_sequences(example: dict) -> list[list[str]]:
    """The words of the example's assistant messages that are trained on (weight 0 is not)."""
    return [
        split_words(message["content"])
        for message in example["messages"]
        if message["role"] == "assistant" and message.get("weight", 1) != 0
    ]


def billable_tokens(examples: list[dict]) -> int:
    """Tokens of one pass over the examples (OpenAI bills this times the epochs)."""
    return sum(count_message_tokens(example["messages"]) for example in examples)


def resolve_hyperparameters(requested: dict, n_examples: int) -> dict:
    """Numbers for every "auto" (or missing) hyperparameter, given the training set's size."""
    n_epochs = requested.get("n_epochs", "auto")
    if n_epochs == "auto":
        n_epochs = auto_n_epochs(n_examples)
    batch_size = requested.get("batch_size", "auto")
    if batch_size == "auto":
        batch_size = math.ceil(n_examples / STEPS_PER_EPOCH)
    learning_rate_multiplier = requested.get("learning_rate_multiplier", "auto")
    if learning_rate_multiplier == "auto":
        learning_rate_multiplier = AUTO_LEARNING_RATE_MULTIPLIER
    return {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": learning_rate_multiplier}
