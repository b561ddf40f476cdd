"""The JSONL to prompt/completion conversion and its refusals."""

from __future__ import annotations

import json

import pytest

from ftp_trainer.data import convert_example, parse_jsonl
from ftp_trainer.errors import InputError


def line(messages: list[dict[str, object]]) -> bytes:
    return json.dumps({"messages": messages}).encode()


def test_multi_turn_prompt_is_everything_before_the_last_assistant_message() -> None:
    example = {
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "sys"},
            {"role": "user", "content": "Hi", "name": "alice"},
            {"role": "assistant", "content": "Hello.", "weight": 0},
            {"role": "user", "content": "A tip?"},
            {"role": "assistant", "content": "Drink water.", "weight": 1, "name": "bot"},
        ]
    }
    assert convert_example(example) == {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "A tip?"},
        ],
        "completion": [{"role": "assistant", "content": "Drink water."}],
    }


def test_an_example_whose_last_assistant_message_has_weight_0_is_skipped_and_counted() -> None:
    data = b"\n".join(
        [
            line([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]),
            b"",
            line([{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]),
        ]
    )
    dataset = parse_jsonl(data, "f.jsonl")
    assert dataset.skipped == 1
    assert dataset.examples == [
        {"prompt": [{"role": "user", "content": "c"}], "completion": [{"role": "assistant", "content": "d"}]}
    ]
    assert len(dataset.sha256) == 64


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "Line 2 of f.jsonl is not valid JSON."),
        (b'{"messages": []}', "Line 2 of f.jsonl is not a chat example: the line is not an object with a non-empty"),
        (line([{"role": "user", "content": "x"}]), "no assistant message"),
        (line([{"role": "robot", "content": "x"}]), 'the role "robot", not system, user or assistant'),
        (line([{"role": "assistant", "content": "  "}]), "a message has no text content"),
        (line([{"role": "assistant", "content": "x", "extra": 1}]), "the unknown key 'extra'"),
        (line([{"role": "assistant", "content": "x", "weight": 0.5}]), "the weight 0.5, not 0 or 1"),
    ],
)
def test_malformed_lines_are_refused_with_a_sentence_naming_the_line(raw: bytes, expected: str) -> None:
    good = line([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(InputError) as caught:
        parse_jsonl(good + b"\n" + raw + b"\n", "f.jsonl")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("Line 2 of f.jsonl") and message.endswith(".") and "\n" not in message
