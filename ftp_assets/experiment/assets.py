"""``ab_experiment``, ``ab_test_result`` and ``registered_model``: start the challenger's live
experiment, evaluate it, and act on a final decision in the MLflow registry; thin assets over
:mod:`ftp_assets.steps.experiment`."""

import math
from datetime import UTC, datetime
from typing import Any

from dagster import AssetExecutionContext, AssetRecordsFilter, Config, Failure, MetadataValue, Output, asset
from mlflow.entities.model_registry import ModelVersion
from pydantic import Field

from ftp_assets.adapters.endpoints import EndpointsError, unload_adapter
from ftp_assets.adapters.served_adapters import retire_adapter
from ftp_assets.domain.ab_stats import Analysis
from ftp_assets.domain.experiment_plan import ExperimentPlan
from ftp_assets.domain.planned_looks import LookAnalysis
from ftp_assets.metadata import (
    arms_table,
    boundary_plot,
    lift_history_plot,
    looks_table,
    phases_table,
    plan_table,
)
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import (
    DatasetStorage,
    ExperimentSettings,
    MetricsPublisher,
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
    Evaluation,
    ExperimentError,
    RegisteredModel,
    StartedExperiment,
    apply_decision,
    evaluate_experiment,
    plan_experiment,
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
    metrics: MetricsPublisher,
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
    started_at = datetime.now(UTC)

    def plan() -> ExperimentPlan:
        return plan_experiment(posts_db.open(), experiment_settings.planning(), started_at=started_at)

    with mlflow.errors():
        try:
            started = start_experiment(
                mlflow.client(),
                posts_db.experiments(),
                fine_tuned_model,
                serving=arms,
                challenger_share=experiment_settings.challenger_share,
                started_at=started_at,
                log=context.log.info,
                plan=plan,
            )
        except (ExperimentError, EndpointsError) as error:
            raise Failure(str(error)) from None
    metrics.publish_experiments(context.log, posts_db.experiments(), task, experiment_settings)
    extra: dict[str, Any] = {}
    # The running experiment's own plan: starting the same challenger again keeps the first one.
    running = posts_db.experiments().get(started.experiment_id) if started.experiment_id else None
    if running is not None and running.plan is not None:
        extra["plan"] = plan_table(running.plan)
        context.log.info(
            f"{task}: plan: {running.plan.rule}, maximum information from {running.plan.maximum_information_basis}"
        )
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
            **extra,
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
    description="A look at the task's running experiment on its matured posts, recorded in the looks table "
    "and decided by its plan (group-sequential boundary, or the always-valid interval): promote, reject or "
    "continue, and when the guardrail passes, the challenger's share rises.",
)
def ab_test_result(
    context: AssetExecutionContext,
    config: AbTestConfig,
    posts_db: PostsDatabaseResource,
    experiment_settings: ExperimentSettings,
    metrics: MetricsPublisher,
) -> Output[AbTestResult]:
    task = context.partition_key
    settings = experiment_settings
    rule = settings.decision_rule_settings()
    now = configured_instant(config.evaluated_at, context)
    try:
        evaluation = evaluate_experiment(
            posts_db.experiments(), posts_db.open(), task, experiment_id=config.experiment_id, now=now, rule=rule
        )
    except ExperimentError as error:
        raise Failure(str(error)) from None
    metrics.publish_experiments(context.log, posts_db.experiments(), task, settings)
    result = evaluation.result
    common: dict[str, Any] = {
        "decision": result.decision,
        "reason": result.reason,
        "experiment_id": result.experiment_id,
        "champion_model": result.champion_model,
        "challenger_model": result.challenger_model,
        "started_at": result.started_at.isoformat(),
        "evaluated_at": now.isoformat(),
        "data_until": result.data_until.isoformat() if result.data_until else "no matured posts yet",
        "maturity": f"posts older than {settings.maturity_hours:g} h at evaluation, both arms alike",
        "excluded_impossible_counts": evaluation.excluded_impossible_counts,
    }
    if isinstance(evaluation.analysis, Analysis):
        metadata = common | _always_valid_metadata(context, evaluation, evaluation.analysis)
    else:
        metadata = common | _planned_metadata(evaluation)
    context.log.info(f"{task}: {result.decision}: {result.reason}")
    # Every name is always there (dashboards rely on them); a missing figure is an explicit null.
    return Output(
        result, metadata={key: MetadataValue.null() if value is None else value for key, value in metadata.items()}
    )


def _number(value) -> float | None:
    return None if value is None else float(value)


def _always_valid_metadata(
    context: AssetExecutionContext, evaluation: Evaluation, analysis: Analysis
) -> dict[str, Any]:
    """An experiment started before plans: today's always-valid analysis, as it always showed."""
    result = evaluation.result
    metadata: dict[str, Any] = {
        "rule": "always_valid (started before plans)",
        "n_control": analysis.n_control,
        "n_treatment": analysis.n_treatment,
        "rate_control": _number(analysis.rate_control),
        "rate_treatment": _number(analysis.rate_treatment),
        "lift": _number(analysis.lift),
        "ci_lower": _number(analysis.ci_lower),
        "ci_upper": _number(analysis.ci_upper),
        "fixed_ci_lower": _number(analysis.fixed_ci_lower),
        "fixed_ci_upper": _number(analysis.fixed_ci_upper),
        "p_value": _number(analysis.p_value),
        "srm_p_value": _number(analysis.srm_p_value),
        "chance_to_beat": _number(analysis.chance_to_beat),
        "remaining_sample_total": analysis.remaining_sample_total,
        "arms": arms_table(analysis, result.champion_model, result.challenger_model),
    }
    if analysis.lift is not None:
        latest = {"lift": analysis.lift, "ci_lower": analysis.ci_lower, "ci_upper": analysis.ci_upper}
        looks = [*_previous_looks(context, result.experiment_id), latest]
        metadata["lift_history"] = lift_history_plot(looks)
    return metadata


def _planned_metadata(evaluation: Evaluation) -> dict[str, Any]:
    """A planned experiment: the look's statistic against its boundary, the plan, every look
    from the looks table (not the event log, whose materializations may be pruned), the plot."""
    analysis = evaluation.analysis
    if not isinstance(analysis, LookAnalysis) or evaluation.plan is None:
        raise TypeError("a planned evaluation carries a LookAnalysis and its plan")
    metadata: dict[str, Any] = {
        "rule": analysis.rule,
        "look_number": analysis.look_number,
        "final_look": analysis.final,
        "n_control": analysis.n_control,
        "n_treatment": analysis.n_treatment,
        "lift": _number(analysis.lift),
        "standard_error": _number(analysis.standard_error),
        "statistic": _number(analysis.statistic),
        # JSON has no infinity: nothing left to spend shows as null.
        "boundary": _number(analysis.boundary)
        if analysis.boundary is not None and math.isfinite(analysis.boundary)
        else None,
        "information_fraction": _number(analysis.information_fraction),
        "alpha_spent": _number(analysis.alpha_spent),
        "ci_lower": _number(analysis.ci_lower),
        "ci_upper": _number(analysis.ci_upper),
        "detectable_lift": _number(analysis.detectable_lift),
        "variance_reduction": _number(analysis.variance_reduction),
        "adjustment": analysis.adjustment,
        "srm_p_value": _number(analysis.srm_p_value),
        "challenger_share": evaluation.looks[-1].challenger_share if evaluation.looks else None,
        "ramp": f"the challenger's share rises to {analysis.ramp_to:.0%}" if analysis.ramp_to else "no change",
        "phases": phases_table(analysis, evaluation.result.champion_model, evaluation.result.challenger_model),
        "plan": plan_table(evaluation.plan),
        "looks": looks_table(evaluation.looks),
    }
    if evaluation.looks:
        metadata["lift_history"] = boundary_plot(evaluation.looks, analysis)
    return metadata


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
    experiment_settings: ExperimentSettings,
    metrics: MetricsPublisher,
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
    task = context.partition_key
    metrics.publish_experiments(context.log, store, task, experiment_settings)
    metrics.publish_registry(context.log, mlflow, store, task)
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
