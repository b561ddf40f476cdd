"""`ftp-assets demo --provider self_hosted` as a user types it, on a fresh FTP_HOME: it completes,
and its decisions and lifts are in the Dagster instance and the MLflow registry, as the OpenAI
path leaves them."""

from __future__ import annotations

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from mlflow import MlflowClient

from ftp_assets.adapters.mlflow_registry import local_tracking_uri, model_name
from ftp_assets.domain.dataset import TASKS
from ftp_assets_tests.demo_run import demo_environment, run_demo


@pytest.mark.slow
def test_the_self_hosted_demo_decides_and_records_its_decisions_in_dagster_and_mlflow(tmp_path):
    home = tmp_path / "home"
    environment = demo_environment(home)
    demo = run_demo(environment, "--provider", "self_hosted", "--seed", "11", timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "passed the readiness gate" in demo.stdout

    client = MlflowClient(tracking_uri=local_tracking_uri(home / "mlflow"))
    instance = DagsterInstance.from_config(str(home / "dagster"))
    try:
        for task in TASKS:
            (version,) = client.search_model_versions(f"name='{model_name(task)}'")
            tags = version.tags
            assert (tags["provider"], tags["readiness"], tags["serving_endpoint"]) == (
                "self_hosted",
                "passed",
                "self_hosted",
            )
            # The demo's week decides both tasks: promoted, or rejected (and retired from serving).
            assert tags["decision"] in ("promoted", "rejected") and "ab_lift" in tags, tags
            retired = (home / "adapters" / task / tags["job_id"] / "retired.json").exists()
            assert retired == (tags["decision"] == "rejected")

            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("ab_test_result"), asset_partitions=[task]), limit=1
            ).records
            metadata = records[0].asset_materialization.metadata
            assert metadata["decision"].value in ("promote", "reject")
            assert (
                metadata["lift"].value is not None and metadata["challenger_model"].value == tags["provider_model_id"]
            )
    finally:
        instance.dispose()
