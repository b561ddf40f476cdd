"""The run's fixed "now", shared by the data and experiment assets."""

from __future__ import annotations

from datetime import UTC, datetime

from dagster import AssetExecutionContext, Failure

from ftp_assets.domain.instants import parse_instant


def run_created_at(context: AssetExecutionContext) -> datetime:
    """When the run was created, or for a retry or re-execution the run it retries: fixed for the
    run and all its retries, unlike the wall clock."""
    first_run_id = context.run.root_run_id or context.run.run_id
    record = context.instance.get_run_record_by_id(first_run_id)
    if record is None:
        raise Failure(f"Run {first_run_id} is not in the Dagster instance.")
    return record.create_timestamp.astimezone(UTC)


def configured_instant(value: str | None, context: AssetExecutionContext) -> datetime:
    """A configured ISO-8601 instant, or the run's creation time when none is configured."""
    if not value:
        return run_created_at(context)
    try:
        return parse_instant(value)
    except ValueError as error:
        raise Failure(str(error)) from None
