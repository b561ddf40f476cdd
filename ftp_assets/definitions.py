"""The code location: one ``Definitions``, merged from the data, training and experiment groups
with the resources they share, for the deployment profile of the environment
(:mod:`ftp_assets.settings`). ``workspace.yaml`` and ``dagster dev -m ftp_assets.definitions``
load it through ``load_definitions``."""

from dagster import Definitions, EnvVar, FilesystemIOManager, definitions
from dagster_openai import OpenAIResource

from ftp_assets import data, experiment, observability, training
from ftp_assets.resources import (
    LOCAL_OPENAI_API_KEY,
    LOCAL_OPENAI_BASE_URL,
    DatasetStorage,
    ExperimentSettings,
    FineTuningSettings,
    MetricsPublisher,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
    ServingEndpoints,
    default_posts_db_url,
)
from ftp_assets.settings import DeploymentSettings


def openai_resource(settings: DeploymentSettings) -> OpenAIResource:
    """OpenAI when OPENAI_API_KEY is set (OPENAI_BASE_URL may point at another compatible API);
    the local service of `ftp-assets local-openai` otherwise (local deployments only)."""
    if settings.has("OPENAI_API_KEY"):
        # EnvVars: their values never show in Dagster's config display.
        base_url = EnvVar("OPENAI_BASE_URL") if settings.openai_base_url else None
        return OpenAIResource(api_key=EnvVar("OPENAI_API_KEY"), base_url=base_url)
    return OpenAIResource(api_key=LOCAL_OPENAI_API_KEY, base_url=settings.openai_base_url or LOCAL_OPENAI_BASE_URL)


def self_hosted_training(settings: DeploymentSettings) -> SelfHostedTraining:
    """The self-hosted trainer: a subprocess in the local profile, a pod of its own image in
    production, finished adapters beside the datasets on shared storage."""
    return SelfHostedTraining(
        launcher="kubernetes" if settings.production else "subprocess",
        base_model=settings.self_hosted_base_model,
        work_dir=settings.trainer_work_dir,
        adapters_url=f"{settings.storage_url.rstrip('/')}/adapters" if settings.storage_url else "",
        image=settings.trainer_image,
        namespace=settings.trainer_namespace,
        pod_spec=settings.trainer_pod_spec,
    )


def serving_endpoints(settings: DeploymentSettings) -> ServingEndpoints:
    """Where models answer (the readiness gate, retirement and `ftp-assets doctor` call them)."""
    return ServingEndpoints(
        endpoints_file=settings.endpoints_file,
        # The local profile without a key calls the local service, as the fine_tuning resource does.
        openai_base_url=settings.openai_base_url
        or ("" if settings.production or settings.has("OPENAI_API_KEY") else LOCAL_OPENAI_BASE_URL),
        serving_url=settings.serving_url,
        serving_endpoint=settings.serving_endpoint,
        agent_endpoint=settings.agent_endpoint,
        local_keys=not settings.production,
    )


def shared_resources(settings: DeploymentSettings) -> Definitions:
    """The resources every group uses; the embedded defaults where a local deployment leaves a
    variable unset. With FTP_STORAGE_URL, asset values live under ``<url>/dagster/`` so that a
    retry in another pod loads them."""
    resources: dict[str, object] = {
        "posts_db": PostsDatabaseResource(
            # The embedded default (which creates FTP_HOME) only when no URL is configured.
            url=EnvVar("FTP_POSTS_DB_URL") if settings.has("FTP_POSTS_DB_URL") else default_posts_db_url(settings.home),
            table=settings.posts_table,
        ),
        "dataset_storage": DatasetStorage(root=settings.datasets_dir, shared_url=settings.storage_url),
        "openai": openai_resource(settings),
        "fine_tuning": FineTuningSettings(
            provider=settings.provider,
            # The local service not answering was never started: fail at once rather than wait.
            local_service_url=""
            if settings.production or settings.has("OPENAI_API_KEY")
            else settings.openai_base_url or LOCAL_OPENAI_BASE_URL,
        ),
        "self_hosted_training": self_hosted_training(settings),
        "mlflow": MlflowResource(
            tracking_uri=EnvVar("MLFLOW_TRACKING_URI") if settings.has("MLFLOW_TRACKING_URI") else ""
        ),
        "experiment_settings": ExperimentSettings(),
        "serving": serving_endpoints(settings),
        # An EnvVar: a gateway's password in its URL never shows in Dagster's config display.
        "metrics": MetricsPublisher(pushgateway_url=EnvVar("FTP_PUSHGATEWAY_URL") if settings.pushgateway_url else ""),
    }
    if settings.storage_url:
        resources["io_manager"] = FilesystemIOManager(base_dir=f"{settings.storage_url.rstrip('/')}/dagster")
    return Definitions(resources=resources)


def build_definitions(settings: DeploymentSettings) -> Definitions:
    """The code location of a deployment: the three groups, the run-failure sensor and their shared
    resources."""
    return Definitions.merge(
        data.build_defs(settings),
        training.build_defs(settings),
        experiment.build_defs(settings),
        observability.build_defs(settings),
        shared_resources(settings),
    )


@definitions
def load_definitions() -> Definitions:
    """What Dagster loads: the environment read once, then the definitions it describes. A
    deployment that cannot work fails here with one sentence naming what is missing."""
    return build_definitions(DeploymentSettings.from_environment())


def __getattr__(name: str) -> Definitions:
    """``defs``: the definitions of this environment, built on each access (tests, the demo)."""
    if name == "defs":
        return load_definitions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
