"""`ftp-assets demo` as a newcomer runs it: a subprocess with nothing configured but FTP_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FTP_COMMAND = Path(sys.executable).with_name("ftp-assets")
# What a user's shell may set that the demo must not see.
CONFIGURATION_PREFIXES = ("FTP_", "OPENAI_", "MLFLOW_", "DAGSTER_")


def demo_environment(home: Path, **variables: str) -> dict[str, str]:
    """This process's environment without any configuration, with FTP_HOME and ``variables``."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith(CONFIGURATION_PREFIXES)}
    return environment | {"FTP_HOME": str(home), **variables}


def run_demo(environment: dict[str, str], *arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FTP_COMMAND), "demo", *arguments], env=environment, capture_output=True, text=True, timeout=timeout
    )
