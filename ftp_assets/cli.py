"""``ftp-assets``: the front door to the project's embedded defaults and its operations."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

from ftp_assets.adapters.endpoints import LOCAL_SERVING_PORT
from ftp_assets.domain.dataset import TASKS
from ftp_assets.home import home_path
from ftp_assets.resources import LOCAL_OPENAI_PORT

LOCAL_EXTRA = "local"


def missing_requirements(extra: str) -> list[str]:
    """The requirements of one of this project's extras that are not installed here."""
    missing = []
    for line in metadata.requires("ftp_assets") or []:
        requirement = Requirement(line)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement.name)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{requirement.name}{requirement.specifier} (found {installed})")
    return missing


def _from_local_extra(module: str, command: str) -> ModuleType:
    """A module of the local service or the demo, which the production image does not carry."""
    from ftp_assets.errors import UserError

    missing = missing_requirements(LOCAL_EXTRA)
    if missing or importlib.util.find_spec(module.split(".")[0]) is None:
        raise UserError(
            f"`ftp-assets {command}` needs the project's local extra ({', '.join(missing) or module} missing): "
            "run `pip install -e '.[local]'` in the project's folder (`make demo` does)."
        )
    return importlib.import_module(module)


def _settings():
    """The deployment settings the code location reads (a command needs only some of them)."""
    from ftp_assets.settings import DeploymentSettings

    return DeploymentSettings.from_environment(require_complete=False)


def _posts_db():
    from ftp_assets.adapters.posts_db import PostsDatabase
    from ftp_assets.resources import default_posts_db_url

    settings = _settings()
    url = settings.secret_value("FTP_POSTS_DB_URL") or default_posts_db_url(settings.home)
    return PostsDatabase(url, settings.posts_table)


def cmd_db_init(args: argparse.Namespace) -> None:
    from ftp_assets.adapters.experiments_store import ExperimentStore

    db = _posts_db()
    experiments = ExperimentStore(db.engine)
    if args.print_sql:
        print(db.schema_sql() + experiments.schema_sql(), end="")
        return
    db.init_schema()
    experiments.init_schema()
    print(
        f"Posts table ready and experiments table at migration {experiments.schema_revision()} "
        f"in {db.engine.url.render_as_string(hide_password=True)}."
    )


def cmd_demo_data(args: argparse.Namespace) -> None:
    from ftp_assets.errors import UserError

    load_demo_posts = _from_local_extra("ftp_demo.cycle", "demo-data").load_demo_posts
    if _settings().has("FTP_POSTS_DB_URL") and not args.force:
        raise UserError(
            "FTP_POSTS_DB_URL is set and may be the agent's production database: "
            "add --force to write synthetic posts into it anyway."
        )
    db = _posts_db()
    db.init_schema()
    inserted = load_demo_posts(db, posts=args.posts, seed=args.seed)
    print(f"Inserted {inserted} synthetic demo posts.")


def cmd_demo(args: argparse.Namespace) -> None:
    _from_local_extra("ftp_demo.cycle", "demo").run_demo(posts=args.posts, seed=args.seed, provider=args.provider)


def cmd_local_openai(args: argparse.Namespace) -> None:
    from ftp_assets.errors import UserError
    from ftp_assets.resources import LOCAL_OPENAI_API_KEY

    service = _from_local_extra("ftp_local_openai", "local-openai")
    if args.api_key:
        api_key, key_said = args.api_key, "the key given with --api-key"
    elif os.environ.get(service.API_KEY_ENV):
        api_key, key_said = os.environ[service.API_KEY_ENV], f"the key in {service.API_KEY_ENV}"
    elif service.is_loopback(args.host):
        # The well-known default is printed: clients need it, and it only ever guards loopback.
        api_key, key_said = LOCAL_OPENAI_API_KEY, f"key {LOCAL_OPENAI_API_KEY!r} (the local default)"
    else:
        raise UserError(
            f"--host {args.host} is reachable from other machines, so the service needs a key of its own: "
            f"set {service.API_KEY_ENV} (or pass --api-key)."
        )
    if args.max_upload_mib is not None and args.max_upload_mib < 1:
        raise UserError(f"--max-upload-mib must be at least 1, got {args.max_upload_mib}.")
    max_upload_bytes = args.max_upload_mib * 2**20 if args.max_upload_mib else service.DEFAULT_MAX_UPLOAD_BYTES
    state_dir = Path(args.state_dir) if args.state_dir else home_path("local_openai")
    address = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"Local OpenAI-compatible service on http://{address}:{args.port}/v1 with {key_said}, state in "
        f"{state_dir}, uploads up to {max_upload_bytes / 2**20:g} MiB. Ctrl-C stops it; jobs in flight resume "
        "at the next start.",
        flush=True,
    )
    service.serve(args.host, args.port, state_dir, api_key, max_upload_bytes)


def cmd_rollback(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from ftp_assets.adapters.experiments_store import ExperimentStore
    from ftp_assets.resources import ExperimentSettings, MetricsPublisher, MlflowResource
    from ftp_assets.steps.experiment import rollback_champion_of

    # The experiments table too: the running experiment must not keep the demoted champion.
    experiments = ExperimentStore(_posts_db().engine)
    experiments.init_schema()
    settings = _settings()
    mlflow = MlflowResource(tracking_uri=settings.secret_value("MLFLOW_TRACKING_URI"))
    with mlflow.errors():
        print(rollback_champion_of(mlflow.client(), experiments, args.task, now=datetime.now(UTC)))
    # As rollback_job does: the dashboards see the cancelled experiment and the restored champion.
    metrics = MetricsPublisher(pushgateway_url=settings.pushgateway_url)
    log = logging.getLogger("ftp_assets.rollback")
    metrics.publish_experiments(log, experiments, args.task, ExperimentSettings())
    metrics.publish_registry(log, mlflow, experiments, args.task)


def cmd_doctor(args: argparse.Namespace) -> None:
    from dagster import PreviewWarning

    from ftp_assets.doctor import doctor, format_line, has_failure

    # Its output is the checks' lines: Dagster's preview notice for partitioned asset checks,
    # raised while the definitions load, is not the user's to act on.
    warnings.filterwarnings("ignore", category=PreviewWarning)
    checks = doctor()
    for check in checks:
        print(format_line(check), flush=True)
    if has_failure(checks):
        sys.exit(1)


def cmd_ui(args: argparse.Namespace) -> None:
    _from_local_extra("ftp_demo.ui", "ui").serve_uis(
        dagster_port=args.dagster_port,
        mlflow_port=args.mlflow_port,
        openai_port=args.openai_port,
        serving_port=args.serving_port,
        prometheus_port=args.prometheus_port,
        pushgateway_port=args.pushgateway_port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftp-assets",
        description="Continuous fine-tuning of the Threads agent's models. Embedded state lives "
        "in FTP_HOME (default ~/.ftp_assets); FTP_POSTS_DB_URL selects the posts database.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run a whole weekly cycle on the embedded defaults")
    demo.add_argument(
        "--posts",
        type=int,
        help="synthetic posts of the two weeks before the demo (default: 14 days at the live week's rate, "
        "8400, or 5600 with --provider self_hosted)",
    )
    demo.add_argument(
        "--seed", type=int, help="seed of the demo data and simulation (default: a new one each run, printed)"
    )
    demo.add_argument(
        "--provider",
        choices=("openai", "self_hosted"),
        default="openai",
        help="who fine-tunes: the local OpenAI-compatible service (default), or the self-hosted LoRA trainer on a "
        "tiny base, its adapters served on CPU",
    )
    demo.set_defaults(func=cmd_demo)

    db = commands.add_parser("db", help="the posts database").add_subparsers(dest="db_command", required=True)
    init = db.add_parser(
        "init", help="create the posts table and its indexes if missing, and migrate the experiments table (idempotent)"
    )
    init.add_argument(
        "--print-sql",
        action="store_true",
        help="print the SQL for the database instead (the posts DDL and the migrations)",
    )
    init.set_defaults(func=cmd_db_init)

    data = commands.add_parser("demo-data", help="fill the posts table with clearly synthetic posts")
    data.add_argument("--posts", type=int, default=6_000)
    data.add_argument("--seed", type=int, default=7)
    data.add_argument("--force", action="store_true", help="write into the database of FTP_POSTS_DB_URL too")
    data.set_defaults(func=cmd_demo_data)

    local = commands.add_parser("local-openai", help="serve the local OpenAI-compatible fine-tuning service")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=LOCAL_OPENAI_PORT)
    local.add_argument("--state-dir", help="where files, jobs and models are kept (default $FTP_HOME/local_openai)")
    local.add_argument(
        "--api-key",
        help="the bearer key clients must send (default $FTP_LOCAL_OPENAI_API_KEY, which other users cannot "
        "see in the process list; without either, sk-local-ftp, on a loopback --host only)",
    )
    local.add_argument("--max-upload-mib", type=int, help="the largest file upload taken, in MiB (default 64)")
    local.set_defaults(func=cmd_local_openai)

    back = commands.add_parser(
        "rollback",
        help="restore the previous champion of a task in the MLflow registry and cancel its running experiment",
    )
    back.add_argument("--task", required=True, choices=TASKS)
    back.set_defaults(func=cmd_rollback)

    check = commands.add_parser("doctor", help="check the configuration and every part it names, one line each")
    check.set_defaults(func=cmd_doctor)

    ui = commands.add_parser("ui", help="serve the Dagster UI (with its daemon) and the MLflow UI over FTP_HOME")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--openai-port", type=int, default=LOCAL_OPENAI_PORT, help="of the local service")
    ui.add_argument(
        "--serving-port", type=int, default=LOCAL_SERVING_PORT, help="of ftp-serve, once the tiny base exists"
    )
    ui.add_argument("--prometheus-port", type=int, default=9090, help="of Prometheus, when it is installed")
    ui.add_argument("--pushgateway-port", type=int, default=9091, help="of its Pushgateway")
    ui.set_defaults(func=cmd_ui)
    return parser


def ensure_dagster_home() -> None:
    """DAGSTER_HOME defaults to $FTP_HOME/dagster, with the project's local instance config."""
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home_path("dagster"))))
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_bytes(files("ftp_assets").joinpath("dagster_local.yaml").read_bytes())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ensure_dagster_home()
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the one place that turns a user-facing error into one line
        from ftp_assets.errors import is_user_error

        if not is_user_error(error):
            raise
        print(f"ftp-assets: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
