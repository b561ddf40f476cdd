"""A tiny chat base model built from a corpus, for the tests and the local demo.

:func:`build_tiny_base` trains a byte-level BPE tokenizer on the texts (ChatML special tokens,
a ChatML chat template, eos ``<|im_end|>``, no pad token, like Llama 3's tokenizers), builds a
two-layer ``LlamaForCausalLM`` and pre-trains it briefly as a plain causal language model on the
texts rendered through the chat template, so that a LoRA adapter on top has something to adapt.
It is no useful language model: a stand-in with the shapes and files of a real one.

The folder is written atomically: built in a temporary sibling, then renamed into place, under a
file lock; a folder that already holds a complete base (its ``ftp_tiny_base.json``) is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MARKER = "ftp_tiny_base.json"
ROLES = ("system", "user", "assistant")


def is_complete(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a finished tiny base (the marker is written last)."""
    return (Path(folder) / MARKER).is_file()


def corpus_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The role names and newlines of the template are part of every rendered text.
    tokenizer.train_from_iterator([*texts, *(f"{role}\n" for role in ROLES)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        unk_token=None,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _render(texts: Sequence[str]) -> list[str]:
    """The texts as chats: consecutive texts take the roles system, user, assistant in turn."""
    chats = []
    for start in range(0, len(texts), len(ROLES)):
        chunk = texts[start : start + len(ROLES)]
        chats.append(
            "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in zip(ROLES, chunk, strict=False))
        )
    return chats


def _pretrain(model: Any, tokenizer: Any, texts: Sequence[str], *, steps: int, seed: int, block: int) -> float:
    """Plain causal-LM pre-training on the rendered texts; the last step's loss."""
    import torch

    ids: list[int] = []
    for chat in _render(texts):
        ids.extend(tokenizer(chat, add_special_tokens=False)["input_ids"])
    blocks = max(1, len(ids) // block)
    stream = torch.tensor((ids * math.ceil(blocks * block / max(len(ids), 1)))[: blocks * block] or [0] * block)
    data = stream.view(-1, block)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        rows = torch.randint(0, data.shape[0], (16,), generator=generator)
        batch = data[rows]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.item())
    model.eval()
    return loss_value


def build_tiny_base(
    corpus_texts: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 128,
    max_positions: int = 512,
    pretrain_steps: int = 300,
    block_size: int = 128,
    threads: int = 1,
) -> Path:
    """Build (or reuse) the tiny base at ``output_dir``; returns its path.

    ``threads`` bounds torch's threads while building (restored afterwards): a model this small
    gains nothing from more, and loses much when other processes share the cores.
    """
    output = Path(output_dir).absolute()
    if is_complete(output):
        return output
    texts = [text for text in corpus_texts if text.strip()]
    if not texts:
        raise ValueError("The tiny base needs at least one non-empty text.")
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.parent / f".{output.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder waits here, then finds the base complete
        if is_complete(output):
            return output
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            started = time.monotonic()
            info = _build_into(
                staging,
                texts,
                seed=seed,
                vocab_size=vocab_size,
                hidden_size=hidden_size,
                layers=layers,
                heads=heads,
                intermediate_size=intermediate_size,
                max_positions=max_positions,
                pretrain_steps=pretrain_steps,
                block_size=block_size,
            )
            info["build_seconds"] = round(time.monotonic() - started, 2)
            (staging / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            if output.exists():  # an incomplete leftover of a killed builder (the lock makes it no live one's)
                shutil.rmtree(output)
            os.rename(staging, output)
        finally:
            torch.set_num_threads(previous_threads)
            shutil.rmtree(staging, ignore_errors=True)
    return output


def _build_into(staging: Path, texts: Sequence[str], *, seed: int, **sizes: int) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = _train_tokenizer(texts, sizes["vocab_size"])
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["layers"],
        num_attention_heads=sizes["heads"],
        num_key_value_heads=sizes["heads"],
        intermediate_size=sizes["intermediate_size"],
        max_position_embeddings=sizes["max_positions"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    final_loss = _pretrain(model, tokenizer, texts, steps=sizes["pretrain_steps"], seed=seed, block=sizes["block_size"])
    model.generation_config = GenerationConfig(eos_token_id=eos_id, do_sample=False)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return {
        "format": 1,
        "corpus_sha256": corpus_sha256(texts),
        "corpus_texts": len(texts),
        "seed": seed,
        **sizes,
        "tokenizer_vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_final_loss": round(final_loss, 4),
    }
