"""The deployment profile: every ``FTP_*`` setting, read once when the definitions are built.

``FTP_DEPLOYMENT=local`` (the default) keeps the embedded defaults: the local OpenAI-compatible
service, a SQLite posts database and MLflow store under ``FTP_HOME``. ``FTP_DEPLOYMENT=production``
has no fallback: each external system must be configured, or the code location does not load.
Secrets (the OpenAI key, the posts database's and MLflow's URLs) are only checked for presence
here; the resources read them as Dagster ``EnvVar``s when a run starts.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ftp_assets.adapters.endpoints import Endpoint, EndpointsError, configured_endpoints, is_loopback_url

# Read by the resources as EnvVars, never by this object: they may hold credentials.
SECRET_VARIABLES = ("OPENAI_API_KEY", "FTP_POSTS_DB_URL", "MLFLOW_TRACKING_URI", "FTP_ALERT_WEBHOOK_URL")
PRODUCTION_REQUIRED = ("OPENAI_API_KEY", "FTP_POSTS_DB_URL", "MLFLOW_TRACKING_URI", "FTP_STORAGE_URL")
# The self-hosted trainer needs no OpenAI key, but its image and a base model on the cache volume.
SELF_HOSTED_PRODUCTION_REQUIRED = (
    "FTP_POSTS_DB_URL",
    "MLFLOW_TRACKING_URI",
    "FTP_STORAGE_URL",
    "FTP_TRAINER_IMAGE",
    "FTP_SELF_HOSTED_BASE_MODEL",
)

# The settings whose values must be positive numbers, with the type each takes.
POSITIVE_NUMBERS: dict[str, type[int] | type[float]] = {
    "training_new_posts_threshold": int,
    "min_training_interval_hours": float,
    "training_sensor_interval_seconds": int,
    "experiment_sensor_interval_seconds": int,
}


class SettingsError(ValueError):
    """The environment does not describe a deployment that can load; one sentence."""


def _secret_variables_set() -> frozenset[str]:
    return frozenset(name for name in SECRET_VARIABLES if os.environ.get(name))


class DeploymentSettings(BaseSettings):
    """The ``FTP_*`` variables (and ``OPENAI_BASE_URL``); empty means unset."""

    model_config = SettingsConfigDict(
        env_prefix="FTP_", env_ignore_empty=True, str_strip_whitespace=True, frozen=True, extra="ignore"
    )

    deployment: Literal["local", "production"] = "local"
    # Whether the schedule and sensors start running in production (local keeps them stopped).
    automation: Literal["on", "off"] = "on"
    home: str = ""
    posts_table: str = "posts"
    datasets_dir: str = ""
    # Shared storage of asset values and datasets (s3://bucket/prefix, gs://..., file:///mnt/...).
    storage_url: str = ""
    openai_base_url: str = Field(default="", validation_alias="OPENAI_BASE_URL")
    # Who fine-tunes: OpenAI (or the compatible API at OPENAI_BASE_URL), or the self-hosted LoRA
    # trainer, run as a subprocess in the local profile and as a Kubernetes pod in production.
    provider: Literal["openai", "self_hosted"] = "openai"
    self_hosted_base_model: str = ""
    trainer_work_dir: str = ""
    trainer_image: str = ""
    trainer_namespace: str = ""
    trainer_pod_spec: str = ""
    # Where models are served (ftp_assets/adapters/endpoints.py, docs/serving.md): the endpoints file
    # the agent reads too, the endpoint serving the self-hosted adapters, the one serving the
    # agent's configured model (the first champion), and the built-in self_hosted endpoint's URL.
    endpoints_file: str = ""
    serving_endpoint: str = "self_hosted"
    agent_endpoint: str = "openai"
    serving_url: str = ""
    training_cron: str = "0 2 * * 0"
    training_timezone: str = "UTC"
    training_new_posts_threshold: int = 100
    min_training_interval_hours: float = 24.0
    training_sensor_interval_seconds: int = 300
    experiment_sensor_interval_seconds: int = 3600
    # Observability (docs/observability.md): the Pushgateway each step pushes its metrics to ("":
    # none), and the failure notifications (off without a webhook URL, a secret read at use).
    pushgateway_url: str = ""
    alert_webhook_format: Literal["json", "slack"] = "json"
    # The Dagster UI's address, for the run link of a notification ("": the run id alone).
    dagster_ui_url: str = ""
    # Which secret variables are set (names only, never values), taken when the settings are read.
    _secrets_set: frozenset[str] = PrivateAttr(default_factory=_secret_variables_set)

    @field_validator(*POSITIVE_NUMBERS, mode="before")
    @classmethod
    def _positive(cls, raw: Any, info: Any) -> Any:
        kind = POSITIVE_NUMBERS[info.field_name]
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            value = 0
        if value <= 0:
            raise ValueError(f"FTP_{info.field_name.upper()} must be a positive {kind.__name__}, got {raw!r}.")
        return value

    @field_validator("pushgateway_url")
    @classmethod
    def _pushgateway(cls, raw: str) -> str:
        # Checked at load, in words that never quote it (it may carry a password).
        from ftp_assets.adapters.metrics import url_problem

        if raw and (problem := url_problem(raw)):
            raise ValueError(f"{problem}.")
        return raw

    @field_validator("trainer_pod_spec")
    @classmethod
    def _pod_spec(cls, raw: str) -> str:
        # A malformed pod spec stops the code location loading, not a training run days later.
        if raw:
            from ftp_assets.adapters.trainer_pods import parse_pod_spec

            parse_pod_spec(raw)
        return raw

    def endpoints(self) -> dict[str, Endpoint]:
        """The built-in endpoints with the file's (FTP_ENDPOINTS_FILE) over them."""
        return configured_endpoints(
            openai_base_url=self.openai_base_url, serving_url=self.serving_url, endpoints_file=self.endpoints_file
        )

    def _check_endpoints(self) -> None:
        """A bad endpoints file, or a name it lacks, stops the code location loading."""
        try:
            endpoints = self.endpoints()
        except EndpointsError as error:
            raise SettingsError(str(error)) from None
        named = {"FTP_SERVING_ENDPOINT": self.serving_endpoint, "FTP_AGENT_ENDPOINT": self.agent_endpoint}
        for variable, name in named.items():
            if name not in endpoints:
                known = ", ".join(sorted(endpoints))
                raise SettingsError(
                    f"{variable}={name} names no endpoint (FTP_ENDPOINTS_FILE defines them); known: {known}."
                )

    @classmethod
    def from_environment(cls, *, require_complete: bool = True) -> DeploymentSettings:
        """The settings of this process's environment; a :class:`SettingsError` of one sentence
        when a value is invalid or (``require_complete``) production lacks a required variable."""
        try:
            settings = cls()
        except ValidationError as error:
            raise SettingsError(" ".join(_message(problem) for problem in error.errors())) from None
        settings._check_endpoints()
        missing = settings.missing_for_production() if require_complete else []
        if missing:
            raise SettingsError(f"FTP_DEPLOYMENT=production has no embedded defaults: set {', '.join(missing)}.")
        return settings

    @property
    def production(self) -> bool:
        return self.deployment == "production"

    @property
    def automation_running(self) -> bool:
        """Whether the schedule and sensors start running when the code location loads."""
        return self.production and self.automation == "on"

    def has(self, secret: str) -> bool:
        return secret in self._secrets_set

    def secret_value(self, secret: str) -> str:
        """The secret's value, read at the moment of use (for the ``ftp-assets`` command, outside Dagster)."""
        return os.environ.get(secret, "") if self.has(secret) else ""

    @property
    def self_hosted(self) -> bool:
        return self.provider == "self_hosted"

    def missing_for_production(self) -> list[str]:
        if not self.production:
            return []
        configured = set(self._secrets_set) | {
            name
            for name, value in (
                ("FTP_STORAGE_URL", self.storage_url),
                ("FTP_SELF_HOSTED_BASE_MODEL", self.self_hosted_base_model),
                ("FTP_TRAINER_IMAGE", self.trainer_image),
            )
            if value
        }
        required = SELF_HOSTED_PRODUCTION_REQUIRED if self.self_hosted else PRODUCTION_REQUIRED
        missing = [name for name in required if name not in configured]
        if self.self_hosted:
            try:
                serving_url = self.endpoints()[self.serving_endpoint].base_url
            except (EndpointsError, KeyError):
                serving_url = ""  # reported by _check_endpoints
            if serving_url and is_loopback_url(serving_url):
                # The built-in endpoint's default is a laptop's ftp-serve, which no pod reaches.
                missing.append("FTP_SERVING_URL (or FTP_ENDPOINTS_FILE)")
        return missing


def _message(problem: Any) -> str:
    """Our own messages as written; pydantic's prefixed with the variable."""
    error = problem.get("ctx", {}).get("error")
    if isinstance(error, ValueError):
        return str(error)
    name = "FTP_" + "_".join(str(part) for part in problem["loc"]).upper()
    return f"{name}: {problem['msg']} (got {problem.get('input')!r})."
