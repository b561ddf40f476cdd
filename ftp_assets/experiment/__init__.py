"""The experiment group: the challenger's live A/B experiment (``ab_experiment``), its evaluation
(``ab_test_result``), the registry's answer to a final decision (``registered_model``), the
sensor that evaluates when new outcomes have matured, and the rollback job."""

from dagster import Definitions

from ftp_assets.experiment.assets import ab_experiment, ab_test_result, registered_model
from ftp_assets.experiment.jobs import experiment_evaluation, rollback_job
from ftp_assets.experiment.sensors import experiment_evaluation_sensor
from ftp_assets.settings import DeploymentSettings


def build_defs(settings: DeploymentSettings) -> Definitions:
    """The group's definitions; the sensor takes the deployment's settings."""
    return Definitions(
        assets=[ab_experiment, ab_test_result, registered_model],
        jobs=[experiment_evaluation, rollback_job],
        sensors=[experiment_evaluation_sensor(settings)],
    )
