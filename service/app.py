"""`create_app(settings, engine=None, tag_index=None)`: wiring and lifespan of the HTTP service.

Start-up runs in the background so the probes answer at once: /health/ready says 503 ("loading")
until the engine has started, the tag index is loaded and a warm-up generation succeeded.

Engine ownership: with `engine=None` the app builds the engine from the settings (inside the
lifespan, never at import time: vLLM spawns processes), starts it and shuts it down. An engine passed
in belongs to the caller, who starts and shuts it down (tests share one vLLM engine between apps).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service
from service.api import health
from service.api.auth import ApiKeyGuard, load_api_keys
from service.api.docs import install_offline_docs
from service.api.errors import error_body, install_error_handlers
from service.api.openai import router as openai_router
from service.api.state import ServiceState
from service.api.tipo import router as tipo_router
from service.engine.base import Engine, EngineUnavailable
from service.settings import Settings

logger = logging.getLogger("service")

START_BACKOFF_FIRST_S = 0.5
START_BACKOFF_MAX_S = 8.0

DESCRIPTION = """Expands partial text-to-image prompts with the TIPO language models.

* `POST /v1/tipo` — the structured endpoint (fields of the ComfyUI TIPO node); `/v1/tipo/batch` for many.
* `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models` — OpenAI-compatible.
* `GET /health/live`, `GET /health/ready`, `GET /metrics`.

Errors have the shape `{"error": {"message", "type", "param", "code"}}`; invalid input is 422.
"""


def create_app(settings: Settings | None = None, engine: Engine | None = None, tag_index=None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owns_engine = engine is None
        state = ServiceState(settings=settings, engine=engine or _build_engine(settings), tag_index=tag_index,
                             api_keys=load_api_keys(settings))
        app.state.service = state
        background = [asyncio.create_task(_start(state, owns_engine)), asyncio.create_task(state.gateway.watch())]
        try:
            yield
        finally:
            state.lifecycle.draining()
            state.admission.close()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if owns_engine:
                await state.engine.shutdown()

    # /docs and /redoc come from install_offline_docs: local assets, no CDN (the pages work offline).
    app = FastAPI(title="tipo-service", version=service.__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    install_offline_docs(app)
    install_error_handlers(app)
    app.include_router(tipo_router.router)
    app.include_router(openai_router.router)
    app.include_router(health.router)
    # The last middleware added runs first: metrics see every answer, CORS headers go on every answer
    # (a 401 or 413 too), the API key is checked before the body size, and both before the body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyGuard, fastapi_app=app, settings=settings)
    if settings.cors_origins.strip():
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"],
                           expose_headers=["Retry-After"])
    app.add_middleware(RequestMetrics, fastapi_app=app)
    return app


def _build_engine(settings: Settings) -> Engine:
    from service.engine import build_engine  # engines import vLLM/httpx: only when the app builds one

    return build_engine(settings)


async def _start(state: ServiceState, owns_engine: bool) -> None:
    """Loading: engine, tag lists, warm-up. An engine that cannot be reached yet (a remote upstream
    still starting) keeps the service loading and is tried again with backoff; any other failure is
    final (failed: liveness fails, the orchestrator restarts the process)."""
    lifecycle = state.lifecycle
    backoff = START_BACKOFF_FIRST_S
    try:
        if state.tag_index is None:
            lifecycle.loading("starting: loading the tag lists")
            from service.tag_lists import load_tag_index

            state.tag_index = await asyncio.to_thread(load_tag_index)
        while True:
            try:
                if owns_engine:
                    lifecycle.loading("starting: loading the model")
                    await state.engine.start()
                lifecycle.loading("starting: warm-up generation")
                started = time.perf_counter()
                await state.gateway.warm_up()
                break
            except EngineUnavailable as exc:
                lifecycle.loading(f"starting: waiting for the engine ({exc}); next try in {backoff:g} s")
                logger.warning("engine not reachable yet: %s; trying again in %g s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF_MAX_S)
        lifecycle.ready()
        logger.info("ready: model %s answered a warm-up generation in %.2f s", state.model_name,
                    time.perf_counter() - started)
        logger.info(next_steps(state.settings))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        lifecycle.failed(f"start-up failed: {type(exc).__name__}: {exc}")
        logger.exception("start-up failed; the service stays not ready")


class RequestMetrics:
    """Counts every HTTP request by route template and status, and times it (pure ASGI: no body copies)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = getattr(self.fastapi_app.state, "service", None)
            route = scope.get("route")
            if state is not None:
                endpoint = getattr(route, "path", None) or "unmatched"
                state.metrics.observe_request(endpoint, status, time.perf_counter() - started)


class BodySizeLimit:
    """Refuses request bodies over settings.max_body_bytes with 413 before they are read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, error_body(
                f"request body too large: {int(length)} bytes; the server accepts at most {self.max_bytes}",
                "invalid_request_error"))
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ValueError("request body too large")  # chunked upload: FastAPI answers 400
            return message

        await self.app(scope, counted_receive, send)


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def next_steps(settings: Settings) -> str:
    """What a newcomer does next, logged once the service is ready."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    return (f"next: open {base}/docs (every endpoint, with examples) or try\n"
            f"  curl -s {base}/v1/tipo -H 'content-type: application/json' -d '{{\"tags\": \"1girl, hatsune miku\"}}'")
