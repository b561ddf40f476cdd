"""``ftp-assets ui``: the Dagster UI with its daemon, the MLflow UI, (unless OPENAI_API_KEY is set)
the local OpenAI-compatible service, and (once the self-hosted demo or trainer has built the tiny
base, unless FTP_SERVING_URL is set) ``ftp-serve`` with its adapters, all over the state in
FTP_HOME, and (when Debian's packages are installed) Prometheus with its Pushgateway, until Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ftp_assets.adapters.endpoints import LOCAL_SERVING_PORT
from ftp_assets.adapters.mlflow_registry import local_tracking_uri
from ftp_assets.home import home_path
from ftp_assets.resources import LOCAL_OPENAI_API_KEY, LOCAL_OPENAI_PORT, TINY_BASE_NAME, SelfHostedTraining
from ftp_demo import monitoring
from ftp_demo.monitoring import PROMETHEUS_PORT, PUSHGATEWAY_PORT
from ftp_local_openai import API_KEY_ENV
from ftp_trainer.tiny_base import is_complete

STOP_TIMEOUT_S = 20
MONITORS = ("Pushgateway", "Prometheus")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_uis(
    *,
    dagster_port: int,
    mlflow_port: int,
    openai_port: int = LOCAL_OPENAI_PORT,
    serving_port: int = LOCAL_SERVING_PORT,
    prometheus_port: int = PROMETHEUS_PORT,
    pushgateway_port: int = PUSHGATEWAY_PORT,
) -> None:
    # Stop cleanly on Ctrl-C and on SIGTERM, even when started with SIGINT ignored (in the background).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    commands = {
        "Dagster": [_bin("dagster"), "dev", "-m", "ftp_assets.definitions", "-p", str(dagster_port)],
        "MLflow": [
            _bin("mlflow"),
            "ui",
            "--backend-store-uri",
            os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(home_path("mlflow")),
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
    }
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    envs = {name: env for name in commands}
    if not os.environ.get("OPENAI_API_KEY"):
        commands["local OpenAI"] = [_bin("ftp-assets"), "local-openai", "--port", str(openai_port)]
        # The key the code location sends when OPENAI_API_KEY is unset, whatever the shell has set.
        envs["local OpenAI"] = {**env, API_KEY_ENV: LOCAL_OPENAI_API_KEY}
    training = SelfHostedTraining()
    base = Path(training.base_model_location())
    if not os.environ.get("FTP_SERVING_URL") and is_complete(base):
        # The self-hosted models the demo left, where the built-in self_hosted endpoint looks.
        commands["ftp-serve"] = [
            _bin("ftp-serve"),
            "--base-model",
            str(base),
            "--base-name",
            TINY_BASE_NAME,
            "--adapters",
            training.adapters_root(),
            "--port",
            str(serving_port),
        ]
        envs["ftp-serve"] = env
    monitoring_note = _add_monitoring(commands, envs, env, prometheus_port, pushgateway_port)
    # Each child in its own session: Ctrl-C reaches this process only, which then stops them in
    # order, so none is left running (dagster dev ignores a SIGINT it inherits as ignored).
    with contextlib.ExitStack() as files:
        # Prometheus and its gateway log every start-up step: to files beside their state (each
        # child keeps its own descriptor once started).
        folder = home_path("monitoring")
        logs = {
            name: files.enter_context(open(folder / f"{name.lower()}.log", "ab"))
            for name in MONITORS
            if name in commands
        }
        children = {
            name: subprocess.Popen(
                command, env=envs[name], start_new_session=True, stdout=logs.get(name), stderr=logs.get(name)
            )
            for name, command in commands.items()
        }
    print(f"Dagster UI: http://127.0.0.1:{dagster_port}   MLflow UI: http://127.0.0.1:{mlflow_port}   (Ctrl-C stops)")
    print(monitoring_note)
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        stopped = [name for name, child in children.items() if child.poll() is not None]
        print(f"{', '.join(stopped)} stopped; stopping the rest.", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _add_monitoring(
    commands: dict[str, list[str]],
    envs: dict[str, dict[str, str]],
    env: dict[str, str],
    prometheus_port: int,
    pushgateway_port: int,
) -> str:
    """Prometheus and its Pushgateway when Debian's packages are installed and their ports are
    free; the Dagster UI's runs then push to that gateway (unless FTP_PUSHGATEWAY_URL says
    otherwise). Returns the line to print about them."""
    ports = {"Pushgateway": pushgateway_port, "Prometheus": prometheus_port}
    try:
        found = monitoring.commands(
            home_path("monitoring"), pushgateway_port=pushgateway_port, prometheus_port=prometheus_port
        )
    except FileNotFoundError as missing:
        return f"No Prometheus: {missing} (docs/observability.md)"
    busy = [f"{name} ({port})" for name, port in ports.items() if not _port_free(port)]
    if busy:
        return f"No Prometheus started: the port of {' and '.join(busy)} is taken (docs/observability.md)."
    commands.update(found)
    envs.update({name: env for name in found})
    gateway = os.environ.get("FTP_PUSHGATEWAY_URL") or f"http://127.0.0.1:{pushgateway_port}"
    envs["Dagster"] = {**envs["Dagster"], "FTP_PUSHGATEWAY_URL": gateway}
    return (
        f"Prometheus: http://127.0.0.1:{prometheus_port}   Pushgateway: http://127.0.0.1:{pushgateway_port} "
        f"(runs push to {gateway}; logs in {home_path('monitoring')})"
    )


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
