"""``ftp demo``: a whole weekly cycle on the embedded defaults, with synthetic data.

Everything it creates lives under FTP_HOME. The posts are synthetic (see
``ftp_assets.domain.demo_posts``) and the demo posts database is recreated on every run, so the
demo never writes to a database the user configured.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import sqlalchemy as sa

from ftp_assets.domain.dataset import TASKS
from ftp_assets.domain.demo_posts import SYNTHETIC_DATA_NOTICE, generate_demo_posts
from ftp_assets.home import ftp_home
from ftp_assets.posts_db import PostsDatabase

PRODUCTION_SETTINGS = ("FTP_POSTS_DB_URL", "FTP_DATASETS_DIR")


def load_demo_posts(db: PostsDatabase, *, posts: int, seed: int, end: datetime | None = None) -> int:
    """Insert synthetic posts with ids after the table's largest, over the two weeks before ``end``."""
    with db.engine.connect() as conn:
        first_id = (conn.execute(sa.select(sa.func.max(db.table.c.id))).scalar() or 0) + 1
    end = end or datetime.now(timezone.utc)
    return db.insert_posts(generate_demo_posts(posts, seed=seed, end=end, first_id=first_id))


def _say(step: str) -> None:
    print(f"\n== {step}", flush=True)


def run_demo(*, posts: int, seed: int) -> None:
    started = time.monotonic()
    ignored = [name for name in PRODUCTION_SETTINGS if os.environ.pop(name, None)]
    if ignored:
        print(f"The demo uses the embedded defaults only; ignoring {', '.join(ignored)}.")
    home = ftp_home()

    _say(f"Synthetic posts ({SYNTHETIC_DATA_NOTICE})")
    posts_file = home / "posts.sqlite3"
    posts_file.unlink(missing_ok=True)
    db = PostsDatabase(f"sqlite:///{posts_file}")
    db.init_schema()
    print(f"{load_demo_posts(db, posts=posts, seed=seed)} posts written to {posts_file}")

    from dagster import DagsterInstance

    from ftp_assets.definitions import defs

    instance = DagsterInstance.get()
    job = defs.resolve_job_def("training_cycle")
    for task in TASKS:
        _say(f"Training cycle for the {task} task")
        result = job.execute_in_process(instance=instance, partition_key=task, raise_on_error=False)
        if not result.success:
            raise SystemExit(f"The {task} run {result.run_id} failed; see `ftp ui` or the log above.")
        dataset = result.output_for_node("training_jsonl")
        print(
            f"{task}: {dataset.training_examples} training and {dataset.validation_examples} validation "
            f"examples, ~{dataset.training_tokens:,.0f} tokens, dataset {dataset.dataset_hash[:12]}"
        )

    _say(f"Done in {time.monotonic() - started:.0f} s")
    print(f"State: {home}  (wipe it to start over)")
    print("Look at the runs and assets: `ftp ui`, or `dagster dev -m ftp_assets.definitions` here.")
