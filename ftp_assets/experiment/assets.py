"""``ab_experiment``, ``ab_test_result`` and ``registered_model``: start the challenger's live
experiment, evaluate it, and act on a final decision in the MLflow registry; thin assets over
:mod:`ftp_assets.steps.experiment`."""

from datetime import UTC, datetime
from typing import Any

from dagster import AssetExecutionContext, AssetRecordsFilter, Config, Failure, MetadataValue, Output, asset
from mlflow.entities.model_registry import ModelVersion
from pydantic import Field

from ftp_assets.adapters.endpoints import EndpointsError, unload_adapter
from ftp_assets.adapters.served_adapters import retire_adapter
from ftp_assets.metadata import arms_table, lift_history_plot
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import (
    DatasetStorage,
    ExperimentSettings,
    MlflowResource,
    PostsDatabaseResource,
    SelfHostedTraining,
    ServingEndpoints,
)
from ftp_assets.run_context import configured_instant
from ftp_assets.steps.data_path import TrainingDataset
from ftp_assets.steps.experiment import (
    AbTestResult,
    ArmServing,
    ExperimentError,
    RegisteredModel,
    StartedExperiment,
    apply_decision,
    evaluate_experiment,
    start_experiment,
    version_endpoint,
)
from ftp_assets.steps.fine_tune import FineTunedModel
from ftp_assets.steps.readiness import Readiness, check_readiness, validation_prompts

HISTORY_LOOKS = 50


@asset(
    partitions_def=task_partitions,
    group_name="experiment",
    kinds={"sql", "mlflow"},
    description="The live A/B experiment of the task's new challenger against its champion, started in the "
    "experiments table the agent reads once the challenger passed the readiness gate at its endpoint "
    "(none for a model already judged).",
)
def ab_experiment(
    context: AssetExecutionContext,
    fine_tuned_model: FineTunedModel,
    training_jsonl: TrainingDataset,
    mlflow: MlflowResource,
    posts_db: PostsDatabaseResource,
    experiment_settings: ExperimentSettings,
    serving: ServingEndpoints,
    dataset_storage: DatasetStorage,
) -> Output[StartedExperiment]:
    task = context.partition_key
    # The gate asks prompts the model never trained on; a run in another pod fetches the file.
    prompts_file = training_jsonl.validation_path or training_jsonl.training_path
    prompts = validation_prompts(dataset_storage.local_file(prompts_file, training_jsonl.shared_folder))

    def check(model: str, endpoint: str) -> Readiness:
        raw = serving.endpoint(endpoint).kind == "vllm"  # vLLM and ftp-serve can keep special tokens
        with serving.client(endpoint) as client:
            return check_readiness(client, model, endpoint, task, prompts, self_served=raw)

    arms = ArmServing(
        agent_model=experiment_settings.agent_model(task),
        agent_endpoint=serving.agent_endpoint,
        endpoint_for_provider=serving.for_provider,
        check=check,
    )
    with mlflow.errors():
        try:
            started = start_experiment(
                mlflow.client(),
                posts_db.experiments(),
                fine_tuned_model,
                serving=arms,
                challenger_share=experiment_settings.challenger_share,
                started_at=datetime.now(UTC),
                log=context.log.info,
            )
        except (ExperimentError, EndpointsError) as error:
            raise Failure(str(error)) from None
    return Output(
        started,
        metadata={
            "experiment_id": started.experiment_id or f"none: {started.not_started_reason}",
            "champion_model": started.champion_model,
            "champion_endpoint": started.champion_endpoint,
            "challenger_model": started.challenger_model,
            "challenger_endpoint": started.challenger_endpoint,
            "challenger_share": experiment_settings.challenger_share,
            "registry_version": started.registry_version,
        },
    )


class AbTestConfig(Config):
    experiment_id: str | None = Field(
        default=None,
        description="The experiment to evaluate (the sensor sets it); default the task's running one. "
        "One that is no longer running fails the run rather than evaluate another.",
    )
    evaluated_at: str | None = Field(
        default=None,
        description="The evaluation's 'now' (ISO-8601); default the time the run was created, so a "
        "retry decides on the same posts.",
    )


def _previous_looks(context: AssetExecutionContext, experiment_id: str) -> list[dict]:
    """Lift and always-valid interval of the experiment's earlier evaluations, oldest first."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]),
        limit=HISTORY_LOOKS,
        ascending=False,
    ).records
    looks = []
    for record in reversed(records):
        metadata = record.asset_materialization.metadata
        same_experiment = "experiment_id" in metadata and metadata["experiment_id"].value == experiment_id
        if same_experiment and metadata.get("lift") is not None and metadata["lift"].value is not None:
            looks.append({key: metadata[key].value for key in ("lift", "ci_lower", "ci_upper")})
    return looks


@asset(
    partitions_def=task_partitions,
    group_name="experiment",
    kinds={"sql", "scipy"},
    # The experiment comes from the table ab_experiment writes, not from its output value.
    deps=["ab_experiment"],
    description="The running experiment of the task, evaluated on matured posts with an "
    "always-valid interval: promote, reject or continue.",
)
def ab_test_result(
    context: AssetExecutionContext,
    config: AbTestConfig,
    posts_db: PostsDatabaseResource,
    experiment_settings: ExperimentSettings,
) -> Output[AbTestResult]:
    task = context.partition_key
    settings = experiment_settings
    rule = settings.decision_rule()
    now = configured_instant(config.evaluated_at, context)
    try:
        evaluation = evaluate_experiment(
            posts_db.experiments(), posts_db.open(), task, experiment_id=config.experiment_id, now=now, rule=rule
        )
    except ExperimentError as error:
        raise Failure(str(error)) from None
    result, analysis = evaluation.result, evaluation.analysis

    def number(value):
        return None if value is None else float(value)

    metadata: dict[str, Any] = {
        "decision": result.decision,
        "reason": result.reason,
        "experiment_id": result.experiment_id,
        "champion_model": result.champion_model,
        "challenger_model": result.challenger_model,
        "started_at": result.started_at.isoformat(),
        "evaluated_at": now.isoformat(),
        "data_until": result.data_until.isoformat() if result.data_until else "no matured posts yet",
        "maturity": f"posts older than {settings.maturity_hours:g} h at evaluation, both arms alike",
        "n_control": analysis.n_control,
        "n_treatment": analysis.n_treatment,
        "rate_control": number(analysis.rate_control),
        "rate_treatment": number(analysis.rate_treatment),
        "lift": number(analysis.lift),
        "ci_lower": number(analysis.ci_lower),
        "ci_upper": number(analysis.ci_upper),
        "fixed_ci_lower": number(analysis.fixed_ci_lower),
        "fixed_ci_upper": number(analysis.fixed_ci_upper),
        "p_value": number(analysis.p_value),
        "srm_p_value": number(analysis.srm_p_value),
        "chance_to_beat": number(analysis.chance_to_beat),
        "remaining_sample_total": analysis.remaining_sample_total,
        "excluded_impossible_counts": evaluation.excluded_impossible_counts,
        "arms": arms_table(analysis, result.champion_model, result.challenger_model),
    }
    if analysis.lift is not None:
        latest = {"lift": analysis.lift, "ci_lower": analysis.ci_lower, "ci_upper": analysis.ci_upper}
        looks = [*_previous_looks(context, result.experiment_id), latest]
        metadata["lift_history"] = lift_history_plot(looks)
    context.log.info(f"{task}: {result.decision}: {result.reason}")
    # Every name is always there (dashboards rely on them); a missing figure is an explicit null.
    return Output(
        result, metadata={key: MetadataValue.null() if value is None else value for key, value in metadata.items()}
    )


@asset(
    partitions_def=task_partitions,
    group_name="experiment",
    kinds={"mlflow"},
    description="The registry after the experiment's final decision: promote moves champion "
    "(keeping previous-champion), reject retires the challenger, continue changes nothing.",
)
def registered_model(
    context: AssetExecutionContext,
    ab_test_result: AbTestResult,
    mlflow: MlflowResource,
    posts_db: PostsDatabaseResource,
    serving: ServingEndpoints,
    self_hosted_training: SelfHostedTraining,
) -> Output[RegisteredModel]:
    store = posts_db.experiments()
    adapters_root = self_hosted_training.adapters_root()

    def retire(version: ModelVersion) -> str | None:
        tags = version.tags
        reason = f"version {version.version}: {tags.get('decision', 'superseded')}, named by no alias"
        if not retire_adapter(adapters_root, tags["task"], tags["job_id"], reason=reason, retired_at=datetime.now(UTC)):
            context.log.warning(
                f"Version {version.version} ({tags.get('provider_model_id')}) has no finished adapter under "
                f"{adapters_root}/{tags['task']}/{tags['job_id']}: nothing to retire there; left untagged."
            )
            return None
        endpoint = version_endpoint(tags, serving.for_provider)
        try:
            with serving.client(endpoint, timeout_s=10) as client:
                problem = unload_adapter(client, tags["provider_model_id"])
        except EndpointsError as error:  # no key here to call the endpoint with: still retired
            problem = str(error)
        # Best effort: a retired adapter is never resolved again; see docs/serving.md#retirement.
        return f"marked retired, unloaded from {endpoint!r}" if problem is None else f"marked retired ({problem})"

    with mlflow.errors():
        try:
            registered, note = apply_decision(mlflow.client(), store, ab_test_result, retire=retire)
        except ExperimentError as error:
            raise Failure(str(error)) from None
    context.log.info(note)
    return Output(
        registered,
        metadata={
            "action": registered.action,
            "note": note,
            "experiment_id": ab_test_result.experiment_id,
            "champion_version": (
                str(registered.champion_version)
                if registered.champion_version is not None
                else "none (the agent's configured model)"
            ),
            "champion_model": registered.champion_model or "n/a",
        },
    )
