"""The deployment profile: the code location loads, in a process of its own as Dagster loads it,
with today's embedded defaults locally, and in production only when every external system is
configured, failing with one sentence that names what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ftp_assets.settings import DeploymentSettings, SettingsError

# Loads the code location as Dagster does (the decorated loader) and prints what a test checks.
LOAD = """
import json
from ftp_assets.definitions import load_definitions
defs = load_definitions()
repository = defs.get_repository_def()
openai = defs.resources["openai"]
print(json.dumps({
    "schedules": {s.name: s.default_status.value for s in repository.schedule_defs},
    "sensors": {s.name: s.default_status.value for s in repository.sensor_defs},
    "openai_base_url": openai.base_url.get_value() if hasattr(openai.base_url, "get_value") else openai.base_url,
    "openai_key_from_env": getattr(openai.api_key, "env_var_name", None),
    "io_manager": type(defs.resources.get("io_manager")).__name__,
    "posts_table": defs.resources["posts_db"].table,
    "provider": defs.resources["fine_tuning"].provider,
    "fail_fast_at": defs.resources["fine_tuning"].local_service_url,
    "trainer": defs.resources["self_hosted_training"].model_dump(
        include={"launcher", "base_model", "adapters_url", "image", "work_dir"}
    ),
    "serving": {
        name: endpoint.base_url for name, endpoint in defs.resources["serving"].endpoints().items()
    },
    "serving_endpoint": defs.resources["serving"].serving_endpoint,
}))
"""

SECRET_KEY = "sk-test-secret-value"
PRODUCTION = {
    "FTP_DEPLOYMENT": "production",
    "OPENAI_API_KEY": SECRET_KEY,
    "OPENAI_BASE_URL": "https://llm.example.test/v1",
    "FTP_POSTS_DB_URL": "postgresql+psycopg://agent:secret-password@db.example.test/agent",
    "MLFLOW_TRACKING_URI": "http://mlflow.example.test",
    "FTP_STORAGE_URL": "s3://ftp-bucket/ftp",
}
CONFIG_VARIABLES = ("FTP_", "OPENAI_", "MLFLOW_")


def load(**variables: str) -> subprocess.CompletedProcess:
    """The code location loaded in a fresh process, with the test's FTP_HOME/DAGSTER_HOME and
    ``variables`` as the only configuration."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(CONFIG_VARIABLES)}
    env.update(FTP_HOME=os.environ["FTP_HOME"], **variables)
    return subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=120)


def loaded(**variables: str) -> dict:
    process = load(**variables)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.splitlines()[-1])


def last_line(process: subprocess.CompletedProcess) -> str:
    return process.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("missing", ["OPENAI_API_KEY", "FTP_POSTS_DB_URL", "MLFLOW_TRACKING_URI", "FTP_STORAGE_URL"])
def test_production_without_a_required_variable_does_not_load(missing):
    process = load(**{name: value for name, value in PRODUCTION.items() if name != missing})
    assert process.returncode != 0
    assert last_line(process).endswith(
        f"SettingsError: FTP_DEPLOYMENT=production has no embedded defaults: set {missing}."
    )
    # Neither the key nor a password reaches the error.
    assert SECRET_KEY not in process.stderr and "secret-password" not in process.stderr


def test_production_names_every_missing_variable_in_one_sentence(monkeypatch):
    for name in PRODUCTION:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FTP_DEPLOYMENT", "production")
    with pytest.raises(SettingsError) as error:
        DeploymentSettings.from_environment()
    assert str(error.value) == (
        "FTP_DEPLOYMENT=production has no embedded defaults: "
        "set OPENAI_API_KEY, FTP_POSTS_DB_URL, MLFLOW_TRACKING_URI, FTP_STORAGE_URL."
    )


def test_production_loads_with_automation_running_and_the_configured_provider():
    location = loaded(**PRODUCTION)
    assert set(location["schedules"].values()) == {"RUNNING"}
    assert location["sensors"] == {
        "hook_data_threshold_sensor": "RUNNING",
        "body_data_threshold_sensor": "RUNNING",
        "experiment_evaluation_sensor": "RUNNING",
        # Nothing to publish or notify in this environment.
        "run_failure_alerts": "STOPPED",
        "metrics_refresh": "STOPPED",
    }
    assert location["openai_base_url"] == "https://llm.example.test/v1"
    assert location["openai_key_from_env"] == "OPENAI_API_KEY"  # an EnvVar, resolved by each run
    assert location["io_manager"] == "FilesystemIOManager"
    assert location["fail_fast_at"] == ""  # production waits out a provider's outages


SELF_HOSTED = {
    **{name: value for name, value in PRODUCTION.items() if not name.startswith("OPENAI_")},
    "FTP_PROVIDER": "self_hosted",
    "FTP_TRAINER_IMAGE": "registry.example.test/ftp-trainer@sha256:" + "0" * 64,
    "FTP_SELF_HOSTED_BASE_MODEL": "/models/Qwen2.5-1.5B-Instruct",
    "FTP_SERVING_URL": "http://ftp-vllm.ftp.svc.cluster.local:8000/v1",
}


def test_production_with_the_self_hosted_trainer_needs_its_image_and_base_not_an_openai_key():
    location = loaded(**SELF_HOSTED)
    assert location["provider"] == "self_hosted"
    assert location["trainer"] == {
        "launcher": "kubernetes",
        "base_model": "/models/Qwen2.5-1.5B-Instruct",
        "adapters_url": "s3://ftp-bucket/ftp/adapters",
        "image": SELF_HOSTED["FTP_TRAINER_IMAGE"],
        "work_dir": "",
    }
    assert location["serving"]["self_hosted"] == SELF_HOSTED["FTP_SERVING_URL"]
    assert location["serving_endpoint"] == "self_hosted"
    for missing in ("FTP_TRAINER_IMAGE", "FTP_SELF_HOSTED_BASE_MODEL"):
        process = load(**{name: value for name, value in SELF_HOSTED.items() if name != missing})
        assert last_line(process).endswith(f"FTP_DEPLOYMENT=production has no embedded defaults: set {missing}.")
    # The built-in serving endpoint's default is a laptop's ftp-serve, which no pod reaches.
    process = load(**{name: value for name, value in SELF_HOSTED.items() if name != "FTP_SERVING_URL"})
    assert last_line(process).endswith("set FTP_SERVING_URL (or FTP_ENDPOINTS_FILE).")


def test_the_endpoints_file_adds_endpoints_and_a_bad_one_stops_the_load(tmp_path):
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        "endpoints:\n  vllm-qwen:\n    base_url: http://vllm.example.test:8000/v1\n"
        "    api_key_env: FTP_VLLM_API_KEY\n    kind: vllm\n"
    )
    variables = {**SELF_HOSTED, "FTP_ENDPOINTS_FILE": str(endpoints), "FTP_SERVING_ENDPOINT": "vllm-qwen"}
    del variables["FTP_SERVING_URL"]
    location = loaded(**variables)
    assert location["serving"]["vllm-qwen"] == "http://vllm.example.test:8000/v1"
    assert location["serving"]["openai"] == "https://api.openai.com/v1"  # the built-ins stay
    assert location["serving_endpoint"] == "vllm-qwen"

    # A file whose serving endpoint is this machine: no pod reaches it, so production refuses.
    endpoints.write_text(
        "endpoints:\n  vllm-qwen:\n    base_url: http://127.0.0.1:8000/v1\n    api_key_env: FTP_VLLM_API_KEY\n"
    )
    assert last_line(load(**variables)).endswith("set FTP_SERVING_URL (or FTP_ENDPOINTS_FILE).")
    endpoints.write_text(
        "endpoints:\n  vllm-qwen:\n    base_url: http://vllm.example.test:8000/v1\n"
        "    api_key_env: FTP_VLLM_API_KEY\n    kind: vllm\n"
    )
    process = load(**{**variables, "FTP_SERVING_ENDPOINT": "vllm-llama"})
    assert last_line(process).endswith(
        "FTP_SERVING_ENDPOINT=vllm-llama names no endpoint (FTP_ENDPOINTS_FILE defines them); "
        "known: openai, self_hosted, vllm-qwen."
    )
    # A key written into the file is refused: the file is read by many, keys live in secrets.
    endpoints.write_text(
        "endpoints:\n  vllm-qwen:\n    base_url: http://vllm.example.test:8000/v1\n"
        "    api_key_env: FTP_VLLM_API_KEY\n    api_key: sk-oops\n"
    )
    process = load(**variables)
    assert "unknown field(s) api_key" in last_line(process) and "sk-oops" not in process.stderr


def test_the_local_self_hosted_trainer_runs_as_a_subprocess_on_the_tiny_base():
    location = loaded(FTP_PROVIDER="self_hosted")
    assert location["provider"] == "self_hosted"
    assert location["trainer"]["launcher"] == "subprocess" and location["trainer"]["base_model"] == ""
    process = load(FTP_PROVIDER="vllm")
    assert process.returncode != 0 and "FTP_PROVIDER" in last_line(process)


def test_automation_off_keeps_production_schedules_and_sensors_stopped():
    location = loaded(**PRODUCTION, FTP_AUTOMATION="off")
    assert set(location["schedules"].values()) == set(location["sensors"].values()) == {"STOPPED"}


def test_the_observability_sensors_run_once_they_have_something_to_do_even_with_automation_off():
    gateway = loaded(**PRODUCTION, FTP_AUTOMATION="off", FTP_PUSHGATEWAY_URL="http://pushgateway:9091")["sensors"]
    assert (gateway.pop("run_failure_alerts"), gateway.pop("metrics_refresh")) == ("RUNNING", "RUNNING")
    assert set(gateway.values()) == {"STOPPED"}
    webhook = loaded(**PRODUCTION, FTP_AUTOMATION="off", FTP_ALERT_WEBHOOK_URL="http://hooks/x")["sensors"]
    assert (webhook.pop("run_failure_alerts"), webhook.pop("metrics_refresh")) == ("RUNNING", "STOPPED")
    assert set(webhook.values()) == {"STOPPED"}


def test_a_malformed_pushgateway_url_stops_the_load_without_quoting_it():
    process = load(FTP_PUSHGATEWAY_URL="http://pusher:s3cret@gateway:port")
    assert process.returncode != 0
    assert "FTP_PUSHGATEWAY_URL is not a URL with a host and a numeric port" in last_line(process)
    assert "s3cret" not in process.stdout + process.stderr


def test_local_default_keeps_the_embedded_defaults():
    location = loaded()
    assert set(location["schedules"].values()) == set(location["sensors"].values()) == {"STOPPED"}
    assert location["openai_base_url"] == "http://127.0.0.1:8765/v1"
    assert location["openai_key_from_env"] is None
    assert location["io_manager"] == "NoneType"  # Dagster's default, under DAGSTER_HOME
    assert location["posts_table"] == "posts"
    # The local service, unstarted, fails a step at once; with a key, OpenAI's outages are waited out.
    assert location["fail_fast_at"] == "http://127.0.0.1:8765/v1"
    assert loaded(OPENAI_API_KEY=SECRET_KEY)["fail_fast_at"] == ""


@pytest.mark.parametrize(
    ("variables", "sentence"),
    [
        ({"FTP_DEPLOYMENT": "staging"}, "FTP_DEPLOYMENT: Input should be 'local' or 'production' (got 'staging')."),
        (
            {"FTP_TRAINING_SENSOR_INTERVAL_SECONDS": "0"},
            "FTP_TRAINING_SENSOR_INTERVAL_SECONDS must be a positive int, got '0'.",
        ),
        (
            {"FTP_MIN_TRAINING_INTERVAL_HOURS": "soon"},
            "FTP_MIN_TRAINING_INTERVAL_HOURS must be a positive float, got 'soon'.",
        ),
    ],
)
def test_an_invalid_value_is_one_sentence(monkeypatch, variables, sentence):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        DeploymentSettings.from_environment()
    assert str(error.value) == sentence


def test_settings_hold_no_secret_value(monkeypatch):
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    settings = DeploymentSettings.from_environment()
    assert settings.has("OPENAI_API_KEY") and settings.storage_url == "s3://ftp-bucket/ftp"
    shown = repr(settings) + str(settings.model_dump())
    assert SECRET_KEY not in shown and "secret-password" not in shown and "mlflow.example.test" not in shown
