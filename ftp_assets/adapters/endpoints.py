"""Where models are served: the endpoints configuration that the pipeline and the agent both read.

One YAML file (``FTP_ENDPOINTS_FILE``; deploy/endpoints.example.yaml) names each endpoint and
says where it is and which secret holds its key, never the key itself::

    endpoints:
      openai:
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY   # the variable the pipeline and the agent read the key from
        secret_name: ftp-assets-secrets  # the Kubernetes Secret holding it (documentation for Helm)
        kind: openai                  # openai | vllm (serves our adapters; can unload them)

Every experiment arm records the name of its endpoint beside its model id, so an agent can call a
champion on OpenAI and a challenger on vLLM in the same experiment (docs/serving.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx2
import openai
import yaml

OPENAI_URL = "https://api.openai.com/v1"
Kind = Literal["openai", "vllm"]
KINDS = ("openai", "vllm")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_FIELDS = {"base_url", "api_key_env", "secret_name", "kind"}
# Variables that hold other systems' secrets: sent as an endpoint's bearer token, they would leak.
_NOT_ENDPOINT_KEYS = frozenset(
    {
        "FTP_POSTS_DB_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "DAGSTER_PG_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)


class EndpointsError(ValueError):
    """The endpoints configuration is invalid or lacks a name it must have; one sentence."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str  # ends in /v1, as the openai client's base_url
    api_key_env: str
    kind: Kind = "openai"
    secret_name: str | None = None

    def api_key(self, *, fallback: str | None = None) -> str:
        """The key from ``api_key_env`` at the moment of use; ``fallback`` (a keyless local
        server's placeholder) when unset, else an :class:`EndpointsError` naming the variable."""
        key = os.environ.get(self.api_key_env, "")
        if key:
            return key
        if fallback is not None:
            return fallback
        raise EndpointsError(f"Endpoint {self.name!r} takes its key from {self.api_key_env}, which is not set.")

    def client(self, *, fallback_key: str | None = None, timeout_s: float = 60.0, max_retries: int = 2):
        key = self.api_key(fallback=fallback_key)
        return openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)


def _endpoint(name: str, raw: Any, source: str) -> Endpoint:
    if not _NAME.match(name):
        raise EndpointsError(f"{source}: endpoint name {name!r} must be lowercase letters, digits, '-' or '_'.")
    if not isinstance(raw, Mapping):
        raise EndpointsError(f"{source}: endpoint {name!r} must be a mapping of {', '.join(sorted(_FIELDS))}.")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        # A field like api_key would put a secret in a file many people read.
        raise EndpointsError(
            f"{source}: endpoint {name!r} has unknown field(s) {', '.join(unknown)}; keys are never written here, "
            "only the variable that holds them (api_key_env)."
        )
    base_url = str(raw.get("base_url") or "")
    if not re.match(r"^https?://[^/\s]+", base_url):
        raise EndpointsError(f"{source}: endpoint {name!r} needs a base_url starting with http:// or https://.")
    if "@" in base_url.split("://", 1)[1].split("/", 1)[0]:
        raise EndpointsError(f"{source}: endpoint {name!r} has credentials in its base_url; use api_key_env.")
    api_key_env = str(raw.get("api_key_env") or "")
    if not _ENV_NAME.match(api_key_env):
        raise EndpointsError(f"{source}: endpoint {name!r} needs api_key_env, an environment variable's name.")
    if api_key_env in _NOT_ENDPOINT_KEYS:
        raise EndpointsError(f"{source}: endpoint {name!r} names {api_key_env}, another system's secret, as its key.")
    kind = raw.get("kind", "openai")
    if kind not in KINDS:
        raise EndpointsError(f"{source}: endpoint {name!r} has kind {kind!r}; expected one of {', '.join(KINDS)}.")
    secret = raw.get("secret_name")
    return Endpoint(
        name=name,
        base_url=base_url.rstrip("/"),
        api_key_env=api_key_env,
        kind=kind,
        secret_name=str(secret) if secret else None,
    )


# The endpoints every deployment has; a file's entries of the same name replace them.
OPENAI_ENDPOINT = "openai"  # the OpenAI provider's models, and by default the agent's configured model
SELF_HOSTED_ENDPOINT = "self_hosted"  # by default, where the self-hosted adapters are served
LOCAL_SERVING_PORT = 8100  # `ftp-serve`'s default port
LOCAL_SERVING_URL = f"http://127.0.0.1:{LOCAL_SERVING_PORT}/v1"


def builtin_endpoints(*, openai_base_url: str, serving_url: str) -> dict[str, Endpoint]:
    """``openai`` at OPENAI_BASE_URL (default OpenAI's API) with OPENAI_API_KEY, and
    ``self_hosted`` at FTP_SERVING_URL (default a local ``ftp-serve``) with FTP_SERVING_API_KEY."""
    return {
        OPENAI_ENDPOINT: Endpoint(OPENAI_ENDPOINT, (openai_base_url or OPENAI_URL).rstrip("/"), "OPENAI_API_KEY"),
        SELF_HOSTED_ENDPOINT: Endpoint(
            SELF_HOSTED_ENDPOINT, (serving_url or LOCAL_SERVING_URL).rstrip("/"), "FTP_SERVING_API_KEY", kind="vllm"
        ),
    }


def configured_endpoints(*, openai_base_url: str, serving_url: str, endpoints_file: str) -> dict[str, Endpoint]:
    """The built-in endpoints with the file's (FTP_ENDPOINTS_FILE) over them."""
    endpoints = builtin_endpoints(openai_base_url=openai_base_url, serving_url=serving_url)
    if endpoints_file:
        endpoints |= load_endpoints(endpoints_file)
    return endpoints


def is_loopback_url(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_endpoints(text: str, *, source: str = "the endpoints file") -> dict[str, Endpoint]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise EndpointsError(f"{source} is not valid YAML ({str(error).splitlines()[0]}).") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("endpoints"), Mapping):
        raise EndpointsError(f"{source} must hold a mapping 'endpoints' of name -> endpoint.")
    return {str(name): _endpoint(str(name), raw, source) for name, raw in document["endpoints"].items()}


def load_endpoints(path: str) -> dict[str, Endpoint]:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as error:
        raise EndpointsError(f"FTP_ENDPOINTS_FILE {path} cannot be read ({error.strerror}).") from None
    return parse_endpoints(text, source=f"FTP_ENDPOINTS_FILE {path}")


def unload_adapter(client: openai.OpenAI, model: str) -> str | None:
    """Ask a vLLM-kind endpoint to drop ``model`` (vLLM's ``/v1/unload_lora_adapter``); None when
    done, else why not. Best effort: behind a Service one replica answers; a replica that resolved
    the adapter before keeps it registered until unloaded there or restarted, while a retired
    adapter is never resolved again (docs/serving.md#retirement)."""
    try:
        client.post("/unload_lora_adapter", body={"lora_name": model}, cast_to=httpx2.Response)
    except openai.APIError as error:
        return f"{type(error).__name__}: {getattr(error, 'message', error)}"
    return None
