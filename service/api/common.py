"""The one path of every generating request, streamed or not.

    result = await run_admitted(state, request, cost=..., timeout_s=..., work=lambda: ...)
    response = await stream_admitted(state, request, cost=..., timeout_s=..., events=lambda: ...)

1. the lifecycle and the engine's health are checked before any request work (503 while loading,
   draining, or when the engine is dead, stalled or unreachable);
2. the request's deadline is set from its timeout (capped by settings.request_timeout_s); it covers
   the queue wait and the processing;
3. admission gives a permit sized by the request's cost, or refuses at once (429 queue full, 503
   overloaded) or after waiting (503);
4. the work races the deadline (504), the client leaving (its engine calls are aborted, 499 in the
   metrics) and the end of the shutdown grace (503);
5. failures become `ApiError`s (`api_error_from`).

A stream takes its permit and waits for its first event before the 200 goes out, so a refusal or a
timeout before the first byte is a real HTTP status; the permit is held until the stream ends, and
the deadline covers sending too, so a client that stops reading loses its slot at the deadline. An
error after the first byte ends the stream with an error event and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from typing import TypeVar

from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.admission import AdmissionError, QueueFull
from service.api.errors import ApiError, error_body
from service.api.state import ServiceState
from service.engine.base import EngineError, InvalidPromptError, PromptTooLongError, UnknownPromptError
from service.tipo.format import UnknownFormat
from service.tipo.plan import UnknownOperation
from service.tipo.postprocess import InvalidBanTag
from service.tipo.profile import ReferenceFailure

T = TypeVar("T")

# The request field each input error of the TIPO core is about.
_PARAM_OF = {InvalidBanTag: "ban_tags", UnknownFormat: "format", UnknownOperation: "operation"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_RAW_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                    *((name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items())]
DONE_EVENT = "data: [DONE]\n\n"
LAST_WORDS_S = 1.0  # how long a stream ended by timeout or shutdown may take to send its error event


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class RequestTimeout(Exception):
    """The request's deadline passed."""


class ServerStopping(Exception):
    """The shutdown grace is over while the request still ran."""


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def deadline_of(state: ServiceState, requested_s: float | None) -> float:
    cap = state.settings.request_timeout_s
    return time.monotonic() + (cap if requested_s is None else min(requested_s, cap))


def require_ready(state: ServiceState) -> None:
    ready, reason = state.readiness()
    if not ready:
        raise ApiError(503, f"the service is not ready: {reason}", type="service_unavailable",
                       headers={"Retry-After": "5"})


async def run_admitted(state: ServiceState, request: Request, *, cost: int, timeout_s: float | None,
                       work: Callable[[], Awaitable[T]]) -> T:
    require_ready(state)
    deadline = deadline_of(state, timeout_s)
    try:
        async with state.admission.permit(cost, deadline):
            try:
                return await race(work(), request.receive, deadline, state)
            except RequestTimeout:
                state.admission.observe_timeout()
                raise
    except Exception as exc:
        raise api_error_from(exc, state) from None


async def stream_admitted(state: ServiceState, request: Request, *, cost: int, timeout_s: float | None,
                          events: Callable[[], AsyncIterator[str]]) -> GuardedStream:
    """`events()` yields SSE events (`data: ...\\n\\n`); `data: [DONE]` is sent after the last one."""
    require_ready(state)
    deadline = deadline_of(state, timeout_s)
    held = AsyncExitStack()
    try:
        await held.enter_async_context(state.admission.permit(cost, deadline))
        stream = events()
        held.push_async_callback(stream.aclose)
        try:
            first = await race(anext(stream), request.receive, deadline, state)
        except StopAsyncIteration:
            first = ""
    except BaseException as exc:
        await held.aclose()
        if isinstance(exc, Exception):
            raise api_error_from(exc, state) from None
        raise
    return GuardedStream(state, first, stream, held, deadline)


class GuardedStream(Response):
    """An SSE response that owns its admission permit and keeps to the request's deadline."""

    media_type = "text/event-stream"

    def __init__(self, state: ServiceState, first: str, rest: AsyncIterator[str], held: AsyncExitStack,
                 deadline: float):
        self.background = None  # FastAPI may attach background tasks; there are none
        self.state, self.first, self.rest, self.held, self.deadline = state, first, rest, held, deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": _RAW_SSE_HEADERS})
            if self.first:
                await _send_text(send, self.first)
            try:
                async for event in self.rest:
                    await _send_text(send, event)
            except Exception as exc:  # the engine failed mid-stream: say so in the stream
                await _send_text(send, sse(api_error_body(exc, self.state)))
            await _send_text(send, DONE_EVENT)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await race(pump(), receive, self.deadline, self.state)
        except (RequestTimeout, ServerStopping) as exc:
            if isinstance(exc, RequestTimeout):
                self.state.admission.observe_timeout()
            with suppress(Exception):  # a client that stopped reading gets nothing more
                async with asyncio.timeout(LAST_WORDS_S):
                    await _send_text(send, sse(api_error_from(exc, self.state).body()) + DONE_EVENT)
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientGone:
            self.state.metrics.client_disconnects.inc()
        finally:
            await self.held.aclose()  # ends the events (aborting their engine calls), frees the permit


async def _send_text(send: Send, text: str) -> None:
    await send({"type": "http.response.body", "body": text.encode("utf-8"), "more_body": True})


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def race(work: Awaitable[T], receive: Receive, deadline: float, state: ServiceState) -> T:
    """Run `work` until it ends, the deadline passes (RequestTimeout), the client leaves (ClientGone)
    or the shutdown grace ends (ServerStopping); whatever is left running is cancelled, which aborts
    its engine calls, before this returns."""
    work_task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    stopping = asyncio.ensure_future(state.lifecycle.stop_event().wait())
    tasks = (work_task, gone, stopping)
    try:
        await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let the aborts run before answering
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    if stopping.done() and not stopping.cancelled():
        raise ServerStopping()
    if gone.done() and not gone.cancelled():
        raise ClientGone()
    raise RequestTimeout()


async def _disconnected(receive: Receive) -> None:
    # The body was read before the work started, so the next ASGI message is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


def api_error_from(exc: BaseException, state: ServiceState) -> ApiError:
    """Map a failure of a generating request to its HTTP answer (table in service/api/errors.py)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        state.metrics.refused.labels(reason="queue_full").inc()
        return ApiError(429, str(exc), type="rate_limit_error", headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, AdmissionError):
        state.metrics.refused.labels(reason=type(exc).__name__).inc()
        return ApiError(503, str(exc), type="service_unavailable", headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, RequestTimeout):
        return ApiError(504, "the request took longer than its timeout; its model calls were aborted "
                        "(raise timeout_s, up to the server's request_timeout_s, or ask for less)",
                        type="timeout_error")
    if isinstance(exc, ClientGone):
        state.metrics.client_disconnects.inc()
        # Nobody reads this answer; 499 (nginx's "client closed request") keeps it apart in metrics.
        return ApiError(499, "client closed the request", type="client_closed_request")
    if isinstance(exc, ServerStopping):
        return ApiError(503, "the server is shutting down and the request did not finish within the shutdown "
                        "grace; retry (another replica answers)", type="service_unavailable",
                        headers={"Retry-After": "5"})
    if isinstance(exc, UnknownPromptError):
        return ApiError(424, f"replay miss: {exc}", type="scripted_prompt_missing")
    if isinstance(exc, PromptTooLongError):
        return ApiError(422, f"the prompt does not fit the model's context: {exc} (shorten the input or lower "
                        f"max_new_tokens)", type="invalid_request_error", code="context_length_exceeded")
    if isinstance(exc, InvalidPromptError):
        return ApiError(422, f"invalid prompt: {exc}", param="prompt")
    if isinstance(exc, EngineError):
        return ApiError(503, f"the model engine failed: {exc}", type="engine_error", headers={"Retry-After": "5"})
    if isinstance(exc, ReferenceFailure):
        return ApiError(422, f"the reference (tipo-kgen 0.3.1) crashes on this input, so profile 'kgen' "
                        f"refuses it: {exc}. Use profile 'fixed' to have it handled.",
                        type="reference_failure", code="reference_failure")
    if isinstance(exc, ValueError):
        # The TIPO core raises ValueError subclasses for input it cannot use (e.g. an invalid ban regex).
        param = next((name for kind, name in _PARAM_OF.items() if isinstance(exc, kind)), None)
        return ApiError(422, str(exc), param=param)
    raise exc


def api_error_body(exc: BaseException, state: ServiceState) -> dict:
    """The error body for `exc`; a generic one for an unexpected failure (never its internals)."""
    try:
        return api_error_from(exc, state).body()
    except Exception:
        return error_body("internal server error", "server_error")
