"""Thin, typed Dagster resources: configuration in, domain objects out."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import Field, PrivateAttr
from upath import UPath

from ftp_assets.adapters.metrics import MetricsError, Sample, Stage, push
from ftp_assets.adapters.posts_db import PostsDatabase, redacted
from ftp_assets.home import ftp_home, home_path, installed_command
from ftp_assets.steps.experiment import DecisionRule, PlanSettings
from ftp_assets.steps.fine_tune import FineTuneOptions
from ftp_assets.steps.loop_metrics import experiment_samples, registry_samples

if TYPE_CHECKING:
    from ftp_assets.adapters.endpoints import Endpoint
    from ftp_assets.adapters.experiments_store import ExperimentStore
    from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore
    from ftp_assets.adapters.trainer_pods import TrainerPodSettings


def default_posts_db_url(home: str = "") -> str:
    """The embedded default: a SQLite file under FTP_HOME (or ``home``), so a newcomer needs no server."""
    return f"sqlite:///{ftp_home(home) / 'posts.sqlite3'}"


class PostsDatabaseResource(ConfigurableResource):
    """The agent's posts (read-only for us). ``url`` is a SQLAlchemy URL (FTP_POSTS_DB_URL)."""

    url: str
    table: str = "posts"

    _db: PostsDatabase | None = PrivateAttr(default=None)
    _experiments: ExperimentStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._db = None
        self._experiments = None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._db is not None:
            self._db.engine.dispose()

    def open(self) -> PostsDatabase:
        if self._db is None:
            self._db = PostsDatabase(self.url, self.table)
            self._db.check_table()
        return self._db

    def experiments(self) -> ExperimentStore:
        """Our experiments table beside the posts, created if missing (checked once)."""
        if self._experiments is None:
            from ftp_assets.adapters.experiments_store import ExperimentStore

            self._experiments = ExperimentStore(self.open().engine)
            self._experiments.init_schema()
        return self._experiments

    def fine_tuning_jobs(self) -> FineTuningJobStore:
        """Our fine-tuning job records beside the posts; the experiments' migrations create them."""
        from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore

        return FineTuningJobStore(self.experiments().engine)


class DatasetStorage(ConfigurableResource):
    """Where engaged-post snapshots and training files are written: a local working folder
    (FTP_DATASETS_DIR, default FTP_HOME/datasets), and with ``shared_url`` (FTP_STORAGE_URL) a
    copy of the finished files under ``<shared_url>/datasets/<task>/<run id>/``, which a step
    in another pod (a retry) fetches back into its own working folder."""

    root: str = ""
    shared_url: str = ""

    def folder(self, task: str, run_id: str) -> Path:
        base = Path(self.root).expanduser() if self.root else home_path("datasets")
        folder = base / task / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def publish(self, folder: Path, *files: str | None) -> str:
        """Copies finished files of a working folder (``folder(task, run_id)``) to the shared
        storage; the URL of their shared folder, "" without shared storage."""
        if not self.shared_url:
            return ""
        shared = UPath(self.shared_url) / "datasets" / folder.parent.name / folder.name
        shared.fs.makedirs(shared.path, exist_ok=True)
        for file in files:
            if file:
                shared.fs.put_file(file, (shared / Path(file).name).path)
        return str(shared)

    def local_file(self, path: str, shared_folder: str) -> str:
        """``path`` when this pod wrote it; else its copy in ``shared_folder``, fetched once into
        this pod's working folder of the same task and run."""
        if not shared_folder or Path(path).exists():
            return path
        source = UPath(shared_folder) / Path(path).name
        local = self.folder(source.parent.parent.name, source.parent.name) / source.name
        if not local.exists():
            partial = local.with_name(local.name + ".part")  # never a half-fetched file under its name
            source.fs.get_file(source.path, str(partial))
            partial.replace(local)
        return str(local)


# The local OpenAI-compatible service (`ftp-assets local-openai`) is the embedded default provider.
LOCAL_OPENAI_PORT = 8765
LOCAL_OPENAI_BASE_URL = f"http://127.0.0.1:{LOCAL_OPENAI_PORT}/v1"
LOCAL_OPENAI_API_KEY = "sk-local-ftp"


def local_service_down(base_url: str) -> str:
    """What a step says when the local service (no OPENAI_API_KEY) does not answer."""
    return (
        f"Nothing answers at {base_url}, where the local OpenAI-compatible service should be (OPENAI_API_KEY "
        f"is unset): start it with `{installed_command('ftp-assets')} local-openai` (`make ui` also starts it, "
        "with the UIs), or set OPENAI_API_KEY; then materialize again."
    )


class FineTuningSettings(ConfigurableResource):
    """How jobs are made: the provider (FTP_PROVIDER: ``openai`` or any compatible API by
    OPENAI_BASE_URL, or ``self_hosted``, the LoRA trainer of :class:`SelfHostedTraining`), base
    model per task, hyperparameters ("auto" lets the provider choose), the cost guard and the
    overall timeout."""

    provider: Literal["openai", "self_hosted"] = "openai"
    hook_base_model: str = "gpt-4o-mini-2024-07-18"
    body_base_model: str = "gpt-4o-mini-2024-07-18"
    n_epochs: str = "auto"
    batch_size: str = "auto"
    learning_rate_multiplier: str = "auto"
    # With n_epochs "auto", the cost guard assumes the provider's rule (OpenAI's cookbook) unless
    # this caps it.
    max_auto_epochs: int | None = None
    seed: int = 42
    budget_usd: float = 50.0
    # The spend per task and 7 days above which the FtpWeeklyCostOverBudget alert fires (the
    # data-threshold sensors may train more than once a week); nothing stops at it.
    weekly_budget_usd: float = 100.0
    timeout_hours: float = 24.0
    poll_initial_seconds: float = 5.0
    poll_max_seconds: float = 60.0
    # The local profile's provider without a key is the local service at this address, which
    # nobody starts while a step waits: not answering fails the step at once. "" (production, or
    # a key): a provider's outages are waited out.
    local_service_url: str = ""

    def base_model(self, task: str) -> str:
        return self.hook_base_model if task == "hook" else self.body_base_model

    def fine_tune_options(self, task: str) -> FineTuneOptions:
        """The settings as the fine-tuning step takes them; a hyperparameter is "auto" or a number."""

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = getattr(self, name)
            if value == "auto":
                return "auto"
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{name} must be 'auto' or a number, got {value!r}.") from None

        return FineTuneOptions(
            base_model=self.base_model(task),
            n_epochs=number("n_epochs", int),
            batch_size=number("batch_size", int),
            learning_rate_multiplier=number("learning_rate_multiplier", float),
            max_auto_epochs=self.max_auto_epochs,
            seed=self.seed,
            budget_usd=self.budget_usd,
            timeout_s=self.timeout_hours * 3600,
            poll_initial_s=self.poll_initial_seconds,
            poll_max_s=self.poll_max_seconds,
            unreachable_hint=local_service_down(self.local_service_url) if self.local_service_url else None,
        )


# The tiny base the trainer builds on first use under FTP_HOME when no base model is configured
# (local profile only): tests and the laptop, never a real model. Jobs name it by TINY_BASE_NAME,
# so that their keys do not depend on where FTP_HOME is.
TINY_BASE_FOLDER = "models/tiny-chat-base"
TINY_BASE_NAME = "ftp-tiny-chat-base"


class SelfHostedTraining(ConfigurableResource):
    """The self-hosted LoRA trainer (``ftp-train``, the ``train`` extra) that ``FTP_PROVIDER=
    self_hosted`` runs through Dagster Pipes: as a subprocess (``launcher="subprocess"``, the local
    profile) or as a Kubernetes pod of its own image (``"kubernetes"``, production). The
    hyperparameter defaults suit a 0.5-8 B instruct model (docs/trainer.md)."""

    launcher: Literal["subprocess", "kubernetes"] = "subprocess"
    # A model folder (the model cache volume in production) or a name in the local Hugging Face
    # cache; "" is the tiny base under FTP_HOME, built on first use (FTP_SELF_HOSTED_BASE_MODEL).
    base_model: str = ""
    # Checkpoints, so a crashed attempt resumes (FTP_TRAINER_WORK_DIR); "" is FTP_HOME/training.
    work_dir: str = ""
    # Finished adapters, one folder per job; "" is FTP_HOME/adapters. With FTP_STORAGE_URL,
    # <url>/adapters, which the trainer pod writes and the code location reads.
    adapters_url: str = ""
    # The trainer pod (launcher "kubernetes"): FTP_TRAINER_IMAGE, FTP_TRAINER_NAMESPACE and
    # FTP_TRAINER_POD_SPEC, a JSON PodSpec fragment (GPUs, node selector, tolerations, volumes).
    image: str = ""
    namespace: str = ""
    pod_spec: str = ""
    epochs: int = Field(default=3, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    # "all-linear", or module names separated by commas ("q_proj,v_proj").
    target_modules: str = "all-linear"
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=1024, ge=16)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    seed: int = 42
    # Torch's CPU threads (0: torch's default). Not part of the job's key: it changes rounding only.
    threads: int = Field(default=0, ge=0)
    # What an hour of the trainer's GPU costs: the run's cost is its duration at this price.
    gpu_hour_usd: float = Field(default=0.0, ge=0)

    def hyperparameters(self) -> dict[str, Any]:
        """The trainer's config as it takes it (``ftp-train train --config``), threads excluded."""
        modules = self.target_modules.strip()
        return {
            "warmup_ratio": self.warmup_ratio,
            "lr_scheduler": self.lr_scheduler,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            # Sorted: the same modules in another order are the same model, and the same job key.
            "target_modules": modules if modules == "all-linear" else sorted(m.strip() for m in modules.split(",")),
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_seq_length": self.max_seq_length,
            "seed": self.seed,
        }

    @staticmethod
    def missing_local_modules() -> list[str]:
        """What the trainer needs in this Python to run as a subprocess, and is not installed."""
        return [name for name in ("ftp_trainer", "torch", "trl", "peft") if importlib.util.find_spec(name) is None]

    def pod_settings(self) -> TrainerPodSettings:
        """The trainer pod's image, namespace and PodSpec fragment (launcher "kubernetes")."""
        from ftp_assets.adapters.trainer_pods import TrainerPodSettings, parse_pod_spec

        return TrainerPodSettings(
            image=self.image, namespace=self.namespace, pod_spec=parse_pod_spec(self.pod_spec) if self.pod_spec else {}
        )

    def base_model_name(self) -> str:
        """The base as jobs name it: the configured one, or the tiny base's name."""
        return self.base_model or TINY_BASE_NAME

    def base_model_location(self) -> str:
        """Where the trainer loads the base from: the configured one, or the tiny base's folder
        under FTP_HOME (built there on first use)."""
        return self.base_model or str(ftp_home() / TINY_BASE_FOLDER)

    def adapters_root(self) -> str:
        """Where finished adapters live, one folder per job (serving reads them there too)."""
        return self.adapters_url or str(home_path("adapters"))

    @property
    def builds_tiny_base(self) -> bool:
        return not self.base_model

    def fine_tune_options(self, settings: FineTuningSettings) -> FineTuneOptions:
        """The step's options: this base and these hyperparameters, the shared cost guard and
        timeout. The estimate prices tokens at 0: the cost is GPU time, known afterwards."""
        return FineTuneOptions(
            base_model=self.base_model_name(),
            n_epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate_multiplier="auto",
            seed=self.seed,
            extra_hyperparameters=self.hyperparameters(),
            usd_per_million_training_tokens=0.0,
            budget_usd=settings.budget_usd,
            timeout_s=settings.timeout_hours * 3600,
            poll_initial_s=settings.poll_initial_seconds,
            poll_max_s=settings.poll_max_seconds,
        )


class MlflowResource(ConfigurableResource):
    """MLflow tracking and registry: MLFLOW_TRACKING_URI, or a SQLite store under FTP_HOME.
    Credentials for a server come from MLflow's own env vars (MLFLOW_TRACKING_USERNAME/PASSWORD
    or MLFLOW_TRACKING_TOKEN), never from config."""

    tracking_uri: str = ""

    def resolved_uri(self) -> str:
        from ftp_assets.adapters.mlflow_registry import local_tracking_uri

        return self.tracking_uri or local_tracking_uri(home_path("mlflow"))

    def client(self):
        from mlflow import MlflowClient

        uri = self.resolved_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """MLflow's errors quote the server's URL: re-raise them with any credentials hidden."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as error:
            uri = self.resolved_uri()
            raise Failure(f"MLflow at {redacted(uri)} failed: {str(error).replace(uri, redacted(uri))}") from None


# The key a keyless local server (`ftp-serve` without --api-key-env) is called with.
LOCAL_SERVING_API_KEY = "no-key-local"


def local_key(endpoint_name: str) -> str | None:
    """The key of a built-in endpoint's local server (the local profile), used when its variable is unset."""
    from ftp_assets.adapters.endpoints import OPENAI_ENDPOINT, SELF_HOSTED_ENDPOINT

    return {OPENAI_ENDPOINT: LOCAL_OPENAI_API_KEY, SELF_HOSTED_ENDPOINT: LOCAL_SERVING_API_KEY}.get(endpoint_name)


class ServingEndpoints(ConfigurableResource):
    """Where models answer chat completions (ftp_assets/adapters/endpoints.py): the endpoints
    file (FTP_ENDPOINTS_FILE) over the built-in ``openai`` and ``self_hosted`` endpoints, the
    endpoint of the self-hosted adapters (FTP_SERVING_ENDPOINT) and of the agent's configured
    model (FTP_AGENT_ENDPOINT). Keys are read from each endpoint's variable when a client is made;
    ``local_keys`` (the local profile) lets the built-in endpoints fall back to the local servers'."""

    endpoints_file: str = ""
    openai_base_url: str = ""
    serving_url: str = ""
    serving_endpoint: str = "self_hosted"
    agent_endpoint: str = "openai"
    local_keys: bool = False

    def endpoints(self) -> dict[str, Endpoint]:
        from ftp_assets.adapters.endpoints import configured_endpoints

        return configured_endpoints(
            openai_base_url=self.openai_base_url, serving_url=self.serving_url, endpoints_file=self.endpoints_file
        )

    def endpoint(self, name: str) -> Endpoint:
        from ftp_assets.adapters.endpoints import EndpointsError

        endpoints = self.endpoints()
        if name not in endpoints:
            raise EndpointsError(f"No endpoint is named {name!r}; known: {', '.join(sorted(endpoints))}.")
        return endpoints[name]

    def for_provider(self, provider: str) -> str:
        """The endpoint serving a provider's models: OpenAI's own, or the self-hosted serving."""
        from ftp_assets.adapters.endpoints import OPENAI_ENDPOINT

        return self.serving_endpoint if provider == "self_hosted" else OPENAI_ENDPOINT

    def client(self, name: str, *, timeout_s: float = 60.0, max_retries: int = 2):
        fallback = local_key(name) if self.local_keys else None
        return self.endpoint(name).client(fallback_key=fallback, timeout_s=timeout_s, max_retries=max_retries)


class ExperimentSettings(ConfigurableResource):
    """The A/B experiment: the agent's current models (the first champions), the challenger's
    traffic shares, and the decision rule's parameters (docs/experiment.md#settings). A new
    experiment fixes its plan from these at its start; later changes apply to later experiments."""

    hook_agent_model: str = "gpt-4o-mini-2024-07-18"
    body_agent_model: str = "gpt-4o-mini-2024-07-18"
    # The challenger's share at the start, and after the guardrail look (equal: no ramp).
    challenger_share: float = Field(default=0.10, gt=0, lt=1)
    ramped_share: float = Field(default=0.50, gt=0, lt=1)
    ramp_min_challenger_posts: int = Field(default=200, ge=2)
    ramp_grace_minutes: float = Field(default=60.0, ge=0)
    maturity_hours: float = 24.0
    decision_rule: Literal["group_sequential", "always_valid"] = "group_sequential"
    # The group-sequential rule's false-promotion rate (one-sided) and its spending function.
    one_sided_alpha: float = Field(default=0.025, gt=0, lt=0.5)
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"
    # The always-valid interval's level: of the always-valid rule, and of the harm and ramp checks.
    two_sided_alpha: float = Field(default=0.05, gt=0, lt=1)
    # The name two_sided_alpha had before plans; still read, so a deployment that set it keeps
    # its level (and an experiment started before plans keeps deciding at it).
    alpha: float | None = Field(default=None, gt=0, lt=1, description="deprecated: use two_sided_alpha")
    minimum_lift: float = Field(default=0.0, ge=0)
    minimum_detectable_effect: float = 0.10
    max_duration_hours: float = 168.0
    srm_threshold: float = Field(default=0.001, gt=0, lt=1)
    # Weeks of posts before the start that plan the sample (their rate) and give the covariates.
    history_weeks: float = Field(default=4.0, gt=0)
    regression_adjustment: bool = True

    def agent_model(self, task: str) -> str:
        return self.hook_agent_model if task == "hook" else self.body_agent_model

    @property
    def interval_alpha(self) -> float:
        return self.alpha if self.alpha is not None else self.two_sided_alpha

    def decision_rule_settings(self) -> DecisionRule:
        return DecisionRule(
            maturity_hours=self.maturity_hours,
            alpha=self.interval_alpha,
            minimum_lift=self.minimum_lift,
            minimum_detectable_effect=self.minimum_detectable_effect,
            max_duration_hours=self.max_duration_hours,
            srm_threshold=self.srm_threshold,
        )

    def planning(self) -> PlanSettings:
        return PlanSettings(
            rule=self.decision_rule,
            one_sided_alpha=self.one_sided_alpha,
            two_sided_alpha=self.interval_alpha,
            spending=self.spending,
            initial_share=self.challenger_share,
            # A ramped share below the initial one means no ramp.
            ramped_share=max(self.ramped_share, self.challenger_share),
            ramp_min_challenger_posts=self.ramp_min_challenger_posts,
            ramp_grace_minutes=self.ramp_grace_minutes,
            maturity_hours=self.maturity_hours,
            max_duration_hours=self.max_duration_hours,
            minimum_lift=self.minimum_lift,
            srm_threshold=self.srm_threshold,
            history_weeks=self.history_weeks,
            regression_adjustment=self.regression_adjustment,
        )


class MetricsPublisher(ConfigurableResource):
    """The loop's Prometheus metrics, pushed to the Pushgateway at ``pushgateway_url``
    (FTP_PUSHGATEWAY_URL); with none, nothing is published. A gateway that does not answer is a
    warning in the run's log, never a failed step: the metrics watch the loop, they do not gate it."""

    pushgateway_url: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.pushgateway_url)

    def publish(self, log: Any, stage: Stage, task: str | None, samples: Callable[[], Iterable[Sample]]) -> None:
        """Replaces the group of ``stage`` (and ``task``) with the ``samples`` the callable reads
        (only when a gateway is configured); ``log`` is a Dagster or standard logger. Nothing here
        fails a step: a gateway or a store that fails is a warning, a sample outside the catalogue
        (our bug) an error in the log."""
        if not self.enabled:
            return
        try:
            problem = push(self.pushgateway_url, stage, task, list(samples()))
        except MetricsError as error:  # our bug, loud in the log (the tests fail on it), not the run's failure
            log.error(f"the {stage} metrics were not published: {error}")
            return
        except Exception as error:  # the type only: a store's message may quote its URL
            problem = f"the {stage} metrics were not published: reading them failed ({type(error).__name__})"
        if problem:
            log.warning(problem)

    def publish_experiments(self, log: Any, store: ExperimentStore, task: str, settings: ExperimentSettings) -> None:
        """The experiments table's picture of the task (after a start, a look, a decision, a rollback)."""
        legacy_max_duration = timedelta(hours=settings.max_duration_hours)
        self.publish(
            log, "experiment", task, lambda: experiment_samples(store, task, legacy_max_duration=legacy_max_duration)
        )

    def publish_registry(self, log: Any, mlflow: MlflowResource, store: ExperimentStore, task: str) -> None:
        """The task's champion in the registry and its last promotion (after a decision or a rollback)."""

        def samples() -> list[Sample]:
            from ftp_assets.adapters.mlflow_registry import champion

            version = champion(mlflow.client(), task)
            return registry_samples(None if version is None else str(version.version), store.history(task))

        self.publish(log, "registry", task, samples)
