"""The FastAPI application: bearer-key auth, injected faults, OpenAI's error shapes, the routes."""

from __future__ import annotations

import asyncio
import hmac
import math
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .chat_routes import chat_router
from .faults import FaultController, FaultSettings
from .files_routes import files_router
from .jobs_routes import jobs_router
from .responses import ApiError
from .store import Store
from .worker import JobRunner

DEFAULT_STEP_SECONDS = 0.02  # about 1.5 s for the 75 steps of a 200-example job
# OpenAI takes files of up to 512 MB; a laptop service that trains in memory takes less by default.
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20
MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
# Never quote the key, not even the masked prefix OpenAI shows.
WRONG_KEY = "Incorrect API key provided."
RATE_LIMITED = "Rate limit reached for requests. Please try again in {seconds:g}s."
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def _key_error(request: Request, api_key: str) -> ApiError | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return ApiError(401, MISSING_KEY, code="invalid_api_key")
    if not hmac.compare_digest(presented.strip().encode(), api_key.encode()):
        return ApiError(401, WRONG_KEY, code="invalid_api_key")
    return None


def _injected_fault(faults: FaultController) -> ApiError | None:
    fault = faults.take_response_fault()
    if fault is None:
        return None
    status, retry_after = fault
    if status == 429:
        if retry_after is None:
            raise RuntimeError("a rate-limit fault must say how long to wait")
        headers = {"retry-after": str(math.ceil(retry_after)), "retry-after-ms": str(round(retry_after * 1000))}
        message = RATE_LIMITED.format(seconds=retry_after)
        return ApiError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)
    return ApiError(500, SERVER_ERROR, type="server_error")


def _validation_error(error: RequestValidationError) -> ApiError:
    """OpenAI's 400 for the first problem FastAPI found (FastAPI itself would answer 422)."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return ApiError(400, "We could not parse the JSON body of your request.")
    location = [str(part) for part in first["loc"] if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    if first["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    return ApiError(400, f"Invalid value for '{param}': {first['msg']}.", param=param)


def create_app(
    state_dir: Path,
    api_key: str,
    step_seconds: float = DEFAULT_STEP_SECONDS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The service over the state in ``state_dir``; training waits ``step_seconds`` per step.
    The server sets ``app.state.shutting_down`` when it starts to shut down."""
    store = Store(Path(state_dir))
    faults = FaultController()
    runner = JobRunner(store, faults, step_seconds)
    shutting_down = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        yield
        runner.stop()

    app = FastAPI(title="Local OpenAI-compatible fine-tuning service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.faults = faults
    app.state.shutting_down = shutting_down

    @app.middleware("http")
    async def authenticate_and_inject_faults(request: Request, call_next):
        error = _key_error(request, api_key)
        if error is None and request.url.path.startswith("/v1/"):
            if faults.latency_seconds:
                # Cut short by a shutdown, which otherwise waits for every request in flight.
                with suppress(TimeoutError):
                    await asyncio.wait_for(shutting_down.wait(), faults.latency_seconds)
            error = _injected_fault(faults)
        return error.response() if error else await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return _validation_error(error).response()

    @app.exception_handler(HTTPException)
    async def unknown_route(request: Request, error: HTTPException):
        return ApiError(error.status_code, f"Invalid URL ({request.method} {request.url.path})").response()

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):
        # Starlette still re-raises the error after this answer, so the server logs it.
        return ApiError(500, SERVER_ERROR, type="server_error").response()

    @app.get("/_admin/faults")
    def fault_state() -> dict:
        return faults.state()

    @app.post("/_admin/faults")
    def set_faults(settings: FaultSettings) -> dict:
        faults.apply(settings)
        return faults.state()

    @app.delete("/_admin/faults")
    def clear_faults() -> dict:
        faults.clear()
        return faults.state()

    app.include_router(files_router(store, max_upload_bytes))
    app.include_router(jobs_router(store, runner))
    app.include_router(chat_router(store))
    return app
