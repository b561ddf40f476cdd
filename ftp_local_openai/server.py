"""Running the service: blocking for the ``ftp-assets local-openai`` command, or on a background thread
for tests and the demo."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from .app import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_STEP_SECONDS, create_app
from .faults import FaultController

STARTUP_TIMEOUT_SECONDS = 10.0
API_KEY_ENV = "FTP_LOCAL_OPENAI_API_KEY"  # where `ftp-assets local-openai` takes its key from


@dataclass(frozen=True)
class RunningService:
    base_url: str  # ends in /v1, as the openai client's base_url
    api_key: str
    faults: FaultController
    state_dir: Path


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class _Server(uvicorn.Server):
    """Tells the app when it starts shutting down, so injected latency ends at once instead of
    holding the shutdown, which waits for every request in flight."""

    def __init__(self, config: uvicorn.Config, shutting_down: asyncio.Event) -> None:
        super().__init__(config)
        self._shutting_down = shutting_down

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._shutting_down.set()
        await super().shutdown(sockets)


def serve(
    host: str, port: int, state_dir: Path, api_key: str, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> None:
    """Serves until interrupted (Ctrl-C); jobs in flight resume at the next start."""
    app = create_app(state_dir, api_key, max_upload_bytes=max_upload_bytes)
    server = _Server(uvicorn.Config(app, host=host, port=port), app.state.shutting_down)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn has logged why (a port in use, say); uvicorn.run exits with 3 too


def _wait_until_answering(base_url: str, api_key: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    while True:
        try:
            with direct.open(request, timeout=1):
                return
        except OSError:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The local OpenAI-compatible service at {base_url} did not start") from None
            time.sleep(0.02)


@contextmanager
def running_service(
    state_dir: Path,
    api_key: str = "sk-local",
    port: int = 0,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> Iterator[RunningService]:
    """The service on 127.0.0.1 (``port`` 0: a free one) on a background thread, until exit."""
    app = create_app(state_dir, api_key, step_seconds, max_upload_bytes)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    server = _Server(uvicorn.Config(app, log_level="warning"), app.state.shutting_down)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="local-openai-http")
    thread.start()
    try:
        _wait_until_answering(base_url, api_key, thread)
        yield RunningService(base_url, api_key, app.state.faults, Path(state_dir))
    finally:
        server.should_exit = True
        thread.join()
        listener.close()
