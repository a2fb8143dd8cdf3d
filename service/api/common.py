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
5. failures become `ApiError`s (`answer_to`: the table in service/api/errors.py, refusals counted).

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
from service.api.errors import ApiError, ClientGone, RequestTimeout, ServerStopping, api_error_for
from service.api.state import ServiceState

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_RAW_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                    *((name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items())]
DONE_EVENT = "data: [DONE]\n\n"
LAST_WORDS_S = 1.0  # how long a stream ended by timeout or shutdown may take to send its error event


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
        raise answer_to(exc, state) from None


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
            raise answer_to(exc, state) from None
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
                await _send_text(send, sse(answer_to(exc, self.state).body()))
            await _send_text(send, DONE_EVENT)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await race(pump(), receive, self.deadline, self.state)
        except (RequestTimeout, ServerStopping) as exc:
            if isinstance(exc, RequestTimeout):
                self.state.admission.observe_timeout()
            with suppress(Exception):  # a client that stopped reading gets nothing more
                async with asyncio.timeout(LAST_WORDS_S):
                    await _send_text(send, sse(answer_to(exc, self.state).body()) + DONE_EVENT)
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


def answer_to(exc: BaseException, state: ServiceState) -> ApiError:
    """The answer to a failure of a generating request (service/api/errors.py), refusals and clients that
    left counted in the metrics."""
    if isinstance(exc, AdmissionError):
        reason = "queue_full" if isinstance(exc, QueueFull) else type(exc).__name__
        state.metrics.refused.labels(reason=reason).inc()
    elif isinstance(exc, ClientGone):
        state.metrics.client_disconnects.inc()
    return api_error_for(exc)
