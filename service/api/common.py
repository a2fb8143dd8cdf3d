"""Running one generating request: admission, timeout, client disconnect, error mapping.

Every generating endpoint calls `run_admitted(state, request, work, timeout_s)`:

1. take a processing slot (`Admission`): queue full -> 429 + Retry-After, waited too long -> 503;
2. run `work()` under the request timeout (`timeout_s` capped by settings.request_timeout_s) -> 504;
3. meanwhile listen for the client going away; then `work` is cancelled, which aborts its engine
   requests (ServiceState.generate), and the disconnect is counted;
4. turn domain exceptions into `ApiError` (see `api_error_from`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from service.admission import QueueFull, QueueTimeout
from service.api.errors import ApiError
from service.api.state import ServiceState
from service.engine.base import EngineError, PromptTooLongError, UnknownPromptError
from service.tipo.format import UnknownFormat
from service.tipo.plan import UnknownOperation
from service.tipo.postprocess import InvalidBanTag
from service.tipo.profile import ReferenceFailure

T = TypeVar("T")

# The request field each input error of the TIPO core is about.
_PARAM_OF = {InvalidBanTag: "ban_tags", UnknownFormat: "format", UnknownOperation: "operation"}


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def effective_timeout(state: ServiceState, requested: float | None) -> float:
    cap = state.settings.request_timeout_s
    return cap if requested is None else min(requested, cap)


def require_ready(state: ServiceState) -> None:
    ready, reason = state.readiness()
    if not ready:
        raise ApiError(503, f"the service is not ready: {reason}", type="service_unavailable",
                       headers={"Retry-After": "5"})


async def run_admitted(
    state: ServiceState, request: Request, work: Callable[[], Awaitable[T]], timeout_s: float | None
) -> T:
    require_ready(state)
    try:
        async with state.admission.slot():
            return await _run_until_disconnect(request, work(), effective_timeout(state, timeout_s))
    except ClientGone:
        state.metrics.client_disconnects.inc()
        # Nobody reads this answer; 499 (nginx's "client closed request") keeps it apart in metrics.
        raise ApiError(499, "client closed the request", type="client_closed_request") from None
    except Exception as exc:
        raise api_error_from(exc, state) from None


async def _run_until_disconnect(request: Request, work: Awaitable[T], timeout_s: float) -> T:
    work_task = asyncio.ensure_future(asyncio.wait_for(work, timeout_s))
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Cancels the engine work when the client left (or when this handler itself is cancelled).
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
    if not work_task.done():
        await asyncio.gather(work_task, return_exceptions=True)  # let its aborts run before answering
        raise ClientGone()
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body was read before the handler ran, so the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def api_error_from(exc: BaseException, state: ServiceState) -> ApiError:
    """Map a failure of a generating request to its HTTP answer (table in service/api/errors.py)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(429, str(exc), type="rate_limit_error",
                        headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, QueueTimeout):
        return ApiError(503, str(exc), type="service_unavailable",
                        headers={"Retry-After": str(state.admission.retry_after_s())})
    if isinstance(exc, asyncio.TimeoutError):
        return ApiError(504, "the request took longer than its timeout; its model calls were aborted "
                        "(raise timeout_s, up to the server's request_timeout_s, or ask for less)",
                        type="timeout_error")
    if isinstance(exc, UnknownPromptError):
        return ApiError(424, f"replay miss: {exc}", type="scripted_prompt_missing")
    if isinstance(exc, PromptTooLongError):
        return ApiError(422, f"the prompt does not fit the model's context: {exc} (shorten the input or lower "
                        f"max_new_tokens)", type="invalid_request_error", code="context_length_exceeded")
    if isinstance(exc, EngineError):
        return ApiError(503, f"the model engine failed: {exc}", type="engine_error",
                        headers={"Retry-After": "5"})
    if isinstance(exc, ReferenceFailure):
        return ApiError(422, f"the reference (tipo-kgen 0.3.1) crashes on this input, so profile 'kgen' "
                        f"refuses it: {exc}. Use profile 'fixed' to have it handled.",
                        type="reference_failure", code="reference_failure")
    if isinstance(exc, ValueError):
        # The TIPO core raises ValueError subclasses for input it cannot use (e.g. an invalid ban regex).
        param = next((name for kind, name in _PARAM_OF.items() if isinstance(exc, kind)), None)
        return ApiError(422, str(exc), param=param)
    raise exc
