"""Admission control: a request takes a permit sized by its cost before any engine work.

    async with admission.permit(cost, deadline):
        ...  # the request's engine work

A request's **cost** is the number of engine sequences it keeps busy at once: a TIPO request 1 (its
model calls run one after another), a batch items x n, a completion prompts x n. Requests whose
cost fits under the **limit** (engine sequences allowed at once) run; the others wait in one FIFO
queue (a newcomer never jumps it; a request costlier than the limit runs alone once nothing else
runs). A request is refused:

- at once with `QueueFull` (HTTP 429) when the queued cost would pass `max_queue`;
- at once with `Overloaded` (503) when the predicted wait plus its predicted service time pass its
  deadline: work that would time out anyway never takes a place (goodput holds under overload);
- with `QueueTimeout` (503) when it waited `queue_timeout_s`, or when too little of its deadline
  is left to be served once its turn comes;
- with `ShuttingDown` (503) when the server stops while it waits.

The limit adapts (`CongestionLimit`): it starts at 1 sequence and grows while the engine answers
about as fast per token as it does unloaded, and shrinks when the time per token grows past
`TOLERANCE` times that. An engine that batches well (a GPU) lets it grow to `max_in_flight`; one
that is saturated with a few sequences (2 CPU cores) keeps it near that number, so admitted
requests finish in time instead of all progressing together and all missing their deadlines.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class AdmissionError(Exception):
    """A request that did not get a permit; `retry_after_s` is the hint for the client."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(AdmissionError):
    """The wait queue holds `max_queue` cost already (429)."""


class Overloaded(AdmissionError):
    """The request could not finish within its deadline at the current pace (503)."""


class QueueTimeout(AdmissionError):
    """The request waited too long for its turn (503)."""


class ShuttingDown(AdmissionError):
    """The server stops; queued requests are answered at once (503)."""


# The limit grows while the engine's time per token stays within TOLERANCE x its unloaded time.
# On 2 CPU cores the time per token grows about as fast as the sequences at once, so 3 keeps 2-3
# sequences running (measured: the best goodput there, tests/load/test_goodput.py); on a GPU running
# a 0.5B model it hardly moves up to hundreds of sequences, so the limit reaches max_in_flight.
TOLERANCE = 3.0
WINDOW_CALLS = 16  # engine calls the time per token is averaged over
BASELINE_DRIFT = 1.001  # the unloaded time per token may creep up 0.1 % per call (a slower model, warm caches)


@dataclass
class CongestionLimit:
    """The engine sequences allowed at once, adapted from the engine's time per generated token."""

    maximum: int
    adaptive: bool = True
    value: float = field(init=False)
    baseline_s: float | None = field(default=None, init=False)  # lowest windowed time per token seen
    congested: bool = field(default=False, init=False)
    _window: deque = field(default_factory=lambda: deque(maxlen=WINDOW_CALLS), init=False)

    def __post_init__(self) -> None:
        self.value = 1.0 if self.adaptive else float(self.maximum)

    def observe_call(self, seconds: float, tokens: int) -> None:
        """One finished engine call: its duration and generated tokens. Shrinks a congested limit."""
        if not self.adaptive:
            return
        self._window.append((seconds, max(tokens, 1)))
        if len(self._window) < 4:
            return
        per_token = sum(s for s, _ in self._window) / sum(t for _, t in self._window)
        self.baseline_s = per_token if self.baseline_s is None else min(self.baseline_s * BASELINE_DRIFT, per_token)
        self.congested = per_token > TOLERANCE * self.baseline_s
        if self.congested:
            self._set(self.value - 1)

    def observe_request(self, busy: int) -> None:
        """A request finished while `busy` cost was in flight (its own included). Growing once per
        request, not per call, keeps the limit from overshooting before the calls show congestion."""
        measured = len(self._window) >= 4  # at the current limit
        if self.adaptive and measured and not self.congested and busy >= self.value:  # a binding limit grows
            self._set(self.value + 1)

    def observe_timeout(self) -> None:
        """An admitted request missed its deadline: the strongest sign of too much at once."""
        if self.adaptive:
            self._set(self.value / 2)

    def _set(self, value: float) -> None:
        value = float(max(1, min(self.maximum, math.floor(value))))
        if value != self.value:
            self.value = value
            self._window.clear()  # judge the new limit by calls made under it
            self.congested = False


@dataclass
class _Waiter:
    cost: int
    deadline: float
    turn: asyncio.Future


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, queue_timeout_s: float, adaptive: bool = True):
        self.limit = CongestionLimit(max_in_flight, adaptive)
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.in_flight = 0  # cost of the requests running
        self.waiting = 0  # cost of the requests queued
        self.service_s: float | None = None  # moving average of a request's time with its permit
        self._queue: deque[_Waiter] = deque()
        self._closed = False

    @asynccontextmanager
    async def permit(self, cost: int, deadline: float) -> AsyncIterator[None]:
        """Hold `cost` units of the limit for the block; `deadline` is time.monotonic() based."""
        await self._acquire(cost, deadline)
        started = time.monotonic()
        try:
            yield
        finally:
            self.limit.observe_request(self.in_flight)
            self.in_flight -= cost
            self._note_service(time.monotonic() - started)
            self._shed_hopeless()
            self._grant()

    def observe_call(self, seconds: float, tokens: int) -> None:
        """An engine call finished (the gateway reports each): adapt the limit."""
        self.limit.observe_call(seconds, tokens)

    def observe_timeout(self) -> None:
        """An admitted request missed its deadline (the request path reports it)."""
        self.limit.observe_timeout()

    def close(self) -> None:
        """The server stops: refuse newcomers and answer every queued request with ShuttingDown."""
        self._closed = True
        while self._queue:
            waiter = self._queue.popleft()
            self.waiting -= waiter.cost
            if not waiter.turn.done():
                waiter.turn.set_exception(ShuttingDown("the server is shutting down", retry_after_s=5))

    def retry_after_s(self, wait_s: float | None = None) -> int:
        """When to come back: a random point within the predicted time to serve the queue (at least
        1 s, at most 60 s), so refused clients return spread out and keep the engine busy instead of
        all returning together."""
        if wait_s is None:
            wait_s = self.predicted_wait_s(self.waiting)
        horizon = math.ceil(wait_s if wait_s is not None else self.queue_timeout_s / 2)
        return random.randint(1, max(1, min(60, horizon)))

    def predicted_wait_s(self, cost_ahead: int) -> float | None:
        """Seconds until `cost_ahead` queued cost (a newcomer's own included) has been served at the
        current pace (Little's law); None before any request was measured."""
        if self.service_s is None:
            return None
        return cost_ahead * self.service_s / max(self.limit.value, 1.0)

    # --- internals

    def _fits(self, cost: int) -> bool:
        return self.in_flight == 0 or self.in_flight + cost <= self.limit.value

    async def _acquire(self, cost: int, deadline: float) -> None:
        if self._closed:
            raise ShuttingDown("the server is shutting down", retry_after_s=5)
        if not self._queue and self._fits(cost):
            self.in_flight += cost
            return
        if self.waiting + cost > self.max_queue:
            raise QueueFull("server busy: every engine slot is taken and the wait queue is full; retry later "
                            "(Retry-After)", retry_after_s=self.retry_after_s())
        now = time.monotonic()
        wait = self.predicted_wait_s(self.waiting + cost)
        if wait is not None and wait + (self.service_s or 0.0) > deadline - now:
            retry = self.retry_after_s(wait)
            raise Overloaded(f"server overloaded: the predicted wait ({wait:.1f} s) and processing "
                             f"({self.service_s:.1f} s) pass this request's timeout ({deadline - now:.1f} s); "
                             f"retry later or allow a longer timeout_s", retry_after_s=retry)
        waiter = _Waiter(cost, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.waiting += cost
        give_up_at = min(deadline, now + self.queue_timeout_s)
        granted = False
        try:
            async with asyncio.timeout_at(give_up_at):
                await asyncio.shield(waiter.turn)
            granted = True
        except TimeoutError:
            raise QueueTimeout(f"no engine slot became free within {give_up_at - now:.1f} s (server overloaded)",
                               retry_after_s=self.retry_after_s()) from None
        finally:
            if not granted:
                self._give_up(waiter)
        left = deadline - time.monotonic()
        if self.service_s is not None and left < self.service_s:
            self.in_flight -= cost
            self._grant()
            raise QueueTimeout(f"waited for a slot until only {left:.1f} s of the request's timeout were left, "
                               f"less than it takes to serve it", retry_after_s=self.retry_after_s())

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiter stopped waiting without taking its turn (timed out, cancelled, shut down)."""
        if waiter in self._queue:
            self._queue.remove(waiter)
            self.waiting -= waiter.cost
            self._grant()  # the head may have changed
        elif waiter.turn.done() and not waiter.turn.cancelled() and waiter.turn.exception() is None:
            self.in_flight -= waiter.cost  # its turn came in the same instant: hand it on
            self._grant()

    def _shed_hopeless(self) -> None:
        """Refuse, now, the queued requests that the current pace cannot serve before their deadline
        (before the first measurement they could only be queued blindly); they retry sooner."""
        if self.service_s is None:
            return
        now, ahead = time.monotonic(), 0
        for waiter in list(self._queue):
            ahead += waiter.cost  # measured as when it arrived: its own cost included
            wait = self.predicted_wait_s(ahead) or 0.0
            if now + wait + self.service_s > waiter.deadline and not waiter.turn.done():
                self._queue.remove(waiter)
                self.waiting -= waiter.cost
                ahead -= waiter.cost
                waiter.turn.set_exception(Overloaded(
                    f"server overloaded: at the current pace this request cannot be served within its timeout "
                    f"(predicted wait {wait:.1f} s + processing {self.service_s:.1f} s); retry later or allow a "
                    f"longer timeout_s", retry_after_s=self.retry_after_s(wait)))

    def _grant(self) -> None:
        while self._queue and self._fits(self._queue[0].cost):
            waiter = self._queue.popleft()
            self.waiting -= waiter.cost
            self.in_flight += waiter.cost
            waiter.turn.set_result(None)

    def _note_service(self, seconds: float) -> None:
        self.service_s = seconds if self.service_s is None else 0.8 * self.service_s + 0.2 * seconds
