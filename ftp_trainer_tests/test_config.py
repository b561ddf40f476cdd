"""TrainerConfig: defaults, and one clear sentence for a bad key, type or value."""

from __future__ import annotations

import pytest

from ftp_trainer.config import TrainerConfig, config_from_mapping, load_config
from ftp_trainer.errors import InputError


def test_defaults_and_overrides() -> None:
    assert load_config(None, None) == TrainerConfig()
    config = load_config('{"epochs": 1, "learning_rate": 1, "target_modules": ["q_proj", "v_proj"]}', None)
    assert (config.epochs, config.learning_rate, config.target_modules) == (1, 1.0, ["q_proj", "v_proj"])
    assert isinstance(config.learning_rate, float)
    assert config.lora_rank == 16 and config.max_serving_rank == 64 and config.lr_scheduler == "cosine"


def test_config_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"lora_rank": 8}')
    assert load_config(None, str(path)).lora_rank == 8


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"epoch": 1}, "Unknown config key 'epoch'"),
        ({"epochs": "3"}, "Config key 'epochs' has the wrong type"),
        ({"epochs": 1.5}, "Config key 'epochs' has the wrong type"),
        ({"batch_size": True}, "Config key 'batch_size' has the wrong type"),
        ({"target_modules": [1]}, "Config key 'target_modules' has the wrong type"),
        ({"lora_rank": 128}, "lora_rank' is 128, above max_serving_rank 64"),
        ({"lora_dropout": 1.0}, "Config key 'lora_dropout' must be in [0, 1)"),
        ({"lr_scheduler": "fancy"}, "Config key 'lr_scheduler' must be one of"),
        ({"epochs": 0}, "Config key 'epochs' must be at least 1"),
        ([1, 2], "The config must be a JSON object"),
    ],
)
def test_bad_configs_are_refused_with_one_sentence_naming_the_key(raw: object, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        config_from_mapping(raw)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_higher_serving_rank_admits_a_higher_lora_rank() -> None:
    assert config_from_mapping({"lora_rank": 128, "max_serving_rank": 128}).lora_rank == 128
