"""A local Prometheus and Pushgateway (Debian's ``prometheus`` and ``prometheus-pushgateway``
packages) for ``ftp-assets ui`` and the tests: the gateway the steps push to, and a Prometheus
that scrapes it every few seconds and evaluates the project's alert rules."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PUSHGATEWAY_PORT = 9091
PROMETHEUS_PORT = 9090
# The commands of Debian's packages; other installs name the gateway "pushgateway".
PUSHGATEWAY_COMMANDS = ("prometheus-pushgateway", "pushgateway")
PROMETHEUS_COMMAND = "prometheus"
# The alert rules in a checkout (deploy/ is not part of the installed package).
RULES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "ftp-assets-rules.yml"
STARTUP_TIMEOUT_S = 30


def pushgateway_binary() -> str | None:
    return next((found for name in PUSHGATEWAY_COMMANDS if (found := shutil.which(name))), None)


def prometheus_binary() -> str | None:
    return shutil.which(PROMETHEUS_COMMAND)


def prometheus_config(pushgateway_address: str, *, scrape_interval: str = "5s", rule_files: list[Path]) -> str:
    """Prometheus' configuration: scrape the gateway, keeping the pushed ``job``, ``task`` and
    ``stage`` labels (``honor_labels``) rather than the gateway's own."""
    rules = "".join(f"  - {path}\n" for path in rule_files)
    return (
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n" + (f"rule_files:\n{rules}" if rules else "") + "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        "    static_configs:\n"
        f"      - targets: ['{pushgateway_address}']\n"
    )


@dataclass
class Monitoring:
    pushgateway_url: str
    prometheus_url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def commands(
    folder: Path, *, pushgateway_port: int, prometheus_port: int, scrape_interval: str = "5s", rules: bool = True
) -> dict[str, list[str]]:
    """The two servers' commands, their state and configuration under ``folder``. Raises
    FileNotFoundError naming the Debian packages when either is not installed."""
    gateway, prometheus = pushgateway_binary(), prometheus_binary()
    if gateway is None or prometheus is None:
        raise FileNotFoundError(
            "Prometheus and its Pushgateway are not installed: "
            "`apt-get install prometheus prometheus-pushgateway` (Debian's packages) provides both."
        )
    folder.mkdir(parents=True, exist_ok=True)
    gateway_address = f"127.0.0.1:{pushgateway_port}"
    config = folder / "prometheus.yml"
    rule_files = [RULES_FILE] if rules and RULES_FILE.exists() else []
    config.write_text(prometheus_config(gateway_address, scrape_interval=scrape_interval, rule_files=rule_files))
    return {
        "Pushgateway": [
            gateway,
            f"--web.listen-address={gateway_address}",
            # Pushed values outlive a restart of the gateway (the last training's time, say).
            f"--persistence.file={folder / 'pushgateway.state'}",
            "--persistence.interval=1m",
        ],
        "Prometheus": [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
    }


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    """Until ``url``/-/ready answers 200; the server's log in the error when it does not."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


@contextmanager
def running_monitoring(folder: Path, *, scrape_interval: str = "1s", rules: bool = True) -> Iterator[Monitoring]:
    """A Pushgateway and a Prometheus scraping it, on free ports, stopped on exit."""
    ports = {"Pushgateway": free_port(), "Prometheus": free_port()}
    to_start = commands(
        folder,
        pushgateway_port=ports["Pushgateway"],
        prometheus_port=ports["Prometheus"],
        scrape_interval=scrape_interval,
        rules=rules,
    )
    started: list[subprocess.Popen] = []
    try:
        for name, command in to_start.items():
            log = folder / f"{name.lower()}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            started.append(process)
            wait_ready(f"http://127.0.0.1:{ports[name]}", process, log)
        yield Monitoring(f"http://127.0.0.1:{ports['Pushgateway']}", f"http://127.0.0.1:{ports['Prometheus']}")
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
