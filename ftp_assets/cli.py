"""``ftp``: the front door to the project's embedded defaults and its operations."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

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
            f"`ftp {command}` needs the project's local extra ({', '.join(missing) or module} missing): "
            "run `pip install -e '.[local]'` in the project's folder (`make demo` does)."
        )
    return importlib.import_module(module)


def _posts_db():
    from ftp_assets.adapters.posts_db import PostsDatabase
    from ftp_assets.resources import default_posts_db_url

    return PostsDatabase(
        os.environ.get("FTP_POSTS_DB_URL") or default_posts_db_url(), os.environ.get("FTP_POSTS_TABLE", "posts")
    )


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
    if os.environ.get("FTP_POSTS_DB_URL") and not args.force:
        raise UserError(
            "FTP_POSTS_DB_URL is set and may be the agent's production database: "
            "add --force to write synthetic posts into it anyway."
        )
    db = _posts_db()
    db.init_schema()
    inserted = load_demo_posts(db, posts=args.posts, seed=args.seed)
    print(f"Inserted {inserted} synthetic demo posts.")


def cmd_demo(args: argparse.Namespace) -> None:
    _from_local_extra("ftp_demo.cycle", "demo").run_demo(posts=args.posts, seed=args.seed)


def cmd_local_openai(args: argparse.Namespace) -> None:
    from ftp_assets.resources import LOCAL_OPENAI_API_KEY

    serve = _from_local_extra("ftp_local_openai", "local-openai").serve

    state_dir = Path(args.state_dir) if args.state_dir else home_path("local_openai")
    print(
        f"Local OpenAI-compatible service on http://{args.host}:{args.port}/v1, key {LOCAL_OPENAI_API_KEY!r}, "
        f"state in {state_dir}. Ctrl-C stops it; jobs in flight resume at the next start."
    )
    serve(args.host, args.port, state_dir, LOCAL_OPENAI_API_KEY)


def cmd_rollback(args: argparse.Namespace) -> None:
    from ftp_assets.resources import MlflowResource
    from ftp_assets.steps.experiment import rollback_champion_of

    mlflow = MlflowResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""))
    with mlflow.errors():
        print(rollback_champion_of(mlflow.client(), args.task))


def cmd_ui(args: argparse.Namespace) -> None:
    _from_local_extra("ftp_demo.ui", "ui").serve_uis(
        dagster_port=args.dagster_port, mlflow_port=args.mlflow_port, openai_port=args.openai_port
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftp",
        description="Continuous fine-tuning of the Threads agent's models. Embedded state lives "
        "in FTP_HOME (default ~/.ftp_assets); FTP_POSTS_DB_URL selects the posts database.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run a whole weekly cycle on the embedded defaults")
    demo.add_argument("--posts", type=int, default=6_000, help="demo posts to create (default 6000)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the demo data and simulation")
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
    local.set_defaults(func=cmd_local_openai)

    back = commands.add_parser("rollback", help="restore the previous champion of a task in the MLflow registry")
    back.add_argument("--task", required=True, choices=TASKS)
    back.set_defaults(func=cmd_rollback)

    ui = commands.add_parser("ui", help="serve the Dagster UI (with its daemon) and the MLflow UI over FTP_HOME")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--openai-port", type=int, default=LOCAL_OPENAI_PORT, help="of the local service")
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
        print(f"ftp: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
