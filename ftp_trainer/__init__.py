"""The self-hosted LoRA trainer: ``ftp-train``, a program of its own (docs/trainer.md).

It reads chat fine-tuning JSONL (the OpenAI format), trains a LoRA adapter on a base model with
TRL's ``SFTTrainer`` and PEFT, and writes the adapter, its metrics and a manifest to a folder or
an fsspec URL. Dagster launches it through Dagster Pipes; it imports nothing of Dagster but
``dagster_pipes`` and nothing of the product.
"""
