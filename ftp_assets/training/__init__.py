"""The training group: ``fine_tuned_model`` (one paid job per dataset, registered in MLflow), the
weekly ``training_cycle`` job, its schedule and the data-threshold sensors that start it early."""

from dagster import Definitions

from ftp_assets.settings import DeploymentSettings
from ftp_assets.training.assets import fine_tuned_model
from ftp_assets.training.jobs import training_cycle
from ftp_assets.training.schedules import weekly_training_schedule
from ftp_assets.training.sensors import data_threshold_sensors


def build_defs(settings: DeploymentSettings) -> Definitions:
    """The group's definitions; the schedule and sensors take the deployment's settings."""
    return Definitions(
        assets=[fine_tuned_model],
        jobs=[training_cycle],
        schedules=[weekly_training_schedule(settings)],
        sensors=data_threshold_sensors(settings),
    )
