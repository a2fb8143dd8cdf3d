"""Optional API keys (settings.api_keys / api_keys_file): `Authorization: Bearer <key>` or `X-API-Key`.

No keys configured = no auth. Health probes never need a key; /metrics only with
settings.metrics_require_key.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Depends, Request

from service.api.errors import ApiError
from service.api.state import ServiceState, get_state
from service.settings import Settings


def load_api_keys(settings: Settings) -> frozenset[str]:
    keys = [k.strip() for k in settings.api_keys.split(",")]
    if settings.api_keys_file:
        keys += [line.strip() for line in Path(settings.api_keys_file).read_text().splitlines()]
    return frozenset(k for k in keys if k and not k.startswith("#"))


def _presented_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def _check(request: Request, state: ServiceState) -> None:
    if not state.api_keys:
        return
    presented = _presented_key(request).encode()
    if not any(hmac.compare_digest(presented, key.encode()) for key in state.api_keys):
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       type="authentication_error", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request, state: ServiceState = Depends(get_state)) -> None:
    _check(request, state)


async def require_metrics_key(request: Request, state: ServiceState = Depends(get_state)) -> None:
    if state.settings.metrics_require_key:
        _check(request, state)
