"""vLLM's LoRA resolver plugin: production serves the adapters by name with no restart.

vLLM loads the ``vllm.general_plugins`` entry points at start-up; :func:`register` adds the
resolver ``ftp_adapters`` to ``LoRAResolverRegistry``. With ``--enable-lora``,
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` and ``VLLM_PLUGINS`` naming ``ftp_adapter_resolver`` (vLLM's
"LoRA Resolver Plugins" page), a request for an adapter not yet loaded asks the resolver, which
calls :func:`ftp_serving.layout.resolve_adapter` with:

* ``FTP_ADAPTERS_ROOT``: the adapters root, a folder or an fsspec URL (required);
* ``FTP_ADAPTER_CACHE_DIR``: where remote adapters are copied (default /tmp/ftp-adapters);
* ``FTP_BASE_MODEL_REVISION``: the served base's revision; adapters of another base are refused.

vLLM is imported only inside :func:`register`: it is not installed where there is no GPU, and the
glue is not exercised there; :func:`resolve_request_fields` holds the logic and is tested.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from ftp_serving.layout import AdapterUnavailable, adapter_folder_name, resolve_adapter

RESOLVER_NAME = "ftp_adapters"
DEFAULT_CACHE_DIR = "/tmp/ftp-adapters"
logger = logging.getLogger(__name__)


def lora_int_id(lora_name: str) -> int:
    """A stable positive 31-bit id from the name (vLLM keys loaded adapters by it); Python's
    ``hash`` is salted per process, so two replicas would disagree."""
    return int.from_bytes(hashlib.sha256(lora_name.encode("utf-8")).digest()[:4], "big") % (2**31 - 1) + 1


def resolve_request_fields(lora_name: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``LoRARequest`` for ``lora_name``; raises
    :class:`AdapterUnavailable` (and KeyError when ``FTP_ADAPTERS_ROOT`` is unset)."""
    root = environ.get("FTP_ADAPTERS_ROOT")
    if not root:
        raise KeyError("FTP_ADAPTERS_ROOT is not set: the resolver does not know where the adapters are.")
    resolved = resolve_adapter(
        root,
        lora_name,
        expected_base_revision=environ.get("FTP_BASE_MODEL_REVISION") or None,
        cache_dir=environ.get("FTP_ADAPTER_CACHE_DIR") or DEFAULT_CACHE_DIR,
    )
    return {"lora_name": lora_name, "lora_int_id": lora_int_id(lora_name), "lora_path": str(resolved.path)}


async def resolve_or_none(lora_name: str) -> dict[str, Any] | None:
    """:func:`resolve_request_fields` off the event loop (it hashes files); None, logged, when refused
    or when anything else goes wrong (a missing root, storage errors): vLLM then answers 404 for the
    name rather than fail the request with a server error."""
    try:
        adapter_folder_name(lora_name)
    except AdapterUnavailable:
        return None  # not one of ours (another resolver's, or a typo): nothing to log
    try:
        return await asyncio.to_thread(resolve_request_fields, lora_name)
    except AdapterUnavailable as refusal:
        logger.warning("LoRA adapter %s is not served: %s", lora_name, refusal.reason)
    except Exception:
        logger.exception("LoRA adapter %s could not be resolved", lora_name)
    return None


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the ``ftp_adapters`` resolver."""
    # Not installed where the checks run (no GPU): untyped there, typed where vLLM is.
    from vllm.lora.request import LoRARequest  # type: ignore[import-not-found, unused-ignore]
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry  # type: ignore[import-not-found, unused-ignore]

    class FtpAdapterResolver(LoRAResolver):  # type: ignore[misc, unused-ignore]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            fields = await resolve_or_none(lora_name)
            return None if fields is None else LoRARequest(**fields)

    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, FtpAdapterResolver())
