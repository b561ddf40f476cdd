"""`ftp-assets ui` serves the Dagster UI (with its daemon), the MLflow UI, the local service and
(when installed) Prometheus with its Pushgateway over FTP_HOME, and stops all of them on Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


def test_ui_serves_the_services_with_prometheus_and_stops_them_on_ctrl_c(tmp_path):
    ports = {name: _free_port() for name in ("dagster", "mlflow", "openai", "prometheus", "pushgateway")}
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MLFLOW_TRACKING_URI")}
    command = [
        str(Path(sys.executable).with_name("ftp-assets")),
        "ui",
        "--dagster-port",
        str(ports["dagster"]),
        "--mlflow-port",
        str(ports["mlflow"]),
        "--openai-port",
        str(ports["openai"]),
        "--prometheus-port",
        str(ports["prometheus"]),
        "--pushgateway-port",
        str(ports["pushgateway"]),
    ]
    with open(tmp_path / "ui.log", "wb") as log:
        ui = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    urls = {
        "dagster": f"http://127.0.0.1:{ports['dagster']}/server_info",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}/health",
        "openai": f"http://127.0.0.1:{ports['openai']}/v1/models",  # 401 without a key: it answers
        # Debian's packages, which CI installs: the Dagster UI's runs push to this gateway.
        "prometheus": f"http://127.0.0.1:{ports['prometheus']}/-/ready",
        "pushgateway": f"http://127.0.0.1:{ports['pushgateway']}/-/ready",
    }
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(_status(url) for url in urls.values()):
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(1)
        assert {name: _status(url) for name, url in urls.items()} == {
            "dagster": 200,
            "mlflow": 200,
            "openai": 401,
            "prometheus": 200,
            "pushgateway": 200,
        }
        children = _children(ui.pid)
        assert len(children) == 5
        ui.send_signal(signal.SIGINT)
        assert ui.wait(60) == 0
        assert not [child for child in children if _alive(child)]
        assert not any(_status(url) for url in urls.values())
    finally:
        if ui.poll() is None:
            ui.kill()


def test_ui_also_serves_the_self_hosted_models_once_the_tiny_base_exists(tmp_path, isolated_ftp_home):
    """After the self-hosted demo, the built-in self_hosted endpoint answers while the UIs run."""
    from ftp_trainer.tiny_base import build_tiny_base

    texts = [f"Post {i}: five habits that changed my mornings?" for i in range(60)]
    build_tiny_base(texts, isolated_ftp_home / "models" / "tiny-chat-base", pretrain_steps=5, threads=1)
    ports = {name: _free_port() for name in ("dagster", "mlflow", "openai", "serving", "prometheus", "pushgateway")}
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MLFLOW_TRACKING_URI", "FTP_SERVING_URL")}
    command = [str(Path(sys.executable).with_name("ftp-assets")), "ui"]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    with open(tmp_path / "ui.log", "wb") as log:
        ui = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    models = f"http://127.0.0.1:{ports['serving']}/v1/models"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _status(models) is None:
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            time.sleep(1)
        assert _status(models) == 200 and len(_children(ui.pid)) == 6
        ui.send_signal(signal.SIGINT)
        assert ui.wait(60) == 0
        assert _status(models) is None
    finally:
        if ui.poll() is None:
            ui.kill()
