"""Real training runs on a tiny base: learning, outputs, determinism, completion-only loss, vocabulary."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from ftp_trainer.data import read_dataset
from ftp_trainer.progress import Reporter
from ftp_trainer.train import build_trainer, read_manifest, run
from ftp_trainer_tests.conftest import Files, Trained, make_job, train


def test_training_lowers_the_held_out_loss(trained: Trained) -> None:
    metrics = trained.result.metrics
    assert metrics["initial_eval_loss"] is not None and metrics["final_eval_loss"] is not None
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"] * 0.9, metrics
    assert [e["step"] for e in metrics["eval_loss"]] == [25, 50]  # once per epoch
    assert [e["step"] for e in metrics["train_loss"]] == list(range(5, 51, 5))
    assert metrics["final_train_loss"] == metrics["train_loss"][-1]["loss"]
    assert (metrics["training_examples"], metrics["validation_examples"], metrics["skipped_examples"]) == (200, 40, 0)
    assert metrics["examples_per_second"] > 0 and metrics["tokens_per_second"] > 0


def test_output_layout_and_manifest(trained: Trained, files: Files, tiny_base: Path) -> None:
    out = trained.output
    adapter = out / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert (adapter / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (adapter / "tokenizer_config.json").read_text()
    )
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == trained.result.manifest
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(trained.result.metrics))
    assert on_disk["format"] == 1 and on_disk["job_id"] == "job-1" and on_disk["dataset_hash"] == "dataset-hash-1"
    assert on_disk["base_model"] == str(tiny_base)
    assert on_disk["training_file_sha256"] == hashlib.sha256(files.train.read_bytes()).hexdigest()
    assert on_disk["validation_file_sha256"] == hashlib.sha256(files.validation.read_bytes()).hexdigest()
    assert on_disk["adapter_sha256"] == hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert on_disk["hyperparameters"]["lora_rank"] == 8 and on_disk["lora_rank"] == 8
    assert set(on_disk["library_versions"]) == {
        "python",
        "torch",
        "transformers",
        "peft",
        "trl",
        "tokenizers",
        "datasets",
    }
    assert on_disk["device"] == "cpu"
    assert re.fullmatch(r"[0-9a-f]{64}", on_disk["base_model_revision"])
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    shapes = {name: tensor.shape for name, tensor in load_file(adapter / "adapter_model.safetensors").items()}
    assert shapes and all(shape[0] == 8 for name, shape in shapes.items() if "lora_A" in name)
    assert all(shape[1] == 8 for name, shape in shapes.items() if "lora_B" in name)


def test_progress_lines(trained: Trained) -> None:
    assert "step 5/50 epoch 0.20: train loss" in "\n".join(trained.lines)
    assert any(
        re.fullmatch(r"step 5/50 epoch 0\.20: train loss \d+\.\d{4}, lr \d\.\de-0\d", line) for line in trained.lines
    )
    assert any(re.fullmatch(r"step 50/50 epoch 2\.00: validation loss \d+\.\d{4}", line) for line in trained.lines)
    assert any(line.startswith("step 0/50 epoch 0.00: validation loss") for line in trained.lines)


def test_trained_tokens_count_every_non_padding_token_of_every_epoch(trained: Trained, tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    total = 0
    for example in read_dataset(trained.job.training_file).examples:
        text = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert trained.result.metrics["trained_tokens"] == 2 * total


def test_same_inputs_give_byte_identical_adapter_weights(
    trained: Trained, files: Files, tiny_base: Path, tmp_path
) -> None:
    again = train(make_job(files, tiny_base, tmp_path))
    first = load_file(trained.output / "adapter" / "adapter_model.safetensors")
    second = load_file(again.output / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert again.result.manifest["adapter_sha256"] == trained.result.manifest["adapter_sha256"]
    assert again.result.metrics["train_loss"] == trained.result.metrics["train_loss"]
    # The adapter did train: its B matrices (zero at initialisation) are no longer zero.
    assert any(first[key].abs().sum() > 0 for key in first if "lora_B" in key)


def test_the_adapter_adds_no_token_to_the_base_vocabulary(trained: Trained, tiny_base: Path) -> None:
    base = AutoTokenizer.from_pretrained(tiny_base)
    assert base.pad_token is None  # the tiny base has none, so the trainer had to pick one
    adapter_tokenizer = AutoTokenizer.from_pretrained(trained.output / "adapter")
    assert len(adapter_tokenizer) == len(base) == trained.result.manifest["base_vocab_size"]
    assert adapter_tokenizer.pad_token == base.eos_token
    adapter_config = json.loads((trained.output / "adapter" / "adapter_config.json").read_text())
    assert not adapter_config.get("modules_to_save")
    assert not adapter_config.get("trainable_token_indices")
    names = load_file(trained.output / "adapter" / "adapter_model.safetensors").keys()
    assert not [name for name in names if "embed" in name or "lm_head" in name]


def test_loss_is_on_the_assistant_completion_only(files: Files, tiny_base: Path, tmp_path) -> None:
    job = make_job(files, tiny_base, tmp_path)
    train_set = read_dataset(job.training_file)
    trainer = build_trainer(job, str(tiny_base), train_set, None, Reporter(), 1)
    tokenizer = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    completions = {example["completion"][0]["content"] for example in train_set.examples}
    prompts = {example["prompt"][1]["content"] for example in train_set.examples}
    for input_ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        trained_ids = input_ids[labels != -100]
        assert torch.equal(trained_ids, labels[labels != -100])
        text = tokenizer.decode(trained_ids)
        assert text.endswith("<|im_end|>\n")
        assert text.removesuffix("<|im_end|>\n") in completions  # exactly one assistant reply, nothing else
        prompt_text = tokenizer.decode(input_ids[(labels == -100) & (mask == 1)])
        assert "<|im_start|>system" in prompt_text and any(prompt in prompt_text for prompt in prompts)
        assert prompt_text.endswith("<|im_start|>assistant\n")


def test_inputs_and_destination_by_fsspec_url(files: Files, tiny_base: Path, tmp_path) -> None:
    """A non-local filesystem (fsspec's in-memory one) for the files and the destination."""
    import fsspec

    memory = fsspec.filesystem("memory")
    small = b"".join(files.train.read_bytes().splitlines(keepends=True)[:16])
    memory.pipe("/bucket/data/train.jsonl", small)
    job = replace(
        make_job(files, tiny_base, tmp_path, epochs=1),
        training_file="memory://bucket/data/train.jsonl",
        validation_file=None,
        output_url="memory://bucket/adapters/job-1",
    )
    result = run(job, Reporter())
    assert result.manifest["training_file_sha256"] == hashlib.sha256(small).hexdigest()
    assert json.loads(memory.cat("/bucket/adapters/job-1/manifest.json")) == result.manifest
    weights = memory.cat("/bucket/adapters/job-1/adapter/adapter_model.safetensors")
    assert hashlib.sha256(weights).hexdigest() == result.manifest["adapter_sha256"]
    assert read_manifest(job.output_url) == result.manifest
    memory.rm("/bucket", recursive=True)
