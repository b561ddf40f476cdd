"""The code location: one ``Definitions`` with the five assets, their checks, resources,
jobs, schedule and sensors. ``workspace.yaml`` and ``dagster dev -m ftp_assets.definitions``
load it."""

import os

from dagster import (
    AssetSelection,
    Definitions,
    EnvVar,
    define_asset_job,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)
from dagster_openai import OpenAIResource

from ftp_assets import automation
from ftp_assets.assets import data, experiment, fine_tuning
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
from ftp_assets.rollback import rollback_job


def _env_or(name: str, default: str | None) -> str | EnvVar | None:
    """An EnvVar when the variable is set (its value then never shows in Dagster's config
    display), the embedded default otherwise."""
    return EnvVar(name) if os.environ.get(name) else default


def openai_resource() -> OpenAIResource:
    """OpenAI when OPENAI_API_KEY is set (OPENAI_BASE_URL may point at another compatible API);
    the local service of `ftp local-openai` otherwise."""
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIResource(api_key=EnvVar("OPENAI_API_KEY"), base_url=_env_or("OPENAI_BASE_URL", None))
    return OpenAIResource(api_key=LOCAL_OPENAI_API_KEY, base_url=os.environ.get("OPENAI_BASE_URL") or LOCAL_OPENAI_BASE_URL)


training_cycle = define_asset_job(
    "training_cycle",
    selection=AssetSelection.assets(data.engaged_posts, data.training_jsonl, fine_tuning.fine_tuned_model),
    description="The weekly training cycle of one task, from the posts to the fine-tuned challenger.",
)
experiment_evaluation = define_asset_job(
    "experiment_evaluation",
    selection=AssetSelection.assets(experiment.ab_test_result, experiment.registered_model),
    description="Evaluate the task's running experiment and act on a final decision.",
)

defs = Definitions(
    assets=load_assets_from_modules([data, fine_tuning, experiment]),
    asset_checks=load_asset_checks_from_modules([data]),
    jobs=[training_cycle, experiment_evaluation, rollback_job],
    schedules=[automation.weekly_training_schedule()],
    sensors=[*automation.data_threshold_sensors(), automation.experiment_evaluation_sensor()],
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
    },
)
