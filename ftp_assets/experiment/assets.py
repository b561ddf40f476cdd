"""``ab_experiment``, ``ab_test_result`` and ``registered_model``: start the challenger's live
experiment, evaluate it, and act on a final decision in the MLflow registry."""

import base64
import dataclasses
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import AssetExecutionContext, AssetRecordsFilter, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from ftp_assets.adapters.experiments_store import RUNNING, Experiment
from ftp_assets.adapters.mlflow_registry import DECISION_TAG, champion, model_name, promote, reject
from ftp_assets.domain.ab_stats import analyze, decide
from ftp_assets.partitions import task_partitions
from ftp_assets.resources import ExperimentSettings, MlflowResource, PostsDatabaseResource
from ftp_assets.run_context import configured_instant
from ftp_assets.training.assets import FineTunedModel

HISTORY_LOOKS = 50


@dataclass(frozen=True)
class StartedExperiment:
    task: str
    experiment_id: str | None  # None when the model was already judged (a re-run)
    champion_model: str
    challenger_model: str
    registry_version: str


@asset(
    partitions_def=task_partitions,
    group_name="experiment",
    kinds={"sql", "mlflow"},
    description="The live A/B experiment of the task's new challenger against its champion, "
    "started in the experiments table the agent reads (none for a model already judged).",
)
def ab_experiment(
    context: AssetExecutionContext,
    fine_tuned_model: FineTunedModel,
    mlflow: MlflowResource,
    posts_db: PostsDatabaseResource,
    experiment_settings: ExperimentSettings,
) -> Output[StartedExperiment]:
    task = context.partition_key
    model = fine_tuned_model
    client = mlflow.client()
    with mlflow.errors():
        version = client.get_model_version(model_name(task), model.registry_version)
        current = champion(client, task)
    champion_model = current.tags["provider_model_id"] if current else experiment_settings.agent_model(task)
    experiment: Experiment | None = None
    if DECISION_TAG in version.tags or champion_model == model.model_id:
        # A re-run on a dataset whose model was already judged: the decision stands, no second test.
        context.log.info(
            f"{model.model_id} already has the decision '{version.tags.get(DECISION_TAG, 'promoted')}'"
            "; no new experiment is started."
        )
    else:
        experiment = posts_db.experiments().start(
            task=task,
            champion_model=champion_model,
            challenger_model=model.model_id,
            challenger_share=experiment_settings.challenger_share,
            started_at=datetime.now(UTC),
            registry_version=model.registry_version,
        )
    started = StartedExperiment(
        task=task,
        experiment_id=experiment.experiment_id if experiment else None,
        champion_model=champion_model,
        challenger_model=model.model_id,
        registry_version=model.registry_version,
    )
    return Output(
        started,
        metadata={
            "experiment_id": started.experiment_id or "none: the model was already judged",
            "champion_model": champion_model,
            "challenger_model": model.model_id,
            "challenger_share": experiment_settings.challenger_share,
            "registry_version": model.registry_version,
        },
    )


@dataclass(frozen=True)
class AbTestResult:
    task: str
    experiment_id: str
    decision: str  # promote | reject | continue
    reason: str
    champion_model: str
    challenger_model: str
    registry_version: str | None
    started_at: datetime
    evaluated_at: datetime
    data_until: datetime | None
    statistics: dict


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


def _lift_history_png(history: list[dict]) -> str:
    """Lift and always-valid interval at each look, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    looks = range(1, len(history) + 1)
    lifts = [h["lift"] for h in history]
    below = [h["lift"] - h["ci_lower"] for h in history]
    above = [h["ci_upper"] - h["lift"] for h in history]
    figure, axes = plt.subplots(figsize=(6, 3), dpi=100)
    axes.errorbar(looks, lifts, yerr=[below, above], fmt="o", capsize=3, label="lift, always-valid interval")
    axes.axhline(0, color="grey", linewidth=1)
    axes.set_xlabel("evaluation")
    axes.set_ylabel("relative lift")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _previous_looks(context: AssetExecutionContext, experiment_id: str) -> list[dict]:
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
    store = posts_db.experiments()
    experiment = store.get(config.experiment_id) if config.experiment_id else store.running(task)
    if experiment is None:
        raise Failure(
            f"No experiment is running for the {task} task; ab_experiment starts one."
            if not config.experiment_id
            else f"There is no experiment {config.experiment_id}."
        )
    if experiment.status != RUNNING or experiment.task != task:
        raise Failure(
            f"Experiment {experiment.experiment_id} ({experiment.task}) is {experiment.status}, "
            f"not a running {task} experiment; nothing to evaluate."
        )
    now = configured_instant(config.evaluated_at, context)
    if now < experiment.started_at:
        raise Failure(
            f"The evaluation time {now.isoformat()} is before experiment {experiment.experiment_id} "
            f"started ({experiment.started_at.isoformat()})."
        )
    matured_before = now - timedelta(hours=settings.maturity_hours)
    outcomes = posts_db.open().arm_outcomes(
        task,
        control_model=experiment.champion_model,
        treatment_model=experiment.challenger_model,
        since=experiment.started_at,
        matured_before=matured_before,
    )
    analysis = analyze(
        outcomes.control,
        outcomes.treatment,
        alpha=settings.alpha,
        challenger_share=experiment.challenger_share,
        minimum_detectable_effect=settings.minimum_detectable_effect,
    )
    decision = decide(
        analysis,
        minimum_lift=settings.minimum_lift,
        srm_threshold=settings.srm_threshold,
        started_at=experiment.started_at,
        now=now,
        max_duration_hours=settings.max_duration_hours,
    )
    statistics = dataclasses.asdict(analysis)
    result = AbTestResult(
        task=task,
        experiment_id=experiment.experiment_id,
        decision=decision.decision,
        reason=decision.reason,
        champion_model=experiment.champion_model,
        challenger_model=experiment.challenger_model,
        registry_version=experiment.registry_version,
        started_at=experiment.started_at,
        evaluated_at=now,
        data_until=outcomes.data_until,
        statistics=statistics,
    )

    def number(value):
        return None if value is None else float(value)

    metadata = {
        "decision": decision.decision,
        "reason": decision.reason,
        "experiment_id": experiment.experiment_id,
        "champion_model": experiment.champion_model,
        "challenger_model": experiment.challenger_model,
        "started_at": experiment.started_at.isoformat(),
        "evaluated_at": now.isoformat(),
        "data_until": outcomes.data_until.isoformat() if outcomes.data_until else "no matured posts yet",
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
        "excluded_impossible_counts": outcomes.excluded_impossible,
        "arms": MetadataValue.md(_arms_table(analysis, experiment)),
    }
    if analysis.lift is not None:
        looks = _previous_looks(context, experiment.experiment_id) + [
            {"lift": analysis.lift, "ci_lower": analysis.ci_lower, "ci_upper": analysis.ci_upper}
        ]
        metadata["lift_history"] = MetadataValue.md(
            f"![lift and always-valid interval per evaluation](data:image/png;base64,{_lift_history_png(looks)})"
        )
    context.log.info(f"{task}: {decision.decision}: {decision.reason}")
    # Every name is always there (dashboards rely on them); a missing figure is an explicit null.
    return Output(
        result, metadata={key: MetadataValue.null() if value is None else value for key, value in metadata.items()}
    )


def _arms_table(analysis, experiment) -> str:
    def pct(value):
        return "n/a" if value is None else f"{value:.3%}"

    return (
        "| arm | model | posts | engagement rate |\n|---|---|---|---|\n"
        f"| champion (control) | {experiment.champion_model} | {analysis.n_control} | {pct(analysis.rate_control)} |\n"
        f"| challenger (treatment) | {experiment.challenger_model} | {analysis.n_treatment} | "
        f"{pct(analysis.rate_treatment)} |\n\n"
        f"Lift {pct(analysis.lift)}, always-valid {1 - analysis.alpha:.0%} interval "
        f"[{pct(analysis.ci_lower)}, {pct(analysis.ci_upper)}], fixed-horizon "
        f"[{pct(analysis.fixed_ci_lower)}, {pct(analysis.fixed_ci_upper)}]."
    )


@dataclass(frozen=True)
class RegisteredModel:
    task: str
    action: str  # promoted | rejected | none
    champion_version: str | None
    champion_model: str | None


DECISION_TAG_FIELDS = (
    "lift",
    "ci_lower",
    "ci_upper",
    "fixed_ci_lower",
    "fixed_ci_upper",
    "p_value",
    "srm_p_value",
    "chance_to_beat",
    "n_control",
    "n_treatment",
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
) -> Output[RegisteredModel]:
    task = context.partition_key
    result = ab_test_result
    client = mlflow.client()
    store = posts_db.experiments()
    experiment = store.get(result.experiment_id)
    with mlflow.errors():
        action, note = _act_on_decision(task, result, experiment, client, store)
        current = champion(client, task)
    context.log.info(note)
    return Output(
        RegisteredModel(
            task=task,
            action=action,
            champion_version=current.version if current else None,
            champion_model=current.tags.get("provider_model_id") if current else None,
        ),
        metadata={
            "action": action,
            "note": note,
            "experiment_id": result.experiment_id,
            "champion_version": str(current.version) if current else "none (the agent's configured model)",
            "champion_model": (current.tags.get("provider_model_id") if current else None) or "n/a",
        },
    )


def _act_on_decision(task: str, result: AbTestResult, experiment, client, store) -> tuple[str, str]:
    """Apply a final decision to the registry and the experiments table; (action, note)."""
    if result.decision == "continue":
        action, note = "none", f"The experiment continues, no alias changed: {result.reason}"
    elif experiment is None or (experiment.status != RUNNING and experiment.decision != result.decision):
        raise Failure(
            f"Experiment {result.experiment_id} is {experiment.status if experiment else 'unknown'}, "
            f"so its '{result.decision}' decision is not applied."
        )
    else:
        tags = {f"ab_{name}": result.statistics.get(name) for name in DECISION_TAG_FIELDS}
        tags |= {"ab_experiment_id": result.experiment_id, "ab_decided_at": result.evaluated_at.isoformat()}
        tags = {key: str(value) for key, value in tags.items() if value is not None}
        if result.decision == "promote":
            changed = promote(client, task, result.registry_version, tags)
            action = "promoted"
        else:
            changed = reject(client, task, result.registry_version, result.reason, tags)
            action = "rejected"
        store.finish(
            result.experiment_id,
            decision=result.decision,
            reason=result.reason,
            statistics=result.statistics,
            decided_at=result.evaluated_at,
        )
        note = f"Version {result.registry_version} {action}: {result.reason}" + ("" if changed else " (already done)")
    return action, note
