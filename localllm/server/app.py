"""The ASGI app: OpenAI and Ollama routes over one AsyncLLM, /health, /metrics, API-key check,
and every error in the shape of the API it was addressed to."""

from __future__ import annotations

import hmac
import logging
import threading

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from localllm import __version__
from localllm.engine.async_llm import EngineDeadError
from localllm.server import ollama_routes, openai_routes
from localllm.server.cors import add_cors
from localllm.server.errors import APIError, as_api_error, error_body, validation_error
from localllm.server.metrics import CONTENT_TYPE
from localllm.server.model_info import ModelInfo
from localllm.server.state import ServerSettings, ServerState

logger = logging.getLogger(__name__)

# Open without a key: liveness and scraping (as vLLM does), and the root banner.
_OPEN_PATHS = {"/", "/health", "/metrics"}


def _error_response(path: str, error: APIError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status, headers=error.headers)


class APIKeyMiddleware:
    """Pure ASGI (BaseHTTPMiddleware would break streaming cancellation): runs before the body
    is read, so a request without the key is a 401 whatever else is wrong with it."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            return await self.app(scope, receive, send)
        error = APIError(401, "Incorrect API key provided: send `Authorization: Bearer <key>`.", code="invalid_api_key")
        response = _error_response(scope["path"], error)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


class JSONBodyMiddleware:
    """Both APIs take JSON bodies only, and Ollama reads them whatever the Content-Type (its
    documented `curl -d '{...}'` sends a form type). FastAPI parses JSON only when the header
    says so, so the header is set to JSON for every POST body."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def _warm_up_structured_outputs() -> None:
    """Import the grammar library in the background: the first JSON-constrained request would
    otherwise hold the event loop for the seconds that import takes."""

    def warm() -> None:
        try:
            import xgrammar  # noqa: F401
        except Exception:  # noqa: BLE001 - the first constrained request reports it
            pass

    threading.Thread(target=warm, name="localllm-xgrammar-import", daemon=True).start()


def create_app(llm, model: ModelInfo, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    _warm_up_structured_outputs()
    app = FastAPI(title="localllm", version=__version__)
    app.state.server = ServerState(llm, model, settings)
    app.include_router(openai_routes.router)
    app.include_router(openai_routes.tokens_router)
    app.include_router(ollama_routes.router)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> PlainTextResponse:
        return PlainTextResponse("localllm is running")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not llm.is_running:
            reason = f"the engine stopped: {llm.error}" if llm.error is not None else "the engine stopped"
            return JSONResponse({"status": "error", "error": reason}, status_code=503)
        return JSONResponse({"status": "ok", "model": model.name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.server.metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return _error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(request.url.path, validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {path}"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {path}"
        else:
            message = str(error.detail)
        api_error = APIError(error.status_code, message, code="not_found" if error.status_code == 404 else None)
        return _error_response(path, api_error)

    @app.exception_handler(EngineDeadError)
    async def on_engine_dead(request: Request, error: EngineDeadError) -> JSONResponse:
        return _error_response(request.url.path, as_api_error(error))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        api_error = as_api_error(error)
        if api_error.status == 500:
            logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return _error_response(request.url.path, api_error)

    app.add_middleware(JSONBodyMiddleware)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    add_cors(app, settings.allowed_origins)  # NOTE: last added is outermost
    return app

