"""The CPU engine behind :mod:`ftp_serving.server`: one base model, LoRA adapters by name, micro-batches.

:class:`Engine` loads the base folder once. Adapters are resolved by name through
:func:`ftp_serving.layout.resolve_adapter` (expected base revision: the served base's, computed
by ``ftp_trainer.train.base_revision`` as the trainer records it) and loaded into one PEFT model,
at most ``max_loras`` resident, the least recently used evicted. A resident adapter is not
resolved again: retiring one takes effect at its next resolution (after an unload or eviction).

Requests go to a queue; one worker thread takes what is queued (waiting ``batch_wait_s`` to
gather more), groups it by model, left-pads each group and decodes it together. Each request
samples with its own ``torch.Generator`` seeded by its seed, so its reply does not depend on
which batch it landed in, as far as floating point allows.
"""

from __future__ import annotations

import inspect
import logging
import queue
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftp_serving.layout import AdapterUnavailable, resolve_adapter

logger = logging.getLogger(__name__)
CHAT_END = "<|im_end|>"
DEFAULT_MAX_TOKENS = 256


class InvalidRequest(ValueError):
    """A request the engine cannot serve as asked (the API's 400)."""


@dataclass(frozen=True)
class Sampling:
    model: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's sampling option: benchmarks want fixed-length replies
    # vLLM's sampling option too: False keeps special tokens the model wrote (a readiness check
    # looks for them); the stop token that ended the reply is never part of the text.
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Pending:
    sampling: Sampling
    future: Future[Completion] = field(default_factory=Future)


@dataclass
class _Row:
    """One request's decoding state inside a batch."""

    sampling: Sampling
    generator: Any
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: str | None = None


class Engine:
    def __init__(
        self,
        base_model: str | Path,
        base_name: str,
        adapters_root: str,
        *,
        max_loras: int = 8,
        max_batch: int = 64,
        batch_wait_s: float = 0.003,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ftp_trainer.train import base_revision

        if max_loras < 1 or max_batch < 1:
            raise ValueError("max_loras and max_batch must be at least 1.")
        transformers.utils.logging.disable_progress_bar()
        # PEFT's own call of a name transformers deprecated: nothing this server can change.
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning)
        if threads:
            torch.set_num_threads(threads)
        folder = Path(base_model)
        self.base_name = base_name
        self.adapters_root = adapters_root
        self.max_loras = max_loras
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.cache_dir = cache_dir
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"The base model's tokenizer at {folder} has no chat template.")
        self._base = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
        self.base_revision = base_revision(self._base.config, folder)
        self.context_length = int(getattr(self._base.config, "max_position_embeddings", 0) or 1 << 30)
        self._stop_ids = self._end_token_ids()
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns).
        forward_parameters = inspect.signature(self._base.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._stop_ids)
        self._peft: Any = None  # the PeftModel wrapping the base once an adapter is loaded
        self._resident: OrderedDict[str, Path] = OrderedDict()  # least recently used first
        self._model_lock = threading.Lock()  # loading, unloading and generating never overlap
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="ftp-serving-engine", daemon=True)
        self._worker.start()

    def _end_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self._base.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        end = self.tokenizer.convert_tokens_to_ids(CHAT_END)
        if isinstance(end, int) and end != self.tokenizer.unk_token_id:
            ids.add(end)
        return {token for token in ids if isinstance(token, int)}

    # --- prompts --------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context_length:
            raise InvalidRequest(
                f"The prompt is {len(ids)} tokens long; the model's context is {self.context_length} tokens."
            )
        return ids

    def max_new_tokens(self, prompt_ids: list[int], requested: int | None) -> int:
        room = self.context_length - len(prompt_ids)
        return min(room, requested if requested is not None else DEFAULT_MAX_TOKENS)

    # --- adapters -------------------------------------------------------------------------

    def is_served(self, name: str) -> bool:
        return name == self.base_name or name in self._resident

    def resident_adapters(self) -> list[str]:
        with self._model_lock:  # the worker loads and evicts meanwhile
            return list(self._resident)

    def ensure_adapter(self, name: str) -> None:
        """Make the adapter resident (resolving and verifying it first); AdapterUnavailable if refused."""
        if name in self._resident:
            with self._model_lock:
                if name in self._resident:
                    self._resident.move_to_end(name)
                    return
        resolved = resolve_adapter(
            self.adapters_root, name, expected_base_revision=self.base_revision, cache_dir=self.cache_dir
        )
        with self._model_lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                return
            self._load(name, resolved.path)

    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name).eval()
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
        self._resident[name] = path
        logger.info("loaded adapter %s from %s", name, path)
        while len(self._resident) > self.max_loras:
            evicted, _ = self._resident.popitem(last=False)
            self._delete(evicted)
            logger.info("evicted adapter %s (least recently used)", evicted)

    def unload_adapter(self, name: str) -> bool:
        """Remove a resident adapter; False when it was not resident."""
        with self._model_lock:
            if name not in self._resident:
                return False
            del self._resident[name]
            self._delete(name)
            return True

    def _delete(self, name: str) -> None:
        if not self._resident:
            # PEFT cannot run with no adapter left: take its LoRA layers out, back to the plain base.
            self._base = self._peft.unload()
            self._peft = None
            return
        if name in self._peft.active_adapters:
            self._peft.set_adapter(next(iter(self._resident)))
        self._peft.delete_adapter(name)

    def _model_for(self, name: str) -> tuple[Any, AbstractContextManager[Any]]:
        """The module to run for ``name`` and the context to run it in (under the model lock)."""
        if self._peft is None:
            return self._base, nullcontext()
        if name == self.base_name:
            return self._peft, self._peft.disable_adapter()
        self._peft.set_adapter(name)
        self._resident.move_to_end(name)
        return self._peft, nullcontext()

    # --- requests -------------------------------------------------------------------------

    def submit(self, sampling: Sampling) -> Future[Completion]:
        pending = _Pending(sampling)
        self._queue.put(pending)
        return pending.future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first, *self._gather()]
            groups: dict[str, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.sampling.model, []).append(pending)
            for model, items in groups.items():
                for start in range(0, len(items), self.max_batch):
                    self._run_group(model, items[start : start + self.max_batch])

    def _gather(self) -> Iterator[_Pending]:
        """What else is queued, waiting at most ``batch_wait_s`` for more to arrive."""
        deadline = time.monotonic() + self.batch_wait_s
        taken = 1
        while taken < self.max_batch * 4:
            try:
                pending = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if pending is None:
                self._queue.put(None)  # stop after this batch
                return
            taken += 1
            yield pending

    def _run_group(self, model_name: str, items: list[_Pending]) -> None:
        try:
            completions = None
            while completions is None:
                # Evicted since its request was accepted: load it again (outside the lock: it hashes).
                if model_name != self.base_name:
                    self.ensure_adapter(model_name)
                with self._model_lock:
                    if self.is_served(model_name):  # not evicted again meanwhile
                        model, context = self._model_for(model_name)
                        with context:
                            completions = self._generate(model, [item.sampling for item in items])
        except Exception as error:  # every request of the group learns why
            if not isinstance(error, AdapterUnavailable):
                logger.exception("generation failed for %s", model_name)
            for item in items:
                item.future.set_exception(error)
            return
        for item, completion in zip(items, completions, strict=True):
            item.future.set_result(completion)

    # --- decoding -------------------------------------------------------------------------

    def _generate(self, model: Any, requests: list[Sampling]) -> list[Completion]:
        import torch
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.tensor([[self._pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        rows = [
            _Row(r, torch.Generator().manual_seed(r.seed if r.seed is not None else secrets.randbits(63)))
            for r in requests
        ]
        cache = DynamicCache()
        with torch.inference_mode():
            for _ in range(max(r.max_tokens for r in requests)):
                logits = (
                    model(
                        input_ids=input_ids,
                        attention_mask=attention,
                        position_ids=positions,
                        use_cache=True,
                        logits_to_keep=1,
                        **{self._cache_argument: cache},
                    )
                    .logits[:, -1, :]
                    .float()
                )
                next_ids = [self._step(row, logits[index]) for index, row in enumerate(rows)]
                if all(row.finish_reason for row in rows):
                    break
                input_ids = torch.tensor(next_ids).unsqueeze(1)
                attention = torch.cat([attention, torch.ones_like(input_ids)], dim=1)
                positions = positions[:, -1:] + 1
        return [self._completion(row) for row in rows]

    def _step(self, row: _Row, logits: Any) -> int:
        """Sample the row's next token and update its state; the token to feed next."""
        if row.finish_reason:
            return self._pad_id
        token = _sample(logits, row.sampling, row.generator)
        row.tokens.append(token)
        if token in self._stop_ids and not row.sampling.ignore_eos:
            row.finish_reason = "stop"
        elif row.sampling.stop:
            text = str(self.tokenizer.decode(row.tokens, skip_special_tokens=True))
            cut = min((text.find(stop) for stop in row.sampling.stop if stop in text), default=-1)
            if cut >= 0:
                row.text, row.finish_reason = text[:cut], "stop"
        if not row.finish_reason and len(row.tokens) >= row.sampling.max_tokens:
            row.finish_reason = "length"
        return token

    def _completion(self, row: _Row) -> Completion:
        tokens = row.tokens
        if row.finish_reason == "stop" and tokens and tokens[-1] in self._stop_ids:
            tokens = tokens[:-1]
        skip = row.sampling.skip_special_tokens
        text = row.text if row.text is not None else str(self.tokenizer.decode(tokens, skip_special_tokens=skip))
        return Completion(
            text=text,
            finish_reason=row.finish_reason or "length",
            prompt_tokens=len(row.sampling.prompt_ids),
            completion_tokens=len(row.tokens),
        )


def _sample(logits: Any, sampling: Sampling, generator: Any) -> int:
    import torch

    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        ordered, order = torch.sort(probabilities, descending=True)
        # keep the smallest head whose mass reaches top_p (always the first token)
        keep = ordered.cumsum(-1) - ordered < sampling.top_p
        probabilities = torch.zeros_like(probabilities).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probabilities, 1, generator=generator))
