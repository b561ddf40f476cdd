"""Thin, typed Dagster resources: configuration in, domain objects out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import Field, PrivateAttr

from ftp_assets.adapters.posts_db import PostsDatabase, redacted
from ftp_assets.home import ftp_home, home_path
from ftp_assets.steps.experiment import DecisionRule
from ftp_assets.steps.fine_tune import FineTuneOptions

if TYPE_CHECKING:
    from ftp_assets.adapters.experiments_store import ExperimentStore


def default_posts_db_url() -> str:
    """The embedded default: a SQLite file under FTP_HOME, so a newcomer needs no server."""
    return f"sqlite:///{ftp_home() / 'posts.sqlite3'}"


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


class DatasetStorage(ConfigurableResource):
    """Where engaged-post snapshots and training files are written (FTP_DATASETS_DIR); the
    default is FTP_HOME/datasets. On Kubernetes point it at a volume every run pod mounts."""

    root: str = ""

    def folder(self, task: str, run_id: str) -> Path:
        base = Path(self.root).expanduser() if self.root else home_path("datasets")
        folder = base / task / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# The local OpenAI-compatible service (`ftp local-openai`) is the embedded default provider.
LOCAL_OPENAI_PORT = 8765
LOCAL_OPENAI_BASE_URL = f"http://127.0.0.1:{LOCAL_OPENAI_PORT}/v1"
LOCAL_OPENAI_API_KEY = "sk-local-ftp"


class FineTuningSettings(ConfigurableResource):
    """How jobs are made: base model per task, hyperparameters ("auto" lets the provider choose),
    the cost guard and the overall timeout."""

    hook_base_model: str = "gpt-4o-mini-2024-07-18"
    body_base_model: str = "gpt-4o-mini-2024-07-18"
    n_epochs: str = "auto"
    batch_size: str = "auto"
    learning_rate_multiplier: str = "auto"
    seed: int = 42
    budget_usd: float = 50.0
    timeout_hours: float = 24.0
    poll_initial_seconds: float = 5.0
    poll_max_seconds: float = 60.0

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
            seed=self.seed,
            budget_usd=self.budget_usd,
            timeout_s=self.timeout_hours * 3600,
            poll_initial_s=self.poll_initial_seconds,
            poll_max_s=self.poll_max_seconds,
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


class ExperimentSettings(ConfigurableResource):
    """The A/B experiment: the agent's current models (the first champions), the challenger's
    traffic share, and the decision rule's parameters."""

    hook_agent_model: str = "gpt-4o-mini-2024-07-18"
    body_agent_model: str = "gpt-4o-mini-2024-07-18"
    challenger_share: float = Field(default=0.10, gt=0, lt=1)
    maturity_hours: float = 24.0
    alpha: float = 0.05
    minimum_lift: float = 0.0
    minimum_detectable_effect: float = 0.10
    max_duration_hours: float = 168.0
    srm_threshold: float = 0.001

    def agent_model(self, task: str) -> str:
        return self.hook_agent_model if task == "hook" else self.body_agent_model

    def decision_rule(self) -> DecisionRule:
        return DecisionRule(
            maturity_hours=self.maturity_hours,
            alpha=self.alpha,
            minimum_lift=self.minimum_lift,
            minimum_detectable_effect=self.minimum_detectable_effect,
            max_duration_hours=self.max_duration_hours,
            srm_threshold=self.srm_threshold,
        )
