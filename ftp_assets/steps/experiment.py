"""The challenger's live A/B experiment without Dagster: start it, evaluate it, apply a final
decision to the MLflow registry and the experiments table, roll a promotion back.

The experiment assets, the rollback job and ``ftp-assets rollback`` call these functions with an
``MlflowClient``, the :class:`ExperimentStore` and the :class:`PostsDatabase`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from ftp_assets.adapters.experiments_store import (
    DEFAULT_ENDPOINT,
    RUNNING,
    Experiment,
    ExperimentsLookError,
    ExperimentStore,
    LookRecord,
)
from ftp_assets.adapters.mlflow_registry import (
    DECISION_TAG,
    PROVIDER_TAG,
    champion,
    mark_retired,
    model_name,
    promote,
    reject,
    rollback,
    rollback_plan,
    versions_to_retire,
)
from ftp_assets.adapters.posts_db import PostsDatabase
from ftp_assets.domain.ab_stats import Analysis, analyze, decide
from ftp_assets.domain.experiment_plan import ExperimentPlan, LookData, PhaseLook, Rule, fit_covariates
from ftp_assets.domain.planned_looks import LookAnalysis, analyze_looks, planned_information
from ftp_assets.steps.fine_tune import FineTunedModel
from ftp_assets.steps.readiness import Readiness

# The decision's statistics copied to the model version's tags (prefixed "ab_").
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
    "statistic",
    "boundary",
    "information_fraction",
    "variance_reduction",
)


class ExperimentError(Exception):
    """The experiment is not in a state the step can work on; the message says why."""


@dataclass(frozen=True)
class StartedExperiment:
    task: str
    experiment_id: str | None  # None when the model was already judged (a re-run)
    champion_model: str
    challenger_model: str
    registry_version: str
    # Why no experiment was started, when none was.
    not_started_reason: str | None = None
    champion_endpoint: str = DEFAULT_ENDPOINT
    challenger_endpoint: str = DEFAULT_ENDPOINT


# The model version's endpoint (set when its experiment starts), and its readiness gate's verdict.
SERVING_ENDPOINT_TAG = "serving_endpoint"
READINESS_TAG = "readiness"
READINESS_REASON_TAG = "readiness_reason"


class ChallengerNotReady(ExperimentError):
    """The challenger failed the readiness gate; the message is one sentence saying why."""


@dataclass(frozen=True)
class ArmServing:
    """Where the arms are served and how a challenger is checked before users see it."""

    agent_model: str  # the first champion, before any promotion
    agent_endpoint: str
    endpoint_for_provider: Callable[[str], str]
    # (model id, endpoint name) -> the readiness gate's result (steps/readiness.py).
    check: Callable[[str, str], Readiness]

    def endpoint_of(self, version_tags: Mapping[str, str]) -> str:
        return version_endpoint(version_tags, self.endpoint_for_provider)


def version_endpoint(version_tags: Mapping[str, str], endpoint_for_provider: Callable[[str], str]) -> str:
    """A version's endpoint: the one recorded when its experiment started, else its provider's."""
    return version_tags.get(SERVING_ENDPOINT_TAG) or endpoint_for_provider(version_tags.get(PROVIDER_TAG, "openai"))


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


@dataclass(frozen=True)
class RegisteredModel:
    task: str
    action: str  # promoted | rejected | none
    champion_version: str | None
    champion_model: str | None


@dataclass(frozen=True, kw_only=True)
class DecisionRule:
    """When a post counts as an outcome, and how the analysis decides."""

    maturity_hours: float
    alpha: float
    minimum_lift: float
    minimum_detectable_effect: float
    max_duration_hours: float
    srm_threshold: float


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """What a new experiment's plan is made from (ExperimentSettings, docs/experiment.md#settings)."""

    rule: Rule
    one_sided_alpha: float
    two_sided_alpha: float
    spending: str
    initial_share: float
    ramped_share: float
    ramp_min_challenger_posts: int
    ramp_grace_minutes: float
    maturity_hours: float
    max_duration_hours: float
    minimum_lift: float
    srm_threshold: float
    history_weeks: float
    regression_adjustment: bool


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's result, with the analysis and data behind it: an :class:`Analysis` for an
    experiment started before plans, a :class:`LookAnalysis` and its looks for a planned one."""

    result: AbTestResult
    analysis: Analysis | LookAnalysis
    excluded_impossible_counts: int  # posts of either arm left out for impossible counts
    looks: tuple[LookRecord, ...] = ()
    plan: ExperimentPlan | None = None


def start_experiment(
    client: MlflowClient,
    store: ExperimentStore,
    model: FineTunedModel,
    *,
    serving: ArmServing,
    challenger_share: float,
    started_at: datetime,
    log: Callable[[str], None],
    plan: Callable[[], ExperimentPlan] | None = None,
) -> StartedExperiment:
    """Start the challenger's experiment against the task's champion (``serving.agent_model``
    before the first promotion), once the challenger has passed the readiness gate at the
    endpoint that serves it. A model already judged starts none: its decision stands.

    ``plan`` makes the experiment's plan (:func:`plan_experiment`), called only when one starts.
    Raises :class:`ChallengerNotReady` when the gate fails, after tagging the version with why;
    the gate's generations are logged to the version's MLflow run either way."""
    task = model.task
    version = client.get_model_version(model_name(task), model.registry_version)
    current = champion(client, task)
    if current is not None:
        champion_model, champion_endpoint = current.tags["provider_model_id"], serving.endpoint_of(current.tags)
    else:
        champion_model, champion_endpoint = serving.agent_model, serving.agent_endpoint
    # The configured endpoint, not a tag: a gate that failed at a misconfigured endpoint must be
    # retried at the corrected one. The tag is written once the gate passed.
    challenger_endpoint = serving.endpoint_for_provider(version.tags.get(PROVIDER_TAG, "openai"))
    experiment_id = None
    reason = None
    if DECISION_TAG in version.tags or champion_model == model.model_id:
        # A re-run on a dataset whose model was already judged: the decision stands, no second test.
        reason = f"{model.model_id} already has the decision '{version.tags.get(DECISION_TAG, 'promoted')}'"
        log(f"{reason}; no new experiment is started.")
    else:
        name = model_name(task)
        readiness = serving.check(model.model_id, challenger_endpoint)
        # Beside the adapter, in the version's run (a re-run of the training step logs a run of its own).
        client.log_dict(version.run_id or model.mlflow_run_id, readiness.as_dict(), f"readiness/{model.model_id}.json")
        client.set_model_version_tag(name, version.version, READINESS_TAG, "passed" if readiness.ready else "failed")
        if readiness.failure is not None:
            client.set_model_version_tag(name, version.version, READINESS_REASON_TAG, readiness.failure)
            raise ChallengerNotReady(
                f"{model.model_id} (version {model.registry_version}) failed the readiness gate at endpoint "
                f"{challenger_endpoint!r}, so no experiment was started: {readiness.failure.rstrip('.')}."
            )
        if READINESS_REASON_TAG in version.tags:  # an earlier failure's reason no longer holds
            client.delete_model_version_tag(name, version.version, READINESS_REASON_TAG)
        if version.tags.get(SERVING_ENDPOINT_TAG) != challenger_endpoint:
            client.set_model_version_tag(name, version.version, SERVING_ENDPOINT_TAG, challenger_endpoint)
        log(f"{model.model_id} passed the readiness gate at {challenger_endpoint!r} ({prompts_of(readiness)}).")
        experiment_id = store.start(
            task=task,
            champion_model=champion_model,
            challenger_model=model.model_id,
            challenger_share=challenger_share,
            started_at=started_at,
            registry_version=model.registry_version,
            champion_endpoint=champion_endpoint,
            challenger_endpoint=challenger_endpoint,
            plan=plan() if plan is not None else None,
        ).experiment_id
    return StartedExperiment(
        task=task,
        experiment_id=experiment_id,
        champion_model=champion_model,
        challenger_model=model.model_id,
        registry_version=model.registry_version,
        not_started_reason=reason,
        champion_endpoint=champion_endpoint,
        challenger_endpoint=challenger_endpoint,
    )


def prompts_of(readiness: Readiness) -> str:
    count = len(readiness.generations)
    return f"{count} validation prompt{'' if count == 1 else 's'}"


def evaluate_experiment(
    store: ExperimentStore,
    db: PostsDatabase,
    task: str,
    *,
    experiment_id: str | None,
    now: datetime,
    rule: DecisionRule,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Evaluation:
    """Evaluate the experiment (default the task's running one) at ``now`` on the posts matured
    by then; a planned experiment by its plan (``rule`` is the old rule of those started before
    plans), a ramp taking effect at ``wall_clock()`` when that is later than ``now``. Raises
    :class:`ExperimentError` when there is no such running experiment of the task, or ``now`` is
    before it started."""
    experiment = store.get(experiment_id) if experiment_id else store.running(task)
    if experiment is None:
        raise ExperimentError(
            f"There is no experiment {experiment_id}."
            if experiment_id
            else f"No experiment is running for the {task} task; ab_experiment starts one."
        )
    if experiment.status != RUNNING or experiment.task != task:
        raise ExperimentError(
            f"Experiment {experiment.experiment_id} ({experiment.task}) is {experiment.status}, "
            f"not a running {task} experiment; nothing to evaluate."
        )
    if now < experiment.started_at:
        raise ExperimentError(
            f"The evaluation time {now.isoformat()} is before experiment {experiment.experiment_id} "
            f"started ({experiment.started_at.isoformat()})."
        )
    if experiment.plan is not None:
        return _evaluate_planned(store, db, experiment, experiment.plan, now=now, wall_clock=wall_clock)
    # Started before plans existed: it finishes under the rule it started with.
    outcomes = db.arm_outcomes(
        task,
        control_model=experiment.champion_model,
        treatment_model=experiment.challenger_model,
        since=experiment.started_at,
        matured_before=now - timedelta(hours=rule.maturity_hours),
    )
    analysis = analyze(
        outcomes.control,
        outcomes.treatment,
        alpha=rule.alpha,
        challenger_share=experiment.challenger_share,
        minimum_detectable_effect=rule.minimum_detectable_effect,
    )
    decision = decide(
        analysis,
        minimum_lift=rule.minimum_lift,
        srm_threshold=rule.srm_threshold,
        started_at=experiment.started_at,
        now=now,
        max_duration_hours=rule.max_duration_hours,
    )
    result = _result(
        experiment, decision.decision, decision.reason, now, outcomes.data_until, dataclasses.asdict(analysis)
    )
    return Evaluation(result, analysis, outcomes.excluded_impossible)


def _result(
    experiment: Experiment, decision: str, reason: str, now: datetime, data_until: datetime | None, statistics: dict
) -> AbTestResult:
    return AbTestResult(
        task=experiment.task,
        experiment_id=experiment.experiment_id,
        decision=decision,
        reason=reason,
        champion_model=experiment.champion_model,
        challenger_model=experiment.challenger_model,
        registry_version=experiment.registry_version,
        started_at=experiment.started_at,
        evaluated_at=now,
        data_until=data_until,
        statistics=statistics,
    )


def plan_experiment(db: PostsDatabase, settings: PlanSettings, *, started_at: datetime) -> ExperimentPlan:
    """The plan of an experiment starting at ``started_at``, from the settings and the matured
    posts of the ``history_weeks`` before it: their rate plans the maximum information, their
    engagement by persona, weekday and hour gives the covariates. Without such posts there is no
    sample to plan, and the always-valid rule (which needs none) decides."""
    if settings.ramped_share > settings.initial_share and settings.ramp_grace_minutes > 60 * settings.maturity_hours:
        # The ramp closes the first phase a grace window before the switch, and the look that
        # ramps has counted the first phase's posts up to its maturity cut-off: they must stay in.
        raise ExperimentError(
            f"ramp_grace_minutes ({settings.ramp_grace_minutes:g}) exceeds maturity_hours "
            f"({settings.maturity_hours:g} h): the ramp would drop posts its look already counted; "
            "shorten the grace window or lengthen the maturity."
        )
    since = started_at - timedelta(weeks=settings.history_weeks)
    until = started_at - timedelta(hours=settings.maturity_hours)
    cells = db.pre_experiment_cells(since=since, until=until) if until > since else []
    posts = sum(cell.posts for cell in cells)
    first = db.first_post_at(since=since, until=until) if posts else None
    history_start = max(since, first) if first else until
    hours = (until - history_start).total_seconds() / 3600
    rule, information, basis = settings.rule, None, ""
    if posts and hours > 0:
        information, basis = planned_information(
            posts / hours,
            max_duration_hours=settings.max_duration_hours,
            maturity_hours=settings.maturity_hours,
            initial_share=settings.initial_share,
            ramped_share=settings.ramped_share,
            ramp_min_challenger_posts=settings.ramp_min_challenger_posts,
            ramp_grace_minutes=settings.ramp_grace_minutes,
        )
        basis = f"{posts} matured posts from {history_start:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC: {basis}"
    elif rule == "group_sequential":
        rule = "always_valid"
        basis = (
            f"no matured posts in the {settings.history_weeks:g} weeks before the start to plan a sample from: "
            "the always-valid rule decides (it needs no maximum)"
        )
    covariates, note = None, "regression adjustment is off"
    if settings.regression_adjustment:
        covariates = fit_covariates(cells, since=since, until=until)
        note = "" if covariates is not None else f"only {posts} matured posts before the start to fit covariates from"
    return ExperimentPlan(
        rule=rule,
        alpha=settings.one_sided_alpha if rule == "group_sequential" else settings.two_sided_alpha,
        maximum_information=information,
        maximum_information_basis=basis,
        started_at=started_at,
        max_duration_hours=settings.max_duration_hours,
        maturity_hours=settings.maturity_hours,
        spending=settings.spending,
        minimum_lift=settings.minimum_lift,
        initial_share=settings.initial_share,
        ramped_share=settings.ramped_share,
        ramp_min_challenger_posts=settings.ramp_min_challenger_posts,
        ramp_grace_minutes=settings.ramp_grace_minutes,
        guardrail_alpha=settings.two_sided_alpha,
        srm_alpha=settings.srm_threshold,
        covariates=covariates,
        covariates_note=note,
    )


def _evaluate_planned(
    store: ExperimentStore,
    db: PostsDatabase,
    experiment: Experiment,
    plan: ExperimentPlan,
    *,
    now: datetime,
    wall_clock: Callable[[], datetime],
) -> Evaluation:
    """A look at a planned experiment: its data recorded in the looks table with the analysis of
    every look so far (analyze_looks), and the ramp applied when the guardrail passed. A repeat at
    an evaluation time already recorded (a retried run) returns that look's analysis again."""
    records = store.looks(experiment.experiment_id)
    repeated = next((index for index, record in enumerate(records) if record.evaluated_at == now), None)
    if repeated is not None:
        records = records[: repeated + 1]
        analysis = analyze_looks(plan, [record.data for record in records])
        last = records[-1]
        excluded = int((last.analysis or {}).get("excluded_impossible_counts", 0))
        statistics = look_statistics(analysis, plan)
        return Evaluation(
            _result(experiment, analysis.decision, analysis.reason, now, last.data_until, statistics),
            analysis,
            excluded,
            tuple(records),
            plan,
        )
    if records and now < records[-1].evaluated_at:
        raise ExperimentError(
            f"Experiment {experiment.experiment_id} was last evaluated at {records[-1].evaluated_at.isoformat()}; "
            f"looks move forward, so an evaluation at {now.isoformat()} is refused."
        )
    phases = experiment.phases or ()
    outcomes = db.phase_outcomes(
        experiment.task,
        control_model=experiment.champion_model,
        treatment_model=experiment.challenger_model,
        phases=phases,
        matured_before=now - timedelta(hours=plan.maturity_hours),
        covariates=plan.covariates,
    )
    look = LookData(
        now,
        tuple(
            PhaseLook(phase.share, control, treatment)
            for phase, (control, treatment) in zip(phases, outcomes.phases, strict=True)
        ),
    )
    analysis = analyze_looks(plan, [*(record.data for record in records), look])
    statistics = look_statistics(analysis, plan)
    try:
        recorded = store.record_look(
            experiment.experiment_id,
            evaluated_at=now,
            data_until=outcomes.data_until,
            challenger_share=experiment.challenger_share,
            information=analysis.information,
            information_fraction=analysis.information_fraction,
            statistic=analysis.statistic,
            boundary=analysis.boundary,
            alpha_spent=analysis.alpha_spent,
            decision=analysis.decision,
            reason=analysis.reason,
            data=look,
            analysis={key: statistics[key] for key in LOOK_SUMMARY_FIELDS}
            | {"excluded_impossible_counts": outcomes.excluded_impossible},
            ramp_to=analysis.ramp_to,
            # The agent sees the new share only from now on: a run that starts late (or a retry)
            # must not date the switch back to its evaluation time.
            switch_at=max(now, wall_clock()),
            grace_minutes=plan.ramp_grace_minutes,
            after_look=len(records),
        )
    except ExperimentsLookError as error:
        raise ExperimentError(f"Experiment {experiment.experiment_id}: {error}.") from None
    return Evaluation(
        _result(experiment, analysis.decision, analysis.reason, now, outcomes.data_until, statistics),
        analysis,
        outcomes.excluded_impossible,
        (*records, recorded),
        plan,
    )


# What each look's row keeps of its analysis, beside its own columns (for the history plot).
LOOK_SUMMARY_FIELDS = ("lift", "ci_lower", "ci_upper", "standard_error", "variance_reduction", "srm_p_value", "ramp_to")


def look_statistics(analysis: LookAnalysis, plan: ExperimentPlan) -> dict:
    """The look's figures as plain values, for the result, the registry's tags and the table."""
    statistics = {
        name: getattr(analysis, name)
        for name in (
            "rule",
            "look_number",
            "final",
            "n_control",
            "n_treatment",
            "information",
            "information_fraction",
            "statistic",
            "boundary",
            "alpha_spent",
            "lift",
            "standard_error",
            "unadjusted_standard_error",
            "variance_reduction",
            "adjustment",
            "ci_lower",
            "ci_upper",
            "detectable_lift",
            "srm_p_value",
            "ramp_to",
            "insufficient_data_reason",
        )
    }
    statistics["alpha"] = plan.alpha
    statistics["guardrail_alpha"] = plan.alpha if plan.rule == "always_valid" else plan.guardrail_alpha
    statistics["phases"] = [dataclasses.asdict(phase) for phase in analysis.phases]
    return statistics


def apply_decision(
    client: MlflowClient,
    store: ExperimentStore,
    result: AbTestResult,
    *,
    retire: Callable[[ModelVersion], str | None] | None = None,
) -> tuple[RegisteredModel, str]:
    """Apply a final decision to the registry and the experiments table (``continue`` changes
    nothing); the registry's champion afterwards, and a note saying what was done.

    After a final decision, ``retire`` is called for each self-hosted version no longer needed
    (:func:`~ftp_assets.adapters.mlflow_registry.versions_to_retire`: a rejected or superseded
    challenger, a champion older than previous-champion); it says what it did, or returns None
    when there was nothing to retire, and a version it retired is tagged so.

    Applying the same decision again changes nothing. Raises :class:`ExperimentError` when the
    experiment is unknown or was closed otherwise (superseded, or decided differently), and the
    registry's :class:`~ftp_assets.adapters.mlflow_registry.RegistryError` when the version's
    history refuses the decision, or a promotion names a version that is not the challenger the
    experiment tested (changing nothing: the experiment keeps running).
    """
    task = result.task
    experiment = store.get(result.experiment_id)
    if result.decision == "continue":
        action, note = "none", f"The experiment continues, no alias changed: {result.reason}"
    elif experiment is None or (experiment.status != RUNNING and experiment.decision != result.decision):
        raise ExperimentError(
            f"Experiment {result.experiment_id} is {experiment.status if experiment else 'unknown'}, "
            f"so its '{result.decision}' decision is not applied."
        )
    elif result.registry_version is None:
        raise ExperimentError(
            f"Experiment {result.experiment_id} names no registry version, so its '{result.decision}' "
            "decision cannot be applied to the registry."
        )
    else:
        tags = {f"ab_{name}": result.statistics.get(name) for name in DECISION_TAG_FIELDS}
        tags |= {"ab_experiment_id": result.experiment_id, "ab_decided_at": result.evaluated_at.isoformat()}
        tags = {key: str(value) for key, value in tags.items() if value is not None}
        if result.decision == "promote":
            # Only the model the agent routed as the challenger may become champion.
            changed = promote(client, task, result.registry_version, tags, tested_model=experiment.challenger_model)
            action = "promoted"
        else:
            changed = reject(
                client, task, result.registry_version, result.reason, tags, tested_model=result.challenger_model
            )
            action = "rejected"
        store.finish(
            result.experiment_id,
            decision=result.decision,
            reason=result.reason,
            statistics=result.statistics,
            decided_at=result.evaluated_at,
        )
        note = f"Version {result.registry_version} {action}: {result.reason}" + ("" if changed else " (already done)")
        if retire is not None:
            retired = [retire_version(client, task, version, retire) for version in versions_to_retire(client, task)]
            note += "".join(f" {line}" for line in retired if line)
    current = champion(client, task)
    registered = RegisteredModel(
        task=task,
        action=action,
        champion_version=current.version if current else None,
        champion_model=current.tags.get("provider_model_id") if current else None,
    )
    return registered, note


def retire_version(
    client: MlflowClient, task: str, version: ModelVersion, retire: Callable[[ModelVersion], str | None]
) -> str | None:
    """Retire one version's adapter from serving, then tag the version so (a repeat skips it);
    None when ``retire`` found nothing to retire (the version stays untagged)."""
    done = retire(version)
    if done is None:
        return None
    mark_retired(client, task, version.version)
    return f"Version {version.version} ({version.tags.get('provider_model_id')}) retired from serving: {done}."


def rollback_champion_of(client: MlflowClient, store: ExperimentStore, task: str, *, now: datetime) -> str:
    """Move the task's champion back to previous-champion and cancel the task's running
    experiment, whose control arm was the demoted champion; says what it did.

    The experiment is cancelled first, in one transaction, then the aliases move. Interrupted in
    between, no experiment runs (the agent serves the registry's champion alone) and the aliases
    are untouched, so running the rollback again completes it. A rollback the registry refuses
    cancels nothing.
    """
    restoring, demoting = rollback_plan(client, task)
    cancelled = store.cancel_running(
        task, reason=f"champion rolled back from version {demoting.version} to {restoring.version}", cancelled_at=now
    )
    restored, demoted = rollback(client, task)
    restored_model = restored.tags["provider_model_id"]
    registry = (
        f"{task}: champion is version {restored.version} again ({restored_model}); "
        f"version {demoted.version} ({demoted.tags['provider_model_id']}) is tagged rolled_back."
    )
    if cancelled is None:
        return f"{registry} No {task} experiment was running."
    return (
        f"{registry} Experiment {cancelled.experiment_id} ({cancelled.challenger_model} against "
        f"{cancelled.champion_model}) is cancelled, its control arm no longer being the champion; "
        f"re-materialize ab_experiment ({task}) to test {cancelled.challenger_model} against {restored_model}."
    )
