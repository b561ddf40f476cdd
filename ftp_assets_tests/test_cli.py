"""The `ftp-assets` front door: help, and errors a user can cause said in one sentence."""

import subprocess
import sys
from importlib import metadata

import pytest

from ftp_assets import cli
from ftp_assets.cli import LOCAL_EXTRA, main, missing_requirements


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "ftp_assets.cli", "--help"], capture_output=True, text=True).stdout
    for command in ("demo", "db", "demo-data", "local-openai", "rollback", "ui"):
        assert command in out


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "ftp-assets: FTP_POSTS_DB_URL is not a valid SQLAlchemy URL"),
        (
            "postgresql://agent:hunter2@127.0.0.1:1/posts",
            "ftp-assets: Cannot connect to the posts database at postgresql+psycopg://127.0.0.1:1/posts:",
        ),
        # libpq takes the password from the query too.
        (
            "postgresql://agent@127.0.0.1:1/posts?password=hunter2&sslmode=disable",
            "ftp-assets: Cannot connect to the posts database at postgresql+psycopg://127.0.0.1:1/posts:",
        ),
        # An unencoded "@" in the password: the user's part ends at the last one.
        (
            "postgresql://agent:hunter2@hunter2@127.0.0.1:1/posts",
            "ftp-assets: Cannot connect to the posts database at postgresql+psycopg://127.0.0.1:1/posts:",
        ),
    ],
)
def test_bad_database_url_is_one_clear_sentence(monkeypatch, capsys, url, message):
    monkeypatch.setenv("FTP_POSTS_DB_URL", url)
    assert main(["db", "init"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert "hunter2" not in err


def test_db_init_is_idempotent_and_demo_data_appends(pg_posts_url, monkeypatch, capsys):
    monkeypatch.setenv("FTP_POSTS_DB_URL", pg_posts_url)
    assert main(["db", "init"]) == 0
    assert main(["db", "init"]) == 0
    assert main(["demo-data", "--posts", "50"]) == 1  # refused: this may be the production database
    assert "add --force" in capsys.readouterr().err
    assert main(["demo-data", "--posts", "50", "--force"]) == 0
    assert main(["demo-data", "--posts", "50", "--force"]) == 0  # new ids after the largest: no conflict
    assert capsys.readouterr().out.count("Inserted 50 synthetic demo posts.") == 2


def test_rollback_with_nothing_to_roll_back_says_so(capsys):
    assert main(["rollback", "--task", "hook"]) == 1
    assert "Nothing to roll back: threads_agent_hook_model has no previous-champion alias" in capsys.readouterr().err


def test_local_extra_is_found_where_installed():
    """The test environment installs the local extra: nothing of it is missing."""
    assert missing_requirements(LOCAL_EXTRA) == []


def test_a_requirement_missing_from_an_extra_is_named(monkeypatch):
    requires = metadata.requires("ftp_assets") or []
    absent = ['ftp-no-such-package>=1; extra == "local"', 'fastapi>=999; extra == "local"']
    monkeypatch.setattr(cli.metadata, "requires", lambda name: [*requires, *absent])
    missing = missing_requirements(LOCAL_EXTRA)
    assert missing[0] == "ftp-no-such-package"
    assert missing[1].startswith("fastapi>=999 (found ")
    assert len(missing) == 2


def test_a_command_of_the_local_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(cli.metadata, "requires", lambda name: ['ftp-no-such-package>=1; extra == "local"'])
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "`ftp-assets demo` needs the project's local extra (ftp-no-such-package missing)" in err
    assert "pip install -e '.[local]'" in err


def test_the_next_steps_the_demo_prints_are_commands_that_exist():
    """`make demo` ends with `make ui` and paths into the virtualenv, not bare names that are not on
    the PATH (or, for `ftp`, another program)."""
    from pathlib import Path

    from ftp_demo.cycle import installed_command

    for name in ("ftp-assets", "mlflow"):
        assert Path(installed_command(name)).is_file(), installed_command(name)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "\nui: $(INSTALLED)\n\t$(VENV)/bin/ftp-assets ui\n" in makefile
