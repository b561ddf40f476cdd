"""Where the embedded defaults keep their state: one folder, ``FTP_HOME``.

Default ``~/.ftp_assets``. Layout (each part creates its own folder on first use)::

    posts.sqlite3      the embedded posts database (when FTP_POSTS_DB_URL is unset)
    dagster/           DAGSTER_HOME of the local Dagster instance
    mlflow/            the local MLflow tracking and registry store (mlflow.db, artifacts/)
    local_openai/      state of the local OpenAI-compatible service (files, jobs, models)
    datasets/          training_jsonl output and engaged_posts snapshots
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_FTP_HOME = Path("~/.ftp_assets")


def ftp_home(configured: str = "") -> Path:
    """``configured`` (the deployment settings' FTP_HOME), else FTP_HOME, else the default."""
    home = Path(configured or os.environ.get("FTP_HOME") or DEFAULT_FTP_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_path(*parts: str) -> Path:
    """A folder under FTP_HOME, created if missing."""
    path = ftp_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
