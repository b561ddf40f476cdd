"""``ftp``: the front door to the project's embedded defaults and its operations."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.resources import files
from pathlib import Path

from ftp_assets.home import home_path


def _posts_db():
    from ftp_assets.posts_db import PostsDatabase
    from ftp_assets.resources import default_posts_db_url

    return PostsDatabase(os.environ.get("FTP_POSTS_DB_URL") or default_posts_db_url(),
                         os.environ.get("FTP_POSTS_TABLE", "posts"))  # fmt: skip


def cmd_db_init(args: argparse.Namespace) -> None:
    db = _posts_db()
    if args.print_sql:
        print(db.schema_sql(), end="")
        return
    db.init_schema()
    print(f"Posts schema ready in {db.engine.url.render_as_string(hide_password=True)}.")


def cmd_demo_data(args: argparse.Namespace) -> None:
    from ftp_assets.demo import load_demo_posts

    db = _posts_db()
    db.init_schema()
    inserted = load_demo_posts(db, posts=args.posts, seed=args.seed)
    print(f"Inserted {inserted} synthetic demo posts.")


def cmd_demo(args: argparse.Namespace) -> None:
    from ftp_assets.demo import run_demo

    run_demo(posts=args.posts, seed=args.seed)


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
    init = db.add_parser("init", help="create the posts table and its indexes if missing (idempotent)")
    init.add_argument("--print-sql", action="store_true", help="print the DDL for the database instead")
    init.set_defaults(func=cmd_db_init)

    data = commands.add_parser("demo-data", help="fill the posts table with clearly synthetic posts")
    data.add_argument("--posts", type=int, default=6_000)
    data.add_argument("--seed", type=int, default=7)
    data.set_defaults(func=cmd_demo_data)
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
