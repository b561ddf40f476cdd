"""The fine-tuning job records (ours): the durable intent written before a paid job is created,
and the provider's job id the moment it is known, so a retry finds the job again even on a
provider that drops job metadata.

The table lives beside the experiments table and changes only by the same Alembic migrations
(``ExperimentStore.init_schema`` applies them all); ``fine_tuning_jobs`` below is the query model
and must match them (a test compares the migrated schema with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ftp_assets.adapters.posts_db import UTCDateTime
from ftp_assets.adapters.providers.base import FineTuneRequest

INTENT, CREATED = "intent", "created"

_metadata = sa.MetaData()
fine_tuning_jobs = sa.Table(
    "ftp_fine_tuning_jobs",
    _metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("base_model", sa.Text, nullable=False),
    sa.Column("hyperparameters", sa.Text, nullable=False),  # JSON of the requested ones and the seed
    sa.Column("dataset_hash", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("dagster_run_id", sa.Text),
    sa.CheckConstraint("status IN ('intent', 'created')", name="ck_ftp_fine_tuning_jobs_status"),
)


@dataclass(frozen=True)
class JobRecord:
    key: str
    task: str
    provider: str
    base_model: str
    hyperparameters: dict[str, Any]
    dataset_hash: str
    status: str
    job_id: str | None
    created_at: datetime
    updated_at: datetime
    dagster_run_id: str | None


class FineTuningJobStore:
    """One record per idempotency key: the latest job made for it, or the intent to make one."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, key: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(fine_tuning_jobs).where(fine_tuning_jobs.c.key == key)).first()
        if row is None:
            return None
        fields = row._asdict()
        return JobRecord(**{**fields, "hyperparameters": json.loads(fields["hyperparameters"])})

    def record_intent(self, request: FineTuneRequest, provider: str) -> None:
        """Committed before the create call: a job may exist from now on without a known id."""
        self._save(request, provider, status=INTENT, job_id=None)

    def record_created(self, request: FineTuneRequest, provider: str, job_id: str) -> None:
        self._save(request, provider, status=CREATED, job_id=job_id)

    def clear_intent(self, key: str) -> None:
        """Forget an intent whose create surely made no job (the provider refused it)."""
        with self.engine.begin() as conn:
            conn.execute(
                fine_tuning_jobs.delete().where(fine_tuning_jobs.c.key == key, fine_tuning_jobs.c.status == INTENT)
            )

    def _save(self, request: FineTuneRequest, provider: str, *, status: str, job_id: str | None) -> None:
        now = datetime.now(UTC)
        values = {
            "task": request.task,
            "provider": provider,
            "base_model": request.base_model,
            "hyperparameters": json.dumps({**request.hyperparameters, "seed": request.seed}, sort_keys=True),
            "dataset_hash": request.dataset_hash,
            "status": status,
            "job_id": job_id,
            "updated_at": now,
            "dagster_run_id": request.dagster_run_id,
        }
        key = request.idempotency_key
        with self.engine.begin() as conn:
            updated = conn.execute(
                fine_tuning_jobs.update().where(fine_tuning_jobs.c.key == key).values(**values)
            ).rowcount
            if not updated:
                conn.execute(fine_tuning_jobs.insert().values(key=key, created_at=now, **values))
