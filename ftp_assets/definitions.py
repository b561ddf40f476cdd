"""The code location: one ``Definitions``, merged from the data, training and experiment groups
with the resources they share. ``workspace.yaml`` and ``dagster dev -m ftp_assets.definitions``
load it."""

import os
from typing import overload

from dagster import Definitions, EnvVar
from dagster_openai import OpenAIResource

from ftp_assets import data, experiment, training
from ftp_assets.resources import (
    LOCAL_OPENAI_API_KEY,
    LOCAL_OPENAI_BASE_URL,
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MlflowResource,
    PostsDatabaseResource,
    default_posts_db_url,
)


@overload
def _env_or(name: str, default: str) -> str | EnvVar: ...
@overload
def _env_or(name: str, default: None) -> str | EnvVar | None: ...
def _env_or(name: str, default: str | None) -> str | EnvVar | None:
    """An EnvVar when the variable is set (its value then never shows in Dagster's config
    display), the embedded default otherwise."""
    return EnvVar(name) if os.environ.get(name) else default


def openai_resource() -> OpenAIResource:
    """OpenAI when OPENAI_API_KEY is set (OPENAI_BASE_URL may point at another compatible API);
    the local service of `ftp local-openai` otherwise."""
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIResource(api_key=EnvVar("OPENAI_API_KEY"), base_url=_env_or("OPENAI_BASE_URL", None))
    return OpenAIResource(
        api_key=LOCAL_OPENAI_API_KEY, base_url=os.environ.get("OPENAI_BASE_URL") or LOCAL_OPENAI_BASE_URL
    )


def shared_resources() -> Definitions:
    """The resources every group uses, from the environment (embedded defaults when unset)."""
    return Definitions(
        resources={
            "posts_db": PostsDatabaseResource(
                # The embedded default (which creates FTP_HOME) only when no URL is configured.
                url=EnvVar("FTP_POSTS_DB_URL") if os.environ.get("FTP_POSTS_DB_URL") else default_posts_db_url(),
                table=os.environ.get("FTP_POSTS_TABLE", "posts"),
            ),
            "dataset_storage": DatasetStorage(root=_env_or("FTP_DATASETS_DIR", "")),
            "openai": openai_resource(),
            "fine_tuning": FineTuningSettings(),
            "mlflow": MlflowResource(tracking_uri=_env_or("MLFLOW_TRACKING_URI", "")),
            "experiment_settings": ExperimentSettings(),
        }
    )


defs = Definitions.merge(data.build_defs(), training.build_defs(), experiment.build_defs(), shared_resources())
