"""What every request handler shares: settings, the engine, metrics, admission, readiness.

One `ServiceState` lives on `app.state.service`. All engine calls of the HTTP layer go through
`ServiceState.generate` / `generate_stream`, which keep the figures readiness and /metrics need
(calls pending, last engine progress, tokens, engine errors) and abort the engine request when the
caller is cancelled (client gone, timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from service.admission import Admission
from service.engine.base import Completion, Engine, EngineError, PromptTooLongError, Segments, UnknownPromptError
from service.metrics import Metrics
from service.settings import Settings
from service.tipo.sampling import Sampling
from service.tipo.tags import TagIndex

logger = logging.getLogger("service")

T = TypeVar("T")

# A real, tiny generation proves the engine works before readiness turns 200 (SPEC §1.1 template).
WARMUP_PROMPT = "aspect_ratio: 1.0\ntarget: <|very_short|>\ntag: 1girl"
WARMUP_SAMPLING = Sampling(max_new_tokens=2, seed=0)


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    tag_index: TagIndex | None = None  # loaded in the app's lifespan unless given
    api_keys: frozenset[str] = frozenset()
    metrics: Metrics = field(init=False)
    admission: Admission = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False
    startup_failed: bool = False
    not_ready_reason: str = "starting: loading the model"
    shutting_down: bool = False
    pending_calls: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    stall_seen_at: float | None = None  # set when pending calls were failed for a stall (see stalled())
    _stall_probe: asyncio.Future | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.admission = Admission(s.max_in_flight, s.max_queue, s.queue_timeout_s)
        self.metrics = Metrics(
            read_engine_stats=self.engine.stats,
            read_in_flight=lambda: self.admission.in_flight,
            read_waiting=lambda: self.admission.waiting,
        )

    @property
    def model_name(self) -> str:
        """The name the API reports; engines may learn theirs only when they start."""
        return self.settings.served_model_name or self.engine.model_name or "tipo"

    # --- engine calls

    async def generate(self, prompt: str, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        self._call_started()
        answered = False
        try:
            completion = await self._watched(self.engine.generate(prompt, sampling, request_id, segments))
            answered = True
        except asyncio.CancelledError:
            await self._abort(request_id)
            raise
        except (UnknownPromptError, PromptTooLongError):  # not the engine's fault: it answered
            answered = True
            raise
        except EngineError:
            self.metrics.engine_errors.inc()
            raise
        finally:
            self._call_finished(answered)
        self.metrics.count_tokens(completion.prompt_tokens, completion.completion_tokens)
        return completion

    async def generate_stream(self, prompt: str, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[str]:
        self._call_started()
        answered = False
        pieces = self.engine.generate_stream(prompt, sampling, request_id, segments)
        try:
            while True:
                try:
                    piece = await self._watched(anext(pieces))
                except StopAsyncIteration:
                    break
                self.last_progress = time.monotonic()
                yield piece
            answered = True
        except (asyncio.CancelledError, GeneratorExit):
            await self._abort(request_id)
            raise
        except (UnknownPromptError, PromptTooLongError):  # not the engine's fault: it answered
            answered = True
            raise
        except EngineError:
            self.metrics.engine_errors.inc()
            raise
        finally:
            await pieces.aclose()
            self._call_finished(answered)

    async def _watched(self, call: Awaitable[T]) -> T:
        """Await one engine call, but give up with EngineError as soon as the engine dies or stalls.

        Without this, a stalled engine (a hung GPU, a frozen EngineCore) would keep every pending
        request waiting until its own timeout; with it they fail within `engine_stall_s` (503).
        """
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._watch_interval_s())
                if done:
                    return task.result()
                problem = self._engine_problem()
                if problem:
                    raise EngineError(problem)
        finally:
            if not task.done():
                task.cancel()  # the engine's own abort runs when its call is cancelled
                await asyncio.gather(task, return_exceptions=True)

    def _watch_interval_s(self) -> float:
        return min(1.0, max(self.settings.engine_stall_s / 4, 0.01))

    def _engine_problem(self) -> str | None:
        if not self.engine.alive:
            return "the engine has died"
        if self.stalled():
            self._note_stall()
            return f"the engine made no progress for {self.settings.engine_stall_s:g} s"
        return None

    async def _abort(self, request_id: str) -> None:
        try:
            await self.engine.abort(request_id)
        except Exception:  # aborting is best effort; the engine may already be gone
            logger.warning("could not abort engine request %s", request_id)

    def _call_started(self) -> None:
        if self.pending_calls == 0:
            self.last_progress = time.monotonic()  # idle time is not a stall
        self.pending_calls += 1

    def _call_finished(self, answered: bool) -> None:
        self.pending_calls -= 1
        if answered:
            self.last_progress = time.monotonic()

    # --- stalls

    def _latest_progress(self) -> float:
        """The last sign of life: a call answered, a streamed piece, or (vLLM) an engine step."""
        step = self.engine.last_step_at
        return self.last_progress if step is None else max(self.last_progress, step)

    def stalled(self) -> bool:
        """Work is pending but the engine has made no progress for `engine_stall_s`; once seen, it
        stays stalled until the engine shows progress again (the failed calls leave nothing pending)."""
        if self.stall_seen_at is not None:
            if self._latest_progress() <= self.stall_seen_at:
                return True
            logger.warning("the engine made progress again: stall over")
            self.stall_seen_at = None
        return self.pending_calls > 0 and time.monotonic() - self._latest_progress() > self.settings.engine_stall_s

    def _note_stall(self) -> None:
        if self.stall_seen_at is not None:
            return
        self.stall_seen_at = time.monotonic()
        logger.error("the engine made no progress for %g s with %d call(s) pending: failing them (503); "
                     "liveness fails until a probe generation succeeds", self.settings.engine_stall_s,
                     self.pending_calls)
        if self._stall_probe is None or self._stall_probe.done():
            self._stall_probe = asyncio.ensure_future(self._probe_after_stall())

    async def _probe_after_stall(self) -> None:
        """One tiny generation, not bounded by the watchdog: when it comes back the engine works again
        (readiness refuses requests meanwhile, so nothing else would show it)."""
        try:
            await self.engine.generate(WARMUP_PROMPT, WARMUP_SAMPLING, f"stall-probe-{uuid.uuid4().hex[:8]}")
        except UnknownPromptError:
            pass  # a scripted engine answered
        except Exception as exc:  # still broken: liveness keeps failing, Kubernetes restarts the pod
            logger.error("stall probe failed: %s", exc)
            return
        self.last_progress = time.monotonic()

    async def close(self) -> None:
        """Stop background work (the app's lifespan calls it at shutdown)."""
        if self._stall_probe is not None and not self._stall_probe.done():
            self._stall_probe.cancel()
            await asyncio.gather(self._stall_probe, return_exceptions=True)

    # --- health

    def liveness(self) -> tuple[bool, str]:
        if self.startup_failed:
            return False, self.not_ready_reason
        if self.ready and not self.engine.alive:
            return False, "the engine has died"
        if self.stalled():
            return False, f"the engine made no progress for {self.settings.engine_stall_s:g} s with work pending"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if not self.ready:
            return False, self.not_ready_reason
        live, reason = self.liveness()
        if not live:
            return False, reason
        return True, "ready"

    async def warm_up(self) -> None:
        """Run one real generation; readiness turns 200 only after it succeeded."""
        try:
            await self.generate(WARMUP_PROMPT, WARMUP_SAMPLING, "warmup")
        except UnknownPromptError:
            pass  # a scripted engine answered (with a replay miss): it works
        self.ready = True
        self.not_ready_reason = ""


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
