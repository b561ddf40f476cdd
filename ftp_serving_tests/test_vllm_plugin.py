"""The vLLM resolver's logic, without vLLM (not installable here: no GPU); register() itself is not run."""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata

import pytest

from ftp_serving import vllm_plugin
from ftp_serving.layout import AdapterUnavailable
from ftp_serving.vllm_plugin import lora_int_id, resolve_request_fields
from ftp_serving_tests.conftest import Adapters, clone_adapter, folder_of, retire


def test_the_plugin_is_declared_for_vllm() -> None:
    (entry,) = [e for e in metadata.entry_points(group="vllm.general_plugins") if e.name == "ftp_adapter_resolver"]
    assert entry.value == "ftp_serving.vllm_plugin:register"
    assert entry.load() is vllm_plugin.register


def test_the_lora_int_id_is_stable_positive_and_differs_by_name() -> None:
    name = "threads-hook-sft-0123456789abcdef01234567"
    assert lora_int_id(name) == lora_int_id(name) == 261515048  # fixed: every replica and restart agrees
    ids = {lora_int_id(f"threads-hook-sft-{i:024x}") for i in range(1000)}
    assert len(ids) == 1000
    assert all(0 < value < 2**31 for value in ids)


def test_a_served_adapter_gives_the_lora_request_fields(adapters: Adapters) -> None:
    fields = resolve_request_fields(adapters.hook, {"FTP_ADAPTERS_ROOT": str(adapters.root)})
    assert fields == {
        "lora_name": adapters.hook,
        "lora_int_id": lora_int_id(adapters.hook),
        "lora_path": str(folder_of(adapters.root, adapters.hook) / "adapter"),
    }


def test_the_base_revision_from_the_environment_is_enforced(adapters: Adapters) -> None:
    environ = {"FTP_ADAPTERS_ROOT": str(adapters.root), "FTP_BASE_MODEL_REVISION": "f" * 64}
    with pytest.raises(AdapterUnavailable, match="base revision"):
        resolve_request_fields(adapters.hook, environ)


def test_without_a_root_the_resolver_says_so() -> None:
    with pytest.raises(KeyError, match="FTP_ADAPTERS_ROOT"):
        resolve_request_fields("threads-hook-sft-0123456789abcdef01234567", {})


def test_a_refused_adapter_is_logged_and_resolves_to_none(
    adapters: Adapters, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = clone_adapter(adapters, adapters.hook)
    retire(adapters.root, name, reason="rolled back")
    monkeypatch.setenv("FTP_ADAPTERS_ROOT", str(adapters.root))
    with caplog.at_level(logging.WARNING, logger=vllm_plugin.__name__):
        assert asyncio.run(vllm_plugin.resolve_or_none(name)) is None
    assert "rolled back" in caplog.text
    assert asyncio.run(vllm_plugin.resolve_or_none(adapters.hook)) is not None
