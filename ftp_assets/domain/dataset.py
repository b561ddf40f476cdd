"""Chat fine-tuning examples from cleaned posts: building, checking, token counting, splitting
and hashing the JSONL files.

Token counts follow OpenAI's cookbook (``num_tokens_from_messages``: 3 tokens per message plus
the tokens of each value, plus 3 to prime the reply) with ``cl100k_base``. Exact counting costs
about 35 s per million examples here, so by default it is done only where it decides something:

* the limit check uses a bound: a cl100k token is at least one UTF-8 byte, and a JSON line
  spends at least 26 bytes of syntax per message for the 4 tokens of framing, so
  ``len(line_bytes)`` bounds the example's tokens; only lines over the limit by that bound are
  counted exactly;
* the cost uses a ratio estimate from an exact count on a deterministic sample of examples,
  with its standard error; small datasets (``count_all_tokens_below`` examples) are counted
  exactly.

A line is ``serialize(build_example(...))``: compact JSON, UTF-8 as is. ``serialize_column``
writes the same bytes for whole columns at once (the data path uses it; a property test holds
the two together).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TASKS = ("hook", "body")
DEFAULT_SYSTEM_TEMPLATE = "You are {persona}, writing short posts for Threads in your own voice. {instruction}"
TASK_INSTRUCTIONS = {
    "hook": "Given the topic, write the hook: the single first line that makes people stop scrolling.",
    "body": "Given the topic and the hook, write the body of the post: a few short, concrete lines.",
}

# A reply fit to post: Threads takes 500 characters a post, and a hook is the first line of one.
REPLY_MAX_CHARS = {"hook": 280, "body": 500}
# The token budget the agent (and the readiness gate) asks a reply of each task for.
REPLY_MAX_TOKENS = {"hook": 40, "body": 120}


def system_message(persona_id: str, task: str, templates: Mapping[str, str]) -> str:
    """The persona's template (or the ``default`` one) filled in for the task."""
    template = templates.get(persona_id) or templates.get("default") or DEFAULT_SYSTEM_TEMPLATE
    return template.format(persona=persona_id.replace("_", " "), instruction=TASK_INSTRUCTIONS[task], task=task)


def build_example(task: str, system: str, original_input: str, hook: str, body: str | None) -> dict:
    if task == "hook":
        user, assistant = original_input, hook
    elif task == "body":
        if body is None:
            raise ValueError("The body task needs a body; only the hook task takes None.")
        user, assistant = f"{original_input}\n\nHook: {hook}", body
    else:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # built once, not per line


def serialize(example: dict) -> bytes:
    """The canonical bytes of one line: compact JSON, UTF-8 as is, keys in building order."""
    return _ENCODER.encode(example).encode()


def mixed_ids(post_ids) -> np.ndarray:
    """64 well-mixed bits per post id (SplitMix64's finalizer), the same on every machine."""
    z = np.asarray(post_ids, dtype=np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def split_and_sample(post_ids, validation_share: float, sample_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Per post: in the validation split, and in the token-count sample. One hash serves both:
    the split reads its top 53 bits as a fraction, the sample its low 16 bits."""
    hashes = mixed_ids(post_ids)
    validation = (hashes >> np.uint64(11)) * 2.0**-53 < validation_share
    sample = (hashes & np.uint64(0xFFFF)) < sample_share * 65536
    return validation, sample


_LINE_PARTS = (
    '{"messages":[{"role":"system","content":',
    '},{"role":"user","content":"',
    '"},{"role":"assistant","content":"',
    '"}]}',
)


def json_string_content(texts: pa.Array) -> pa.Array:
    """Each text as the inside of a JSON string, exactly as ``json.dumps(ensure_ascii=False)``
    writes it, for cleaned texts: their only control characters are tab and newline."""
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t")):
        texts = pc.replace_substring(texts, raw, escaped)
    return texts


def serialize_column(
    task: str, systems: pa.Array, original_inputs: pa.Array, hooks: pa.Array, bodies: pa.Array, end: str = ""
) -> pa.Array:
    """The lines of :func:`serialize` (``build_example``) for whole columns at once, in C++, each
    followed by ``end``. ``systems`` holds each row's system message already as a JSON string
    (quotes included)."""
    user = json_string_content(original_inputs)
    if task == "body":
        user = pc.binary_join_element_wise(user, "\\n\\nHook: ", json_string_content(hooks), "")
        assistant = json_string_content(bodies)
    else:
        assistant = json_string_content(hooks)
    first, second, third, last = _LINE_PARTS
    return pc.binary_join_element_wise(first, systems, second, user, third, assistant, last + end, "")


def dataset_hash(training_sha256: bytes, validation_sha256: bytes | None) -> str:
    """SHA-256 over a version tag and the SHA-256 of each file's canonical bytes (an absent
    validation file hashes as empty), so the same examples give the same hash anywhere."""
    combined = hashlib.sha256(b"ftp-dataset-v1\0")
    combined.update(training_sha256)
    combined.update(validation_sha256 or hashlib.sha256(b"").digest())
    return combined.hexdigest()


@dataclass
class TokenStats:
    """Exact counts where known, a ratio estimate elsewhere (see the module docstring)."""

    examples: int = 0
    content_bytes: int = 0
    sampled_examples: int = 0
    sampled_bytes: int = 0
    sampled_tokens: int = 0
    _sum_t2: float = 0.0
    _sum_b2: float = 0.0
    _sum_tb: float = 0.0
    max_tokens_seen: int = 0

    @classmethod
    def combined(cls, parts) -> TokenStats:
        """The statistics of the concatenation of the parts' examples."""
        total = cls()
        for part in parts:
            for name in (
                "examples",
                "content_bytes",
                "sampled_examples",
                "sampled_bytes",
                "sampled_tokens",
                "_sum_t2",
                "_sum_b2",
                "_sum_tb",
            ):
                setattr(total, name, getattr(total, name) + getattr(part, name))
            total.max_tokens_seen = max(total.max_tokens_seen, part.max_tokens_seen)
        return total

    def add_bytes(self, size: int) -> None:
        self.examples += 1
        self.content_bytes += size

    def add_many(self, sizes: np.ndarray) -> None:
        self.examples += len(sizes)
        self.content_bytes += int(sizes.sum())

    def add_sample(self, size: int, tokens: int) -> None:
        self.sampled_examples += 1
        self.sampled_bytes += size
        self.sampled_tokens += tokens
        self._sum_t2 += tokens * tokens
        self._sum_b2 += size * size
        self._sum_tb += tokens * size
        self.max_tokens_seen = max(self.max_tokens_seen, tokens)

    @property
    def exact(self) -> bool:
        return self.sampled_examples == self.examples

    @property
    def estimated_total(self) -> float:
        if self.exact or not self.sampled_bytes:
            return float(self.sampled_tokens)
        return self.content_bytes * self.sampled_tokens / self.sampled_bytes

    @property
    def relative_standard_error(self) -> float:
        """Standard error of the ratio estimator (Cochran, Sampling Techniques, §6.3), relative."""
        n, total_n = self.sampled_examples, self.examples
        if self.exact or n < 2 or not self.sampled_tokens:
            return 0.0
        ratio = self.sampled_tokens / self.sampled_bytes
        residual_ss = self._sum_t2 - 2 * ratio * self._sum_tb + ratio * ratio * self._sum_b2
        mean_bytes = self.sampled_bytes / n
        variance = (1 - n / total_n) * max(residual_ss, 0.0) / (n - 1) / (n * mean_bytes**2)
        return math.sqrt(variance) / ratio


@dataclass
class SplitFile:
    path: Path
    lines: int = 0
    _sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def __post_init__(self):
        # Open across calls to write(), closed by close(): a with-block cannot span them.
        self._handle = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115

    def write(self, block, lines: int) -> None:
        """Append ``lines`` whole lines (``block``: bytes-like, each line ending in a newline)."""
        self._handle.write(block)
        self._sha256.update(block)
        self.lines += lines

    def close(self) -> bytes:
        self._handle.close()
        return self._sha256.digest()
