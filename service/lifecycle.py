"""The service's lifecycle: loading -> ready -> draining, or failed, always with a reason.

    loading   the engine starts, the tag lists load, a warm-up generation runs (a remote upstream
              that is not there yet keeps it loading, re-tried with backoff)
    ready     requests are served
    draining  SIGTERM: newcomers get 503, admitted requests finish within the grace; when the grace
              is over, `stop_now()` ends what still runs (503 / an error event in a stream)
    failed    start-up failed for good (an in-process engine that cannot load): liveness fails

Every request handler calls `check()` before any request work, so nothing runs while the service
is not ready (the engine gateway adds the engine's own health: dead, stalled, unreachable).
"""

from __future__ import annotations

import asyncio
import enum


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.reason = "starting: loading the model"
        self._stop_now: asyncio.Event | None = None  # created on the serving loop, on first use

    def loading(self, reason: str) -> None:
        if self.phase is Phase.LOADING:
            self.reason = reason

    def ready(self) -> None:
        if self.phase is Phase.LOADING:
            self.phase, self.reason = Phase.READY, "ready"

    def failed(self, reason: str) -> None:
        if self.phase is not Phase.DRAINING:
            self.phase, self.reason = Phase.FAILED, reason

    def draining(self) -> None:
        """SIGTERM (a signal handler may call it: it only sets fields)."""
        self.phase, self.reason = Phase.DRAINING, "shutting down"

    def stop_now(self) -> None:
        """The shutdown grace is over: everything still running is ended with an error answer."""
        self.draining()
        self.stop_event().set()

    def stop_event(self) -> asyncio.Event:
        if self._stop_now is None:
            self._stop_now = asyncio.Event()
        return self._stop_now

    @property
    def serving(self) -> bool:
        return self.phase is Phase.READY
