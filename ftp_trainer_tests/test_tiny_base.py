"""The tiny base: built from a training file by the command, reused, safe against concurrent builders."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from ftp_trainer.cli import main
from ftp_trainer.data import message_texts
from ftp_trainer.synthetic import chat_examples, write_jsonl
from ftp_trainer.tiny_base import MARKER, build_tiny_base, corpus_sha256
from ftp_trainer_tests.conftest import Files, make_job, train_args


def test_the_tiny_base_is_a_chat_model_with_the_promised_shape(tiny_base: Path) -> None:
    info = json.loads((tiny_base / MARKER).read_text())
    texts = [m["content"] for example in chat_examples(300, seed=99) for m in example["messages"]]
    assert info["corpus_sha256"] == corpus_sha256(texts) and info["seed"] == 0
    config = AutoConfig.from_pretrained(tiny_base)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.tie_word_embeddings and config.max_position_embeddings == 512
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert 300 <= len(tokenizer) == config.vocab_size <= 1000
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is None
    chat = [{"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer("<|im_start|>")["input_ids"]) == ["<|im_start|>"]


def test_concurrent_builders_leave_one_complete_base(tmp_path: Path) -> None:
    texts = ["one small corpus", "of a few texts", "for a quick build"] * 5
    target = tmp_path / "base"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_tiny_base(texts, target, pretrain_steps=3)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target, target]
    marker = (target / MARKER).read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".base.lock"] == ["base"]  # no temporary leftover
    assert build_tiny_base(["other texts"], target) == target  # complete: reused, not rebuilt
    assert (target / MARKER).read_text() == marker


def test_train_builds_the_tiny_base_at_a_missing_path_from_the_training_texts(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = write_jsonl(tmp_path / "small.jsonl", 24, seed=5, dialect="house")
    base = tmp_path / "bases" / "tiny-from-training"
    job = replace(make_job(files, base, tmp_path, epochs=1), training_file=str(small), validation_file=None)
    assert main([*train_args(job), "--build-tiny-base"]) == 0, capsys.readouterr().err
    assert "building the tiny base" in capsys.readouterr().err
    info = json.loads((base / MARKER).read_text())
    assert info["corpus_sha256"] == corpus_sha256(message_texts(small.read_bytes()))
    assert info["corpus_texts"] == 24 * 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["base_model"] == str(base) and manifest["base_vocab_size"] == info["tokenizer_vocab_size"]
