"""Thin, typed Dagster resources: configuration in, domain objects out."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from ftp_assets.home import ftp_home, home_path
from ftp_assets.posts_db import PostsDatabase


def default_posts_db_url() -> str:
    """The embedded default: a SQLite file under FTP_HOME, so a newcomer needs no server."""
    return f"sqlite:///{ftp_home() / 'posts.sqlite3'}"


class PostsDatabaseResource(ConfigurableResource):
    """The agent's posts (read-only for us). ``url`` is a SQLAlchemy URL (FTP_POSTS_DB_URL)."""

    url: str
    table: str = "posts"

    _db: PostsDatabase | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._db = None

    def open(self) -> PostsDatabase:
        if self._db is None:
            self._db = PostsDatabase(self.url, self.table)
            self._db.check_table()
        return self._db


class DatasetStorage(ConfigurableResource):
    """Where engaged-post snapshots and training files are written (FTP_DATASETS_DIR); the
    default is FTP_HOME/datasets. On Kubernetes point it at a volume every run pod mounts."""

    root: str = ""

    def folder(self, task: str, run_id: str) -> Path:
        base = Path(self.root).expanduser() if self.root else home_path("datasets")
        folder = base / task / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder
