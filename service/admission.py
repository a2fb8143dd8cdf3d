"""Admission control: a bound on requests processed at once plus a bounded wait queue.

    async with admission.slot():
        ...  # at most `max_in_flight` requests run this block at once

A request that finds every slot taken waits in the queue (FIFO). When `max_queue` requests already
wait, it is refused at once (`QueueFull` -> HTTP 429 with Retry-After). A request that waited
`queue_timeout_s` without getting a slot gives up (`QueueTimeout` -> HTTP 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class QueueFull(Exception):
    """Every slot is taken and the wait queue is full."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"server busy: every processing slot is taken and the wait queue is full; "
                         f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """The request waited too long for a slot."""


class Admission:
    def __init__(self, max_in_flight: int, max_queue: int, queue_timeout_s: float):
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _acquire(self) -> None:
        # `locked()` is also true while others wait, so a newcomer never jumps the queue.
        if not self._slots.locked():
            await self._slots.acquire()
            return
        if self.waiting >= self.max_queue:
            raise QueueFull(retry_after_s=self.retry_after_s())
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except asyncio.TimeoutError:
            raise QueueTimeout(
                f"no processing slot became free within {self.queue_timeout_s:g} s (server overloaded)"
            ) from None
        finally:
            self.waiting -= 1

    def would_refuse(self) -> bool:
        """True when a request arriving now would get QueueFull (streams check before sending 200)."""
        return self._slots.locked() and self.waiting >= self.max_queue

    def retry_after_s(self) -> int:
        """A hint for clients refused with 429: about one queue's worth of waiting, at least 1 s."""
        return max(1, min(60, round(self.queue_timeout_s / 2)))
