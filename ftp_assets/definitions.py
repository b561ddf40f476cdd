"""The code location: one ``Definitions`` with the five assets, their checks, resources,
schedule and sensors. ``workspace.yaml`` and ``dagster dev -m ftp_assets.definitions`` load it."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    Definitions,
    EnvVar,
    define_asset_job,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from ftp_assets.assets import data
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import DatasetStorage, PostsDatabaseResource, default_posts_db_url


def _env_or(name: str, default: str) -> str | EnvVar:
    """An EnvVar when the variable is set (its value then never appears in Dagster's config
    display), the embedded default otherwise."""
    return EnvVar(name) if os.environ.get(name) else default


training_cycle = define_asset_job(
    "training_cycle",
    selection=AssetSelection.assets(data.engaged_posts, data.training_jsonl),
    partitions_def=task_partitions,
    description="The weekly training cycle of one task, from the posts to the fine-tuned model.",
)

defs = Definitions(
    assets=load_assets_from_modules([data]),
    asset_checks=load_asset_checks_from_modules([data]),
    jobs=[training_cycle],
    resources={
        "posts_db": PostsDatabaseResource(
            url=_env_or("FTP_POSTS_DB_URL", default_posts_db_url()), table=os.environ.get("FTP_POSTS_TABLE", "posts")
        ),
        "dataset_storage": DatasetStorage(root=_env_or("FTP_DATASETS_DIR", "")),
    },
)
