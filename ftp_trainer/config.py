"""The trainer's hyperparameters: :class:`TrainerConfig`, read from a JSON object.

Defaults suit LoRA on a 0.5–8 B instruct model (docs/trainer.md#configuration). Unknown keys and
values of the wrong type are refused with one sentence that names the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ftp_trainer.errors import InputError

# Learning-rate schedules of transformers' ``SchedulerType`` that need no extra arguments.
LR_SCHEDULERS = frozenset(
    {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"}
)


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 3
    learning_rate: float = 2e-4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 1024
    seed: int = 42
    threads: int = 0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    logging_steps: int = 10
    eval_steps: int = 0
    save_steps: int = 200
    max_serving_rank: int = 64

    def __post_init__(self) -> None:
        positive = ("epochs", "lora_rank", "lora_alpha", "batch_size", "gradient_accumulation_steps")
        for name in (*positive, "max_seq_length", "logging_steps", "save_steps", "max_serving_rank"):
            if getattr(self, name) < 1:
                raise InputError(f"Config key '{name}' must be at least 1, got {getattr(self, name)}.")
        for name in ("threads", "eval_steps", "seed"):
            if getattr(self, name) < 0:
                raise InputError(f"Config key '{name}' must not be negative, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise InputError(f"Config key 'learning_rate' must be positive, got {self.learning_rate}.")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"Config key 'lora_dropout' must be in [0, 1), got {self.lora_dropout}.")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"Config key 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise InputError(
                f"Config key 'lr_scheduler' must be one of {', '.join(sorted(LR_SCHEDULERS))}, "
                f"got {self.lr_scheduler!r}."
            )
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise InputError("Config key 'target_modules' must not be an empty list.")
        if self.lora_rank > self.max_serving_rank:
            raise InputError(
                f"Config key 'lora_rank' is {self.lora_rank}, above max_serving_rank {self.max_serving_rank}: "
                "the serving vLLM's --max-lora-rank would refuse the adapter."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type_ok(name: str, value: Any) -> bool:
    """Whether ``value`` (parsed JSON) has the type the field ``name`` declares."""
    default = getattr(TrainerConfig, name, None)
    if name == "target_modules":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if isinstance(value, bool):  # JSON true/false is never a number here
        return False
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, int):
        return isinstance(value, int)
    return isinstance(value, str)


def config_from_mapping(raw: Any) -> TrainerConfig:
    """A :class:`TrainerConfig` from a parsed JSON object, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise InputError(f"The config must be a JSON object, got {type(raw).__name__}.")
    known = {f.name for f in fields(TrainerConfig)}
    for key, value in raw.items():
        if key not in known:
            raise InputError(f"Unknown config key '{key}'; the known keys are {', '.join(sorted(known))}.")
        if not _type_ok(key, value):
            raise InputError(f"Config key '{key}' has the wrong type: {json.dumps(value)}.")
    values = dict(raw)
    for f in fields(TrainerConfig):
        if f.name in values and isinstance(getattr(TrainerConfig, f.name, None), float):
            values[f.name] = float(values[f.name])
    return TrainerConfig(**values)


def load_config(config_json: str | None, config_file: str | None) -> TrainerConfig:
    """The config of ``--config JSON`` or ``--config-file PATH`` (defaults when neither is given)."""
    if config_json is not None and config_file is not None:
        raise InputError("Give --config or --config-file, not both.")
    if config_file is not None:
        try:
            config_json = Path(config_file).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"Cannot read the config file {config_file}: {error.strerror or error}.") from None
    if config_json is None:
        return TrainerConfig()
    try:
        raw = json.loads(config_json)
    except ValueError as error:
        raise InputError(f"The config is not valid JSON: {error}.") from None
    return config_from_mapping(raw)
