import pytest

pytest_plugins = [
    "ftp_assets_tests.fixtures.postgres",
    "ftp_assets_tests.fixtures.mlflow_server",
    "ftp_assets_tests.fixtures.local_openai",
    "ftp_assets_tests.fixtures.prometheus",
]


@pytest.fixture(autouse=True)
def isolated_ftp_home(tmp_path, monkeypatch):
    """Every test gets its own FTP_HOME, so no test reads or writes a user's state."""
    home = tmp_path / "ftp_home"
    monkeypatch.setenv("FTP_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return home
