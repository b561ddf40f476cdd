"""Where things are on this machine: the embedded defaults' state, one folder, ``FTP_HOME``; and
the commands installed beside this Python (:func:`installed_command`).

Default ``~/.ftp_assets``. Layout (each part creates its own folder on first use)::

    posts.sqlite3      the embedded posts database (when FTP_POSTS_DB_URL is unset)
    dagster/           DAGSTER_HOME of the local Dagster instance
    mlflow/            the local MLflow tracking and registry store (mlflow.db, artifacts/)
    local_openai/      state of the local OpenAI-compatible service (files, jobs, models)
    datasets/          training_jsonl output and engaged_posts snapshots
    models/            the self-hosted trainer's tiny base (when no base model is configured)
    training/          the self-hosted trainer's checkpoints, one folder per job
    adapters/          finished self-hosted adapters, one folder per job
"""

from __future__ import annotations

import os
import shutil
import sys
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


def installed_command(name: str) -> str:
    """How to type a command of this installation (``ftp-assets``, ``dagster``, ``mlflow``) so that
    it works as printed: the bare name when the PATH finds this very one (an activated virtualenv,
    an image), else its path in the virtualenv's bin, relative to the current folder when inside it."""
    path = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and Path(found).resolve() == path.resolve():
        return name
    cwd = Path.cwd()
    return f"./{path.relative_to(cwd)}" if path.is_relative_to(cwd) else str(path)
