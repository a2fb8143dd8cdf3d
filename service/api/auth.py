"""Optional API keys (settings.api_keys / api_keys_file): `Authorization: Bearer <key>` or `X-API-Key`.

No keys configured = no auth. `ApiKeyGuard` checks the key before anything reads the request body,
so a client without a valid key gets 401 and nothing else: not a validation error, not a 404 for an
unknown /v1 path. Guarded: every path under /v1/, and /metrics when settings.metrics_require_key.
Open: /health/live, /health/ready (probes), the API docs (/docs, /redoc, /openapi.json).
Keys are compared in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_body
from service.settings import Settings


def load_api_keys(settings: Settings) -> frozenset[str]:
    keys = [k.strip() for k in settings.api_keys.split(",")]
    if settings.api_keys_file:
        keys += [line.strip() for line in Path(settings.api_keys_file).read_text().splitlines()]
    return frozenset(k for k in keys if k and not k.startswith("#"))


def presented_key(headers: Headers) -> str:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


def key_is_valid(presented: str, keys: frozenset[str]) -> bool:
    # Every key is compared (no early exit), each in constant time.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    return any(matches)


class ApiKeyGuard:
    """Pure ASGI middleware: 401 for guarded paths without a valid key, before the body is read."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, settings: Settings):
        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics_require_key = settings.metrics_require_key

    def guarded(self, path: str) -> bool:
        return path == "/v1" or path.startswith("/v1/") or (self.metrics_require_key and path == "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(self.fastapi_app.state, "service", None)
        keys = state.api_keys if state is not None else frozenset()
        if scope["type"] != "http" or not keys or not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        if key_is_valid(presented_key(Headers(scope=scope)), keys):
            await self.app(scope, receive, send)
            return
        answer = JSONResponse(error_body("missing or invalid API key: send 'Authorization: Bearer <key>'",
                                         "authentication_error"),
                              status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await answer(scope, receive, send)
