"""``ftp-assets doctor``: the configuration and every part it names, checked one line each.

In the spirit of ``dbt debug``: each check is a plain function returning a :class:`Check` with a
verdict (``ok``, ``warn``, ``FAIL``) and, when not ok, the fix in one sentence. A check catches
its own failure and turns it into a ``FAIL`` line, so a broken part never hides the others.

The doctor only reads: it spends nothing at the provider (one list call of a single job), never
writes to the posts (read-only transactions), and never prints a secret (URLs are shown
redacted, and every line is scrubbed of the values of secret variables).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftp_assets.adapters.posts_db import DEFAULT_WINDOW_DAYS, PostsDatabase, redacted
from ftp_assets.home import installed_command
from ftp_assets.settings import DeploymentSettings, SettingsError

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions

    from ftp_assets.adapters.endpoints import Endpoint
    from ftp_assets.adapters.experiments_store import ExperimentStore
    from ftp_assets.resources import ServingEndpoints

OK, WARN, FAIL = "ok", "warn", "FAIL"

SCHEDULE = "weekly_training"
SENSORS = ("hook_data_threshold_sensor", "body_data_threshold_sensor", "experiment_evaluation_sensor")
# MLflow's HTTP client settings while the doctor asks it: a dead server fails within seconds.
MLFLOW_QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
PROVIDER_TIMEOUT_SECONDS = 10.0
# Variables whose values are URLs (shown redacted) or secrets (never shown), besides any whose
# name says it holds a key, token, password or secret.
URL_VARIABLES = ("FTP_POSTS_DB_URL", "MLFLOW_TRACKING_URI", "FTP_STORAGE_URL", "OPENAI_BASE_URL")
_SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def format_line(check: Check) -> str:
    """One line: the verdict, the check's name, what was found and, when not ok, the fix."""
    line = f"{check.verdict:<4}  {check.name:<40}  {check.detail}"
    if check.verdict != OK and check.fix:
        line += f" -- fix: {check.fix}"
    return scrub(" ".join(line.split()) if "\n" in line else line)


def scrub(text: str) -> str:
    """The text without the value of any secret variable of this environment, and with each
    URL variable's value (and its password alone) replaced by its redacted form."""
    replacements: dict[str, str] = {}
    for name, value in os.environ.items():
        if len(value) < 4:
            continue
        if name in URL_VARIABLES:
            replacements[value] = redacted(value)
            password = _url_password(value)
            if password:
                replacements[password] = "***"
        elif _SECRET_NAME.search(name):
            replacements[value] = "***"
    for value in sorted(replacements, key=len, reverse=True):
        text = text.replace(value, replacements[value])
    return text


def _url_password(url: str) -> str:
    found = re.match(r"[\w+.-]+://[^:/?@]*:([^?]*)@", url)
    return found.group(1) if found and len(found.group(1)) >= 4 else ""


def has_failure(checks: list[Check]) -> bool:
    return any(check.verdict == FAIL for check in checks)


def load_settings() -> tuple[DeploymentSettings, str]:
    """The profile of this environment without the completeness requirement, and the sentence
    naming its invalid variables ("" when none); an invalid variable is read as its default, so
    the other checks still run."""
    try:
        return DeploymentSettings.from_environment(require_complete=False), ""
    except SettingsError as error:
        invalid = str(error)
    from pydantic import ValidationError

    overrides: dict[str, Any] = {}
    for _ in range(len(DeploymentSettings.model_fields)):
        try:
            return DeploymentSettings(**overrides), invalid
        except ValidationError as error:
            for problem in error.errors():
                name = str(problem["loc"][0])
                overrides[name] = DeploymentSettings.model_fields[name].default
    return DeploymentSettings(**overrides), invalid


def doctor() -> list[Check]:
    """Every check of this environment, in order."""
    settings, invalid = load_settings()
    return run_checks(settings, invalid=invalid)


@dataclass
class _Context:
    """What the checks share: the parts opened once, and which checks failed."""

    settings: DeploymentSettings
    posts: PostsDatabase | None = None
    experiments: ExperimentStore | None = None
    mlflow_client: Any = None
    instance: DagsterInstance | None = None
    definitions: Definitions | None = None
    failed: set[str] = field(default_factory=set)


def run_checks(settings: DeploymentSettings, *, invalid: str = "") -> list[Check]:
    """Every check for ``settings`` (``invalid``: the sentence naming invalid variables)."""
    context = _Context(settings)
    checks: list[Check] = [_guarded_check("settings", partial(check_settings, settings, invalid))]
    steps: list[tuple[str, Callable[[_Context], Check | list[Check]]]] = [
        ("posts.relation", check_posts_relation),
        ("posts.index", check_posts_index),
        ("posts.privileges", check_posts_privileges),
        ("posts.window", check_posts_window),
        ("experiments.migrations", check_experiments_migrations),
        ("mlflow.server", check_mlflow_server),
        ("mlflow.aliases", check_mlflow_aliases),
        ("provider", check_provider),
        ("serving", check_serving),
        ("storage", check_storage),
        ("dagster.instance", check_dagster_instance),
        ("dagster.code_location", check_code_location),
        ("automation", check_automation),
        ("observability", check_observability),
    ]
    try:
        for name, step in steps:
            result = _guarded(name, partial(step, context))
            for check in result if isinstance(result, list) else [result]:
                if check.verdict == FAIL:
                    context.failed.add(check.name)
                checks.append(check)
    finally:
        _close(context)
    return checks


def _guarded(name: str, step: Callable[[], Check | list[Check]]) -> Check | list[Check]:
    """The step's result, or a FAIL line naming the error it raised (never a traceback)."""
    try:
        return step()
    except Exception as error:
        return Check(name, FAIL, f"the check itself failed: {_error_text(error)}", "see the error above.")


def _error_text(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return scrub(f"{type(error).__name__}: {message[:300]}" if message else type(error).__name__)


def _close(context: _Context) -> None:
    if context.posts is not None:
        context.posts.engine.dispose()
    if context.instance is not None:
        context.instance.dispose()


def _not_checked(name: str, prerequisite: str) -> Check:
    return Check(name, WARN, f"not checked: {prerequisite} failed", f"fix {prerequisite} first.")


def _writable_verdict(settings: DeploymentSettings) -> str:
    """A part that could write what only the agent should write: FAIL in production, warn locally."""
    return FAIL if settings.production else WARN


# 1. settings


def check_settings(settings: DeploymentSettings, invalid: str = "") -> Check:
    if invalid:
        return Check("settings", FAIL, f"invalid: {invalid}", "correct the variables named, or unset them.")
    missing = settings.missing_for_production()
    if missing:
        return Check(
            "settings",
            FAIL,
            f"FTP_DEPLOYMENT=production lacks {', '.join(missing)}",
            f"set {', '.join(missing)} (production has no embedded defaults).",
        )
    return Check("settings", OK, f"profile {settings.deployment}, provider {settings.provider}")


# 2. the posts


def _posts(context: _Context) -> PostsDatabase:
    """The posts database (opened once; a missing SQLite file is not created)."""
    if context.posts is None:
        import sqlalchemy as sa

        from ftp_assets.resources import default_posts_db_url

        settings = context.settings
        url = settings.secret_value("FTP_POSTS_DB_URL") or default_posts_db_url(settings.home)
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
            raise _Missing(f"no SQLite posts database at {parsed.database}")
        context.posts = PostsDatabase(url, settings.posts_table)
    return context.posts


class _Missing(Exception):
    """A part that is not there; the message says which."""


def check_posts_relation(context: _Context) -> Check:
    name = "posts.relation"
    try:
        db = _posts(context)
    except _Missing as missing:
        return Check(
            name,
            FAIL,
            str(missing),
            f"run {_ftp('db init')} (or `make demo`), or set FTP_POSTS_DB_URL.",
        )
    except Exception as error:
        return Check(
            name,
            FAIL,
            _error_text(error),
            "check FTP_POSTS_DB_URL (host, port, database, credentials) and that the database answers.",
        )
    where = redacted(db.url)
    kind = db.relation_kind()
    if kind is None:
        return Check(
            name,
            FAIL,
            f"no table or view {db.table.name!r} in {where}",
            f"run {_ftp('db init')}, or create a view with the contract's columns and set FTP_POSTS_TABLE "
            "(docs/data-contract.md).",
        )
    problems = db.contract_problems()
    if problems:
        return Check(
            name,
            FAIL,
            f"{kind} {db.table.name!r} in {where} breaks the data contract: {'; '.join(problems)}",
            f"give the {kind} the contract's columns and types (docs/data-contract.md).",
        )
    return Check(name, OK, f"{kind} {db.table.name!r} in {where} has the contract's columns and types")


def _posts_ready(context: _Context, name: str) -> PostsDatabase | Check:
    if "posts.relation" in context.failed or context.posts is None:
        return _not_checked(name, "posts.relation")
    return context.posts


def _default_window() -> tuple[Any, Any]:
    """The last days before now that ``engaged_posts`` reads by default, and its default bar."""
    from ftp_assets.adapters.posts_db import SelectionRule, Window
    from ftp_assets.data.assets import EngagedPostsConfig

    defaults = EngagedPostsConfig.model_fields
    days = defaults["window_days"].default or DEFAULT_WINDOW_DAYS
    end = datetime.now(UTC)
    window = Window(start=end - timedelta(days=days), end=end)
    rule = SelectionRule(
        threshold=defaults["engagement_threshold"].default, min_impressions=defaults["min_impressions"].default
    )
    return window, rule


def check_posts_index(context: _Context) -> Check:
    name = "posts.index"
    db = _posts_ready(context, name)
    if isinstance(db, Check):
        return db
    from ftp_assets.adapters.posts_db import TextLimit
    from ftp_assets.data.assets import EngagedPostsConfig
    from ftp_assets.steps.data_path import TASK_FIELDS

    window, rule = _default_window()
    # The selection engaged_posts runs, for the task that reads the most texts.
    texts = TextLimit(TASK_FIELDS["body"], EngagedPostsConfig.model_fields["max_text_chars"].default)
    index, plan = db.time_index_in_plan(db.selection_query(window, rule, texts))
    view = db.relation_kind() == "view"
    of = "the plan of the view's underlying table (a view has no indexes of its own)" if view else "the plan"
    if index is None:
        table = "the table under the view, on its publication-time column" if view else f"{db.table.name}"
        return Check(
            name,
            FAIL,
            f"{of} of the selection reads the posts without an index on the creation time "
            f"({plan[0].strip() if plan else 'no plan'})",
            f"create an index on {table} (e.g. CREATE INDEX ON {db.table.name} (created_at)).",
        )
    return Check(name, OK, f"{of} of the selection searches index {index} by the creation time")


def check_posts_privileges(context: _Context) -> Check:
    name = "posts.privileges"
    db = _posts_ready(context, name)
    if isinstance(db, Check):
        return db
    settings = context.settings
    writes = db.write_privileges()
    if writes is None:
        if not settings.has("FTP_POSTS_DB_URL"):
            return Check(name, OK, "the embedded SQLite file (no roles); runs read it with PRAGMA query_only")
        database = db.engine.url.database or ""
        if database and os.access(database, os.W_OK):
            return Check(
                name,
                _writable_verdict(settings),
                "SQLite has no roles and this process may write the file",
                "point FTP_POSTS_DB_URL at a PostgreSQL role granted SELECT only on the posts.",
            )
        return Check(name, OK, "the SQLite file is read-only for this process")
    if writes:
        return Check(
            name,
            _writable_verdict(settings),
            f"the connecting role may {', '.join(writes)} on {db.table.name!r}"
            + ("" if settings.production else " (FAIL in production)"),
            f"connect as a role that may only read {db.table.name!r}, or revoke {', '.join(writes)} on it "
            "from the connecting role.",
        )
    return Check(name, OK, f"the connecting role may only read {db.table.name!r}")


def check_posts_window(context: _Context) -> Check:
    name = "posts.window"
    db = _posts_ready(context, name)
    if isinstance(db, Check):
        return db
    window, rule = _default_window()
    days = round((window.end - window.start) / timedelta(days=1))
    bar = f"rate >= {rule.threshold} with >= {rule.min_impressions} impressions in the last {days} days"
    count = db.count_qualifying(window, rule)
    if count == 0:
        return Check(
            name,
            FAIL,
            f"0 qualifying posts ({bar})",
            f"the agent has written no qualifying posts in the window ({bar}): check that it writes to "
            f"{db.table.name!r}, or lower engaged_posts' engagement_threshold or min_impressions.",
        )
    return Check(name, OK, f"{count} qualifying posts ({bar})")


# 3. the experiments table


def _experiments(context: _Context) -> ExperimentStore | None:
    if context.experiments is None and context.posts is not None:
        from ftp_assets.adapters.experiments_store import ExperimentStore

        context.experiments = ExperimentStore(context.posts.engine)
    return context.experiments


def check_experiments_migrations(context: _Context) -> Check:
    name = "experiments.migrations"
    if context.posts is None:
        return _not_checked(name, "posts.relation")
    from ftp_assets.adapters.experiments_store import VERSION_TABLE, ExperimentStore, experiments

    store = _experiments(context)
    assert store is not None
    missing = store.missing_tables()
    if experiments.name in missing or VERSION_TABLE in missing:
        return Check(name, FAIL, f"missing {', '.join(missing)}", f"run {_ftp('db init')}.")
    current, head = store.schema_revision(), ExperimentStore.head_revision()
    if current not in ExperimentStore.known_revisions():
        return Check(
            name,
            FAIL,
            f"at revision {current}, unknown to this code (head {head})",
            "a newer ftp_assets migrated the tables: run that version.",
        )
    if current != head:
        return Check(
            name,
            FAIL,
            f"at revision {current}, behind the latest {head}",
            f"run {_ftp('db init')}.",
        )
    if missing:
        return Check(
            name,
            FAIL,
            f"at revision {current} but {', '.join(missing)} is missing",
            f"recreate it from {_ftp('db init --print-sql')} (or restore it from a backup).",
        )
    return Check(name, OK, f"{experiments.name} and the job records at the latest revision {head}")


# 4. MLflow


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_mlflow_server(context: _Context) -> Check:
    name = "mlflow.server"
    from mlflow import MlflowClient

    from ftp_assets.resources import MlflowResource

    settings = context.settings
    if settings.production and not settings.has("MLFLOW_TRACKING_URI"):
        return Check(name, FAIL, "MLFLOW_TRACKING_URI is unset", "set MLFLOW_TRACKING_URI to the tracking server.")
    uri = MlflowResource(tracking_uri=settings.secret_value("MLFLOW_TRACKING_URI")).resolved_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        with _environment(MLFLOW_QUICK):
            client.search_experiments(max_results=1)
    except Exception as error:
        return Check(
            name,
            FAIL,
            f"{redacted(uri)} did not answer ({type(error).__name__})",
            "start the tracking server or correct MLFLOW_TRACKING_URI (and its credentials).",
        )
    context.mlflow_client = client
    return Check(name, OK, f"{redacted(uri)} answers")


def check_mlflow_aliases(context: _Context) -> Check:
    name = "mlflow.aliases"
    if context.mlflow_client is None:
        return _not_checked(name, "mlflow.server")
    if "experiments.migrations" in context.failed or context.posts is None:
        return _not_checked(name, "experiments.migrations")
    from ftp_assets.adapters.mlflow_registry import alias_problems
    from ftp_assets.domain.dataset import TASKS
    from ftp_assets.resources import ExperimentSettings

    store = _experiments(context)
    assert store is not None
    agent = ExperimentSettings()
    problems: list[str] = []
    running = 0
    with _environment(MLFLOW_QUICK):
        for task in TASKS:
            experiment = store.running(task)
            running += experiment is not None
            problems += alias_problems(
                context.mlflow_client,
                task,
                running_champion=experiment.champion_model if experiment else None,
                running_challenger=experiment.challenger_model if experiment else None,
                agent_model=agent.agent_model(task),
            )
    if problems:
        return Check(
            name,
            FAIL,
            "; ".join(problems),
            "point the aliases in the MLflow UI at the versions of the running experiment's models, "
            "or cancel that experiment.",
        )
    return Check(name, OK, f"the registry's aliases agree with the {running} running experiment(s)")


# 5. the fine-tuning provider


def check_provider(context: _Context) -> list[Check]:
    settings = context.settings
    if settings.self_hosted:
        return [
            _guarded_check("provider", partial(_check_trainer, settings)),
            _guarded_check("provider.base_model", partial(_check_base_model, settings)),
        ]
    return [_check_openai(settings)]


def _guarded_check(name: str, step: Callable[[], Check]) -> Check:
    result = _guarded(name, step)
    return result if isinstance(result, Check) else result[0]


def _check_openai(settings: DeploymentSettings) -> Check:
    import openai

    from ftp_assets.resources import LOCAL_OPENAI_API_KEY, LOCAL_OPENAI_BASE_URL

    name = "provider"
    keyed = settings.has("OPENAI_API_KEY")
    if not keyed and settings.production:
        return Check(name, FAIL, "OPENAI_API_KEY is unset", "set OPENAI_API_KEY (production has no local service).")
    if keyed:
        api_key, base_url = settings.secret_value("OPENAI_API_KEY"), settings.openai_base_url or None
        who = f"the API at {redacted(base_url)}" if base_url else "OpenAI"
        unreachable = "check OPENAI_BASE_URL and the network."
    else:
        api_key, base_url = LOCAL_OPENAI_API_KEY, settings.openai_base_url or LOCAL_OPENAI_BASE_URL
        who = f"the local service at {redacted(base_url)}"
        unreachable = f"start it: `make ui` (or {_ftp('local-openai')})."
    client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=PROVIDER_TIMEOUT_SECONDS)
    try:
        client.fine_tuning.jobs.list(limit=1)  # free: lists at most one job, creates nothing
    except openai.AuthenticationError:
        return Check(
            name, FAIL, f"{who} refused the key (401)", "the key was refused: set OPENAI_API_KEY to a valid key."
        )
    except openai.APIConnectionError as error:
        if not keyed:
            # The local service runs only while it is needed (`make ui`, the demo): not running is
            # a state, not a misconfiguration; a training step now would fail at once, saying so.
            return Check(name, WARN, f"{who} is not running, so a training step would fail", unreachable)
        return Check(name, FAIL, f"{who} does not answer ({type(error).__name__})", unreachable)
    except openai.APIStatusError as error:
        return Check(
            name,
            FAIL,
            f"{who} answered {error.status_code} to a list of fine-tuning jobs",
            "check that the key may use fine-tuning and that OPENAI_BASE_URL speaks OpenAI's fine-tuning routes.",
        )
    finally:
        client.close()
    return Check(name, OK, f"{who} answers with the key (listed fine-tuning jobs, spent nothing)")


def check_serving(context: _Context) -> list[Check]:
    """The endpoints the agent and the gate call: the self-hosted adapters' (FTP_SERVING_ENDPOINT,
    with the self-hosted provider) and each running experiment's, by a free model list; and each
    running arm served by a ``vllm``-kind endpoint, by a one-token completion of its model."""
    from ftp_assets.adapters.endpoints import EndpointsError
    from ftp_assets.definitions import serving_endpoints

    settings = context.settings
    serving = serving_endpoints(settings)  # as the runs see them, local defaults included
    try:
        endpoints = serving.endpoints()
    except EndpointsError as error:
        return [Check("serving", FAIL, str(error), "correct FTP_ENDPOINTS_FILE.")]
    store = _experiments(context) if "experiments.migrations" not in context.failed else None
    if store is None:  # which endpoints the running experiments name is unknown
        return [_not_checked("serving", "experiments.migrations")]
    running = store.all_running()
    arms = [
        (f"{experiment.task}.{arm}", model, endpoint)
        for experiment in running
        for arm, model, endpoint in (
            ("champion", experiment.champion_model, experiment.champion_endpoint),
            ("challenger", experiment.challenger_model, experiment.challenger_endpoint),
        )
    ]
    names = ([settings.serving_endpoint] if settings.self_hosted else []) + [endpoint for _, _, endpoint in arms]
    checks = []
    answering = set()
    for name in dict.fromkeys(names):
        if name not in endpoints:
            unknown = "a running experiment names an endpoint that no file defines"
            checks.append(Check(f"serving.{name}", FAIL, unknown, "set FTP_ENDPOINTS_FILE to the agent's file."))
            continue
        check = _guarded_check(f"serving.{name}", partial(_check_endpoint, settings, serving, endpoints[name]))
        if check.verdict == OK:
            answering.add(name)
        checks.append(check)
    for arm, model, name in arms:
        if name in answering and endpoints[name].kind == "vllm":
            step = partial(_check_served_model, f"serving.{arm}", serving, endpoints[name], model)
            checks.append(_guarded_check(f"serving.{arm}", step))
    if not checks:
        checks.append(Check("serving", OK, "no self-hosted serving configured and no experiment running"))
    return checks


def _check_endpoint(settings: DeploymentSettings, serving: ServingEndpoints, endpoint: Endpoint) -> Check:
    import openai

    from ftp_assets.adapters.endpoints import EndpointsError

    name, where = f"serving.{endpoint.name}", redacted(endpoint.base_url)
    try:
        client = serving.client(endpoint.name, timeout_s=PROVIDER_TIMEOUT_SECONDS, max_retries=0)
    except EndpointsError as error:
        return Check(name, FAIL, str(error), f"set {endpoint.api_key_env} where the pipeline runs.")
    try:
        models = client.models.list()
    except openai.AuthenticationError:
        return Check(name, FAIL, f"{where} refused the key (401)", f"set {endpoint.api_key_env} to the endpoint's key.")
    except openai.APIConnectionError as error:
        if not settings.production and endpoint.base_url.startswith(("http://127.0.0.1", "http://localhost")):
            # Like the local service: a server that runs while it is needed, not a misconfiguration.
            fix = _start_serving() if endpoint.kind == "vllm" else f"start it: `make ui` (or {_ftp('local-openai')})."
            return Check(name, WARN, f"nothing answers at {where}, so the readiness gate would fail", fix)
        return Check(name, FAIL, f"{where} does not answer ({type(error).__name__})", "check the URL and network.")
    except openai.APIStatusError as error:
        return Check(name, FAIL, f"{where} answered {error.status_code} to a model list", "check the endpoint's URL.")
    finally:
        client.close()
    return Check(name, OK, f"{where} answers with the key ({len(models.data)} models listed)")


def _start_serving() -> str:
    from ftp_assets.resources import TINY_BASE_NAME, SelfHostedTraining

    training = SelfHostedTraining()
    return (
        "start it: `make ui` does once the tiny base exists (after the self-hosted demo), or "
        f"`{installed_command('ftp-serve')} --base-model {training.base_model_location()} "
        f"--base-name {TINY_BASE_NAME} --adapters {training.adapters_root()} --port 8100`."
    )


def _check_served_model(name: str, serving: ServingEndpoints, endpoint: Endpoint, model: str) -> Check:
    import openai

    client = serving.client(endpoint.name, timeout_s=PROVIDER_TIMEOUT_SECONDS, max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1)
    except openai.APIStatusError as error:
        return Check(
            name,
            FAIL,
            f"{endpoint.name} does not serve {model} ({error.status_code}: {error.message[:200]})",
            "see docs/serving.md: the adapter's folder, its manifest and hash.",
        )
    finally:
        client.close()
    return Check(name, OK, f"{model} answers at {endpoint.name}")


def _check_trainer(settings: DeploymentSettings) -> Check:
    name = "provider"
    if settings.production:
        if not settings.trainer_image:
            return Check(name, FAIL, "FTP_TRAINER_IMAGE is unset", "set FTP_TRAINER_IMAGE to the trainer's image.")
        return Check(name, OK, f"self-hosted trainer pods of image {settings.trainer_image}")
    from ftp_assets.resources import SelfHostedTraining

    missing = SelfHostedTraining.missing_local_modules()
    if missing:
        return Check(name, FAIL, f"the self-hosted trainer lacks {', '.join(missing)}", "pip install -e '.[train]'.")
    return Check(name, OK, "the self-hosted trainer is installed (ftp_trainer, torch, trl, peft)")


def _check_base_model(settings: DeploymentSettings) -> Check:
    name = "provider.base_model"
    base = settings.self_hosted_base_model
    if not base:
        if settings.production:
            return Check(
                name, FAIL, "FTP_SELF_HOSTED_BASE_MODEL is unset", "set it to the base model's folder on the volume."
            )
        return Check(name, OK, "the tiny base under FTP_HOME, built on first use (no real model)")
    folder = Path(base).expanduser()
    if (folder / "config.json").is_file():
        return Check(name, OK, f"{folder} is a model folder")
    if settings.production:
        return Check(
            name,
            WARN,
            f"{folder} holds no config.json here",
            "make sure the folder exists on the trainer pod's model cache volume.",
        )
    return Check(
        name,
        FAIL,
        f"{folder} is not a model folder with a config.json",
        "point FTP_SELF_HOSTED_BASE_MODEL at the base model's folder (nothing is downloaded), or unset it "
        "for the tiny base.",
    )


# 6. storage


def check_storage(context: _Context) -> Check:
    name = "storage"
    settings = context.settings
    probe = f".ftp-doctor-probe-{uuid.uuid4().hex}"
    payload = b"ftp-assets doctor probe\n"
    if settings.storage_url:
        from upath import UPath

        where = redacted(settings.storage_url)
        target = UPath(settings.storage_url) / probe
        try:
            target.write_bytes(payload)
            read = target.read_bytes()
            target.unlink()
        except Exception as error:
            return Check(
                name,
                FAIL,
                f"{where} is not writable ({type(error).__name__})",
                "create the bucket or folder of FTP_STORAGE_URL and give this identity write access to it.",
            )
        if read != payload:
            return Check(name, FAIL, f"{where} returned other bytes than written", "check the storage's consistency.")
        return Check(name, OK, f"{where} is writable (probe written, read back, deleted)")
    from ftp_assets.home import home_path

    folder = Path(settings.datasets_dir).expanduser() if settings.datasets_dir else home_path("datasets")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / probe
        local.write_bytes(payload)
        local.unlink()
    except OSError as error:
        return Check(
            name,
            FAIL,
            f"the datasets folder {folder} is not writable ({type(error).__name__})",
            "give this user write access to it, or set FTP_DATASETS_DIR.",
        )
    return Check(name, OK, f"the datasets folder {folder} is writable")


# 7. Dagster


def check_dagster_instance(context: _Context) -> Check:
    name = "dagster.instance"
    home = os.environ.get("DAGSTER_HOME", "")
    if not home:
        return Check(name, FAIL, "DAGSTER_HOME is unset", "set DAGSTER_HOME to the instance's folder.")
    from dagster import DagsterInstance

    try:
        context.instance = DagsterInstance.get()
    except Exception as error:
        return Check(
            name,
            FAIL,
            f"the instance in {home} does not open: {_error_text(error)}",
            "correct its dagster.yaml (and the DAGSTER_PG_* variables it reads).",
        )
    storage = type(context.instance.run_storage).__name__
    if context.settings.production and "Postgres" not in storage:
        return Check(
            name,
            FAIL,
            f"the instance in {home} keeps runs in {storage}, not PostgreSQL",
            "use deploy/dagster.yaml (PostgreSQL storage) as its dagster.yaml.",
        )
    return Check(name, OK, f"the instance in {home} opens ({storage})")


def _ftp(arguments: str) -> str:
    """An ``ftp-assets`` command as the user can type it here (in backticks)."""
    return f"`{installed_command('ftp-assets')} {arguments}`"


def check_code_location(context: _Context) -> Check:
    name = "dagster.code_location"
    from ftp_assets.definitions import load_definitions

    try:
        context.definitions = load_definitions()
    except SettingsError as error:
        return Check(name, FAIL, f"does not load: {error}", "set or correct the variables it names.")
    except Exception as error:
        return Check(name, FAIL, f"does not load: {_error_text(error)}", "fix the error named, then reload.")
    return Check(name, OK, "ftp_assets.definitions loads")


def check_automation(context: _Context) -> list[Check]:
    names = [(SCHEDULE, True), *((sensor, False) for sensor in SENSORS)]
    if context.definitions is None:
        return [_not_checked(f"automation.{n}", "dagster.code_location") for n, _ in names]
    if context.instance is None:
        return [_not_checked(f"automation.{n}", "dagster.instance") for n, _ in names]
    from dagster._core.scheduler.instigation import InstigatorStatus

    states: dict[str, list[InstigatorStatus]] = {}
    for state in context.instance.all_instigator_state():
        states.setdefault(state.name, []).append(state.status)
    settings = context.settings
    checks = []
    for instigator, is_schedule in names:
        name = f"automation.{instigator}"
        definition = (
            context.definitions.resolve_schedule_def(instigator)
            if is_schedule
            else context.definitions.resolve_sensor_def(instigator)
        )
        default = definition.default_status.value == "RUNNING"
        recorded = [status for status in states.get(instigator, []) if status != InstigatorStatus.DECLARED_IN_CODE]
        running = InstigatorStatus.RUNNING in recorded if recorded else default
        how = "in the instance" if recorded else "by its default status"
        if running:
            checks.append(Check(name, OK, f"running ({how})"))
            continue
        kind = "schedule" if is_schedule else "sensor"
        if settings.production and settings.automation == "off":
            fix = "unset FTP_AUTOMATION (it is off) and reload the code location."
        else:
            where = "in the UI (Automation)" if settings.production else "in the UI: `make ui`, then Automation"
            fix = f"start the {kind} {where}."
        local = "" if settings.production else " (the local profile starts it stopped)"
        checks.append(Check(name, FAIL if settings.production else WARN, f"stopped ({how}){local}", fix))
    return checks


def check_observability(context: _Context) -> list[Check]:
    """The Pushgateway answers (a GET of its readiness: nothing is pushed), and whether failures
    are notified. Neither gates a run, so neither is a failure (docs/observability.md)."""
    from ftp_assets.adapters.metrics import readiness

    settings = context.settings
    gateway = settings.pushgateway_url
    if not gateway:
        fix = "set FTP_PUSHGATEWAY_URL to the Pushgateway your Prometheus scrapes (docs/observability.md)."
        metrics = Check("metrics", WARN if settings.production else OK, "FTP_PUSHGATEWAY_URL is unset: no metrics", fix)
    else:
        where = redacted(gateway)
        problem = readiness(gateway)
        if problem:
            fix = "start the Pushgateway, or correct FTP_PUSHGATEWAY_URL; until then the runs log a warning."
            metrics = Check("metrics", WARN, f"the Pushgateway at {where}: {problem}", fix)
        else:
            metrics = Check("metrics", OK, f"the Pushgateway at {where} is ready")
    return [metrics, _alerts(settings)]


def _alerts(settings: DeploymentSettings) -> Check:
    if settings.has("FTP_ALERT_WEBHOOK_URL"):
        link = "with run links" if settings.dagster_ui_url else "without run links (FTP_DAGSTER_UI_URL is unset)"
        return Check("alerts", OK, f"failed runs are posted to the webhook ({settings.alert_webhook_format}), {link}")
    fix = "set FTP_ALERT_WEBHOOK_URL (a Slack incoming webhook or any JSON one) to be told of failed runs."
    return Check("alerts", WARN if settings.production else OK, "FTP_ALERT_WEBHOOK_URL is unset: no notifications", fix)
