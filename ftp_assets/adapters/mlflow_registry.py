"""The MLflow side of the pipeline: the fine-tuning run, the model registry, its aliases, rollback.

No Dagster here: the assets, ``ftp-assets rollback`` and a notebook call the same functions with an
``MlflowClient(tracking_uri=..., registry_uri=...)``. Nothing uses MLflow's process-global tracking
URI, because the tasks of several runs may share one process.

Each task has its registered model ``threads_agent_<task>_model`` with three aliases:

- ``challenger``: the version under A/B test; set by `register_challenger`, removed by `promote`
  and `reject`.
- ``champion``: the version in production.
- ``previous-champion``: the champion that the latest promotion replaced, so that `rollback` is
  one call.

A decision is final, so a re-executed or stale Dagster step cannot undo a later one:

- `promote` called again for the current champion changes nothing (and returns False); it refuses
  a version that already carries a decision but is not the champion: rejected, rolled back, or
  promoted and replaced since. Given the experiment's challenger model id, it also refuses a
  version of another model, or one the ``challenger`` alias has left (a stale or edited row).
- `reject` called again changes nothing; it refuses a version that is or was champion.
- `rollback` undoes exactly one promotion: ``champion`` goes back to ``previous-champion``,
  ``previous-champion`` is removed and the demoted version is tagged ``rolled_back=true`` (its
  ``decision=promoted`` and statistics stay). A second rollback raises instead of flipping back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ftp_assets.domain.dataset import TASKS

EXPERIMENT_NAME = "fine_tuning_pipeline"

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

# Model version tags written here (besides the caller's decision statistics).
DECISION_TAG = "decision"
REASON_TAG = "reason"
ROLLED_BACK_TAG = "rolled_back"
# A self-hosted version whose adapter serving may no longer resolve (docs/serving.md#retirement).
SERVING_TAG = "serving"
RETIRED = "retired"
# Which provider made the version: "openai" (or a compatible API) or "self_hosted". Versions
# registered before the tag existed are OpenAI's.
PROVIDER_TAG = "provider"

# The registry needs a source inside MLflow: a tracking server rejects ``external://`` sources.
PROVIDER_MODEL_ARTIFACT_DIR = "provider_model"
TRAINING_SAMPLE_ARTIFACT_DIR = "training_sample"

# Matched against whole words of the key, so "trained_tokens" passes and "hf_token" does not.
_SECRET_KEY = re.compile(r"(^|_)(api_?key|token|password|passwd|secret)(_|$)")


class RegistryError(Exception):
    """A registry change that the model's recorded history does not allow."""


def local_tracking_uri(home: Path) -> str:
    """The embedded tracking and registry store: ``<home>/mlflow.db``, artifacts in
    ``<home>/artifacts``."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'mlflow.db').as_posix()}"


def model_name(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return f"threads_agent_{task}_model"


def log_fine_tune_run(
    client: MlflowClient,
    *,
    task: str,
    dagster_run_id: str,
    params: Mapping[str, Any],
    step_metrics: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, float],
    sample_path: Path | None,
) -> str:
    """Record one fine-tuning job as a finished run of `fine_tuning_pipeline`; returns its run id.

    ``step_metrics`` has one mapping per training step, e.g. ``{"step": 3, "train_loss": 1.2,
    "valid_loss": None}``; None values are skipped (validation loss is not reported at every
    step). ``metrics`` are the final figures (trained tokens, cost). The run is tagged with the
    task and ``dagster_run_id``. Each call records a new run; one that fails half-way is marked
    FAILED rather than left RUNNING.
    """
    model_name(task)  # refuses an unknown task before anything is recorded
    _refuse_secrets(params)
    run = client.create_run(
        _experiment_id(client),
        run_name=f"{task}-{dagster_run_id[:8]}",
        tags={"task": task, "dagster_run_id": dagster_run_id},
    )
    run_id = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        final_metrics = [Metric(key, float(value), now_ms, 0) for key, value in metrics.items()]
        client.log_batch(
            run_id,
            params=[Param(key, str(value)) for key, value in params.items()],
            metrics=[*_per_step_metrics(step_metrics, now_ms), *final_metrics],
        )
        if sample_path is not None:
            client.log_artifact(run_id, str(sample_path), artifact_path=TRAINING_SAMPLE_ARTIFACT_DIR)
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id)
    return run_id


def register_challenger(
    client: MlflowClient,
    *,
    task: str,
    run_id: str,
    provider_model_id: str,
    job_id: str,
    training_file_id: str,
    dataset_hash: str,
    base_model: str,
    provider: str = "openai",
    artifacts_dir: Path | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> ModelVersion:
    """Register the provider's fine-tuned model as a new version with the alias ``challenger``.
    The version's source is the run's ``provider_model`` folder: the provider's model id and,
    for a model the provider does not keep (a self-hosted adapter), ``artifacts_dir``'s files,
    so the model can be rebuilt from the registry alone.

    Idempotent: when a version of the same provider model exists, it is returned. It is made
    challenger again only if the alias is free and the version has no decision yet (a retry after
    a crash between the two writes), so a late retry never pulls a decided version back into test.
    """
    name = model_name(task)
    existing = _version_of_provider_model(client, name, provider_model_id)
    if existing is not None:
        undecided = DECISION_TAG not in existing.tags
        if undecided and CHALLENGER not in _aliases(client, name):
            client.set_registered_model_alias(name, CHALLENGER, existing.version)
        return client.get_model_version(name, existing.version)

    _create_registered_model_if_missing(client, name, task)
    provider_model = {
        "task": task,
        "provider_model_id": provider_model_id,
        "job_id": job_id,
        "training_file_id": training_file_id,
        "dataset_hash": dataset_hash,
        "base_model": base_model,
        "run_id": run_id,
        PROVIDER_TAG: provider,
        **(extra_tags or {}),
    }
    _refuse_secrets(provider_model)
    if artifacts_dir is not None:
        client.log_artifacts(run_id, str(artifacts_dir), artifact_path=PROVIDER_MODEL_ARTIFACT_DIR)
    client.log_dict(run_id, provider_model, f"{PROVIDER_MODEL_ARTIFACT_DIR}/provider_model.json")
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{PROVIDER_MODEL_ARTIFACT_DIR}",
        run_id=run_id,
        tags=provider_model,
        description=f"{provider_model_id}: {base_model} fine-tuned by job {job_id}",
    )
    client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    return client.get_model_version(name, str(version.version))


def champion(client: MlflowClient, task: str) -> ModelVersion | None:
    """The version in production for the task, or None before the first promotion."""
    name = model_name(task)
    version = _aliases(client, name).get(CHAMPION)
    return None if version is None else client.get_model_version(name, version)


def promote(
    client: MlflowClient,
    task: str,
    version: str | int,
    decision_tags: Mapping[str, Any],
    *,
    tested_model: str | None = None,
) -> bool:
    """Make the version champion; returns False when it already was, with these tags.

    The old champion becomes ``previous-champion``, ``challenger`` is removed if it points at the
    version, and the version is tagged ``decision=promoted`` plus ``decision_tags`` (the
    statistics). Each write is skipped when already done, so a call interrupted half-way can be
    repeated. With ``tested_model`` (the experiment's challenger model id), a version that is not
    that model, or neither the ``challenger`` nor already the champion, is refused before any write.
    """
    name = model_name(task)
    version = str(version)
    _refuse_secrets(decision_tags)
    target = client.get_model_version(name, version)
    aliases = _aliases(client, name)
    current_champion = aliases.get(CHAMPION)
    if current_champion != version and DECISION_TAG in target.tags:
        rolled_back = " and was rolled back" if ROLLED_BACK_TAG in target.tags else ""
        raise RegistryError(
            f"{name} version {version} already has the decision "
            f"'{target.tags[DECISION_TAG]}'{rolled_back} while champion is version "
            f"{current_champion}, so promoting it again is refused."
        )
    if tested_model is not None:
        _refuse_untested(target, aliases, tested_model)

    changed = False
    if current_champion != version:
        # previous-champion first: if interrupted here, the old champion is still reachable.
        if current_champion is not None:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current_champion)
        client.set_registered_model_alias(name, CHAMPION, version)
        changed = True
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
        changed = True
    tags = {**decision_tags, DECISION_TAG: "promoted"}
    return _set_changed_tags(client, target, tags) or changed


def reject(
    client: MlflowClient,
    task: str,
    version: str | int,
    reason: str,
    decision_tags: Mapping[str, Any],
    *,
    tested_model: str | None = None,
) -> bool:
    """Take the version out of test: remove ``challenger`` from it, tag ``decision=rejected`` and
    the reason. Returns False when it was already rejected with these tags. With ``tested_model``
    (the experiment's challenger model id), a version of another model is refused before any
    write: an edited or stale experiment row must not retire a model nobody tested."""
    name = model_name(task)
    version = str(version)
    _refuse_secrets(decision_tags)
    target = client.get_model_version(name, version)
    provider_model_id = target.tags.get("provider_model_id")
    if tested_model is not None and provider_model_id != tested_model:
        raise RegistryError(
            f"Refusing to reject {name} version {version}: it holds {provider_model_id or 'no provider model'}, "
            f"not {tested_model}, the challenger the experiment tested."
        )
    aliases = _aliases(client, name)
    if aliases.get(CHAMPION) == version or target.tags.get(DECISION_TAG) == "promoted":
        raise RegistryError(
            f"{name} version {version} is or was champion; take it out of production with rollback, not reject."
        )

    changed = False
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
        changed = True
    tags = {**decision_tags, DECISION_TAG: "rejected", REASON_TAG: reason}
    return _set_changed_tags(client, target, tags) or changed


def rollback(client: MlflowClient, task: str) -> tuple[ModelVersion, ModelVersion]:
    """Move ``champion`` back to ``previous-champion``; returns (restored, demoted).

    ``previous-champion`` is removed and the demoted version tagged ``rolled_back=true``, so a
    second rollback raises `RegistryError` rather than flip back.
    """
    name = model_name(task)
    current_champion, previous_champion = _rollback_aliases(client, name)
    # Tag first: a rollback interrupted after moving champion still shows what it demoted.
    client.set_model_version_tag(name, current_champion, ROLLED_BACK_TAG, "true")
    client.set_registered_model_alias(name, CHAMPION, previous_champion)
    client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return (
        client.get_model_version(name, previous_champion),
        client.get_model_version(name, current_champion),
    )


def rollback_plan(client: MlflowClient, task: str) -> tuple[ModelVersion, ModelVersion]:
    """What `rollback` would do now, changing nothing: (to restore, to demote); raises
    `RegistryError` as it would."""
    name = model_name(task)
    current_champion, previous_champion = _rollback_aliases(client, name)
    return client.get_model_version(name, previous_champion), client.get_model_version(name, current_champion)


def _rollback_aliases(client: MlflowClient, name: str) -> tuple[str, str]:
    """(champion, previous-champion) when a rollback can move the one back to the other."""
    aliases = _aliases(client, name)
    current_champion = aliases.get(CHAMPION)
    previous_champion = aliases.get(PREVIOUS_CHAMPION)
    if previous_champion is None:
        raise RegistryError(
            f"Nothing to roll back: {name} has no {PREVIOUS_CHAMPION} alias "
            f"(champion is {'version ' + current_champion if current_champion else 'unset'})."
        )
    if current_champion is None or current_champion == previous_champion:
        raise RegistryError(
            f"{name} has {PREVIOUS_CHAMPION} at version {previous_champion} but champion at "
            f"{current_champion}, which no promotion leaves (an interrupted rollback?): set or "
            "remove the aliases in the MLflow UI."
        )
    return current_champion, previous_champion


def alias_problems(
    client: MlflowClient, task: str, *, running_champion: str | None, running_challenger: str | None, agent_model: str
) -> list[str]:
    """How the task's registry aliases disagree with its running experiment (``running_*`` the
    experiment's champion and challenger model ids; None without one): the version aliased
    ``challenger`` must hold the challenger, the one aliased ``champion`` the champion (before any
    promotion, the champion is ``agent_model``), and no version may be both. Reads only."""
    name = model_name(task)
    aliases = _aliases(client, name)
    problems = []
    if aliases.get(CHAMPION) is not None and aliases.get(CHAMPION) == aliases.get(CHALLENGER):
        problems.append(f"{name} version {aliases[CHAMPION]} is aliased both {CHAMPION} and {CHALLENGER}")
    if running_challenger is None:
        return problems

    def model_of(alias: str) -> str | None:
        version = aliases.get(alias)
        return None if version is None else client.get_model_version(name, version).tags.get("provider_model_id")

    challenger = model_of(CHALLENGER)
    if challenger != running_challenger:
        problems.append(
            f"the running experiment tests {running_challenger} but {name}'s {CHALLENGER} alias holds "
            f"{challenger or 'no model'}"
        )
    champion_model = model_of(CHAMPION) if CHAMPION in aliases else agent_model
    if running_champion != champion_model:
        problems.append(
            f"the running experiment's champion is {running_champion} but {name}'s champion is {champion_model}"
        )
    return problems


def _refuse_untested(target: ModelVersion, aliases: Mapping[str, str], tested_model: str) -> None:
    """A promotion moves champion only to the challenger the experiment tested (or repeats
    itself): an edited or stale experiment row must not promote another model."""
    name, version = target.name, str(target.version)
    provider_model_id = target.tags.get("provider_model_id")
    if provider_model_id != tested_model:
        raise RegistryError(
            f"Refusing to promote {name} version {version}: it holds {provider_model_id or 'no provider model'}, "
            f"not {tested_model}, the challenger the experiment tested."
        )
    challenger = aliases.get(CHALLENGER)
    if challenger != version and aliases.get(CHAMPION) != version:
        raise RegistryError(
            f"Refusing to promote {name} version {version} ({tested_model}): the {CHALLENGER} alias points at "
            f"{'version ' + challenger if challenger else 'no version'}, so the experiment no longer tests it."
        )


def _refuse_secrets(record: Mapping[str, Any]) -> None:
    """Secrets never reach MLflow params or tags; values are not inspected, key names are."""
    secret_keys = sorted(key for key in record if _SECRET_KEY.search(_snake_case(key)))
    if secret_keys:
        raise ValueError(f"Refusing to record {', '.join(secret_keys)} in MLflow: the name looks like a secret.")


def _snake_case(key: str) -> str:
    """The key's words in snake case: ``clientSecret``, ``client-secret`` -> ``client_secret``."""
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())


def _per_step_metrics(step_metrics: Iterable[Mapping[str, Any]], timestamp_ms: int) -> Iterator[Metric]:
    for entry in step_metrics:
        step = int(entry["step"])
        for key, value in entry.items():
            if key != "step" and value is not None:
                yield Metric(key, float(value), timestamp_ms, step)


def fine_tuning_costs(client: MlflowClient, task: str) -> dict[str, float]:
    """What the task's fine-tuning jobs recorded in MLflow cost, per provider, each job once (a
    retry that found its finished job again records another run of the same job)."""
    model_name(task)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        return {}
    costs: dict[str, float] = {}
    seen_jobs: set[str] = set()
    page_token = None
    while True:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.task = '{task}' and attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=page_token,
        )
        for run in runs:
            job_id, cost = run.data.params.get("job_id"), run.data.metrics.get("cost_usd")
            if job_id is None or cost is None or job_id in seen_jobs:
                continue
            seen_jobs.add(job_id)
            provider = run.data.params.get("provider", "unknown")
            costs[provider] = costs.get(provider, 0.0) + cost
        page_token = runs.token
        if not page_token:
            return costs


def _experiment_id(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(
            EXPERIMENT_NAME, artifact_location=_local_artifact_location(client.tracking_uri)
        )
    except MlflowException as error:
        # The other task's run may have created it in the meantime.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            raise RuntimeError(
                f"MLflow says the experiment {EXPERIMENT_NAME!r} already exists, yet cannot find it by name"
            ) from error
        return experiment.experiment_id


def _local_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a new experiment on a SQLite store go next to the database file.

    Otherwise MLflow would put them in ./mlruns of whatever folder the process runs in. A tracking
    server decides for itself (None).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "artifacts" / EXPERIMENT_NAME).as_uri()


def _create_registered_model_if_missing(client: MlflowClient, name: str, task: str) -> None:
    try:
        client.create_registered_model(
            name,
            tags={"task": task},
            description=f"The Threads agent's {task} model, fine-tuned by the ftp_assets pipeline.",
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def versions_to_retire(client: MlflowClient, task: str) -> list[ModelVersion]:
    """Self-hosted versions no longer needed for serving: named by no alias (so neither champion,
    previous-champion, a rollback's target, nor the challenger under test: a rejected or
    superseded challenger, an older champion) and not yet retired."""
    name = model_name(task)
    kept = set(_aliases(client, name).values())
    retire = []
    page_token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=page_token)
        for version in page:
            tags = version.tags
            if (
                tags.get(PROVIDER_TAG) == "self_hosted"
                and str(version.version) not in kept
                and tags.get(SERVING_TAG) != RETIRED
            ):
                retire.append(version)
        page_token = page.token
        if not page_token:
            return sorted(retire, key=lambda version: int(version.version))


def mark_retired(client: MlflowClient, task: str, version: str | int) -> None:
    client.set_model_version_tag(model_name(task), str(version), SERVING_TAG, RETIRED)


def _version_of_provider_model(client: MlflowClient, name: str, provider_model_id: str) -> ModelVersion | None:
    # The id is the provider's, and MLflow's filter grammar has no escape (quotes are trimmed,
    # not unescaped): an id with both quote kinds cannot be written in it. The name is ours, so
    # the search is by name and the tag is compared here (one version per training cycle).
    page_token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=page_token)
        for version in page:
            if version.tags.get("provider_model_id") == provider_model_id:
                return version
        page_token = page.token
        if not page_token:
            return None


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    # The SQLite store reports versions as int, the REST store as str.
    return {alias: str(version) for alias, version in aliases.items()}


def _set_changed_tags(client: MlflowClient, version: ModelVersion, tags: Mapping[str, Any]) -> bool:
    changed = False
    for key, value in tags.items():
        if version.tags.get(key) != str(value):
            client.set_model_version_tag(version.name, str(version.version), key, str(value))
            changed = True
    return changed
