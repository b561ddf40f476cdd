"""The observability group (docs/observability.md): the run-failure sensor, which notifies a
webhook and publishes the run-failure counts, and the sensor that refreshes the metrics read from
the durable stores. Both use the ``metrics`` resource (MetricsPublisher)."""

from dagster import Definitions

from ftp_assets.observability.sensors import metrics_refresh, run_failure_alerts
from ftp_assets.settings import DeploymentSettings


def build_defs(settings: DeploymentSettings) -> Definitions:
    """The group's definitions; the sensor takes the deployment's settings."""
    return Definitions(sensors=[run_failure_alerts(settings), metrics_refresh(settings)])
