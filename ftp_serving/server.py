"""The CPU server: the adapters by name behind OpenAI's chat API, as vLLM serves them in production.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models`` (the base and the resident
adapters), ``GET /health``, and vLLM's ``POST /v1/load_lora_adapter`` / ``POST
/v1/unload_lora_adapter`` (an adapter is resolved by its name under the adapters root; a
``lora_path`` in the request is ignored). Errors have OpenAI's JSON shape, so the ``openai``
client raises ``NotFoundError`` for a name that is not served (with the reason),
``BadRequestError`` and ``AuthenticationError``. With an API key every endpoint but /health
wants ``Authorization: Bearer <key>``.

:func:`running_server` serves on a background thread (tests, benchmarks, the demo); ``ftp-serve``
(:mod:`ftp_serving.cli`) in the foreground.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ftp_serving.generation import Completion, Engine, InvalidRequest, Sampling
from ftp_serving.layout import AdapterUnavailable

OWNER = "ftp_serving"


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, kind="invalid_request_error", param=param)


def not_found(message: str) -> ApiError:
    return ApiError(404, message, kind="invalid_request_error", code="model_not_found", param="model")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise bad_request("Only text content parts are supported.", "messages")
        return "".join(part.text or "" for part in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    ignore_eos: bool = False  # vLLM's extra sampling option
    skip_special_tokens: bool = True  # vLLM's too: False keeps special tokens the model wrote


class LoadLora(BaseModel):
    lora_name: str
    lora_path: str | None = None


class UnloadLora(BaseModel):
    lora_name: str


def create_app(engine: Engine, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="ftp_serving", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return bad_request(f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None).response()

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return ApiError(
                    401, "Missing or wrong API key.", kind="authentication_error", code="invalid_api_key"
                ).response()
        response: Response = await call_next(request)
        return response

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        base = {"id": engine.base_name, "object": "model", "created": created, "owned_by": OWNER, "parent": None}
        adapters = [
            {"id": name, "object": "model", "created": created, "owned_by": OWNER, "parent": engine.base_name}
            for name in engine.resident_adapters()
        ]
        return {"object": "list", "data": [base, *adapters]}

    async def ensure(name: str) -> None:
        if name == engine.base_name:
            return
        try:
            await run_in_threadpool(engine.ensure_adapter, name)
        except AdapterUnavailable as refusal:
            raise not_found(refusal.reason) from None

    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: LoadLora) -> Response:
        try:
            await ensure(body.lora_name)
        except ApiError as error:
            raise bad_request(error.message, "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: UnloadLora) -> Response:
        if not await run_in_threadpool(engine.unload_adapter, body.lora_name):
            raise not_found(f"The adapter {body.lora_name} is not loaded.")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        if body.stream:
            raise bad_request("Streaming is not supported by this server; send stream=false.", "stream")
        if body.n not in (None, 1):
            raise bad_request("Only n=1 is supported.", "n")
        await ensure(body.model)
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        try:
            prompt_ids = await run_in_threadpool(engine.prompt_ids, messages)
        except InvalidRequest as error:
            raise bad_request(str(error), "messages") from None
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        sampling = Sampling(
            model=body.model,
            prompt_ids=prompt_ids,
            max_tokens=engine.max_new_tokens(prompt_ids, body.max_completion_tokens or body.max_tokens),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=tuple(s for s in stop if s),
            ignore_eos=body.ignore_eos,
            skip_special_tokens=body.skip_special_tokens,
        )
        try:
            completion: Completion = await asyncio.wrap_future(engine.submit(sampling))
        except AdapterUnavailable as refusal:  # evicted, then refused when loaded again
            raise not_found(refusal.reason) from None
        except Exception:  # logged by the engine; the client gets OpenAI's shape, not a traceback
            raise ApiError(500, "Generation failed; see the server's log.", kind="server_error") from None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            },
        }

    return app


@dataclass(frozen=True)
class RunningServer:
    base_url: str  # ends in /v1
    api_key: str | None
    engine: Engine


@contextmanager
def running_server(
    base_model: str | Path,
    base_name: str,
    adapters_root: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_loras: int = 8,
    max_batch: int = 64,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    startup_timeout_s: float = 60,
) -> Iterator[RunningServer]:
    """Serve on a background thread (``port=0``: a free port) until the block ends."""
    import uvicorn

    engine = Engine(
        base_model,
        base_name,
        str(adapters_root),
        max_loras=max_loras,
        max_batch=max_batch,
        threads=threads,
        cache_dir=cache_dir,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(engine, api_key=api_key), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ftp-serving-http", daemon=True)
    thread.start()
    url_host = f"[{host}]" if ":" in host else host
    root = f"http://{url_host}:{bound_port}"
    try:
        _wait_healthy(f"{root}/health", thread, startup_timeout_s)
        yield RunningServer(base_url=f"{root}/v1", api_key=api_key, engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        engine.close()


def _wait_healthy(url: str, thread: threading.Thread, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("The server stopped while starting; see its log.")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"The server did not answer {url} within {timeout_s:.0f} s.")
