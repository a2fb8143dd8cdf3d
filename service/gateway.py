"""The engine gateway: every engine call of the HTTP layer goes through it.

It keeps what readiness, admission and /metrics need to know about the engine:
- calls pending, tokens, errors; each finished call's time per token goes to admission (the
  adaptive limit);
- the engine's health, watched by ONE background task (`watch()`, started in the app's lifespan):
  * dead (an in-process engine crashed): for good; liveness and readiness fail;
  * stalled (calls pending, no progress for `engine_stall_s`): pending calls fail at once (503),
    liveness and readiness fail until a probe generation comes back;
  * unreachable (a remote upstream is down): readiness fails, liveness does not (restarting this
    process would not bring the upstream back); probe generations with backoff find it again.
- cancelling a call (client gone, timeout, shutdown) aborts its engine request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from service.admission import Admission
from service.engine.base import (
    Completion,
    Engine,
    EngineError,
    EngineUnavailable,
    InvalidPromptError,
    Prompt,
    Segments,
    UnknownPromptError,
)
from service.metrics import Metrics
from service.tipo.sampling import Sampling

logger = logging.getLogger("service")

T = TypeVar("T")

# A real, tiny generation proves the engine works (readiness, recovery after a stall or an outage).
PROBE_PROMPT = "aspect_ratio: 1.0\ntarget: <|very_short|>\ntag: 1girl"
PROBE_SAMPLING = Sampling(max_new_tokens=2, seed=0)
PROBE_BACKOFF_FIRST_S = 0.5
PROBE_BACKOFF_MAX_S = 8.0
HEALTH_CHECK_S = 5.0  # how often an idle engine's reachability is checked (engine.check())


class EngineGateway:
    def __init__(self, engine: Engine, metrics: Metrics, admission: Admission, stall_s: float):
        self.engine = engine
        self.metrics = metrics
        self.admission = admission
        self.stall_s = stall_s
        self.pending = 0
        self.last_progress = time.monotonic()
        self.stalled_since: float | None = None  # progress must pass this to end a stall
        self.unreachable: str | None = None  # why the (remote) engine cannot be reached now
        self._trouble: asyncio.Future | None = None  # resolved with a reason: pending calls fail

    # --- health

    def problem(self) -> str | None:
        """Why the engine cannot take work now (readiness), or None."""
        return self.fatal_problem() or self.unreachable

    def fatal_problem(self) -> str | None:
        """Why this process should be restarted (liveness), or None."""
        if not self.engine.alive:
            return "the engine has died"
        if self.stalled_since is not None or self._stalled_now():
            return f"the engine made no progress for {self.stall_s:g} s with work pending"
        return None

    def _stalled_now(self) -> bool:
        return self.pending > 0 and time.monotonic() - self._latest_progress() > self.stall_s

    def _latest_progress(self) -> float:
        step = self.engine.last_step_at  # vLLM: its last output batch, so long generations are no stall
        return self.last_progress if step is None else max(self.last_progress, step)

    # --- calls

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        self._call_started()
        started = time.monotonic()
        answered = False
        try:
            completion = await self._watched(self.engine.generate(prompt, sampling, request_id, segments),
                                             request_id)
            answered = True
        except (UnknownPromptError, InvalidPromptError):  # the engine answered: not its fault
            answered = True
            raise
        finally:
            self._call_finished(answered)
        self.metrics.count_tokens(completion.prompt_tokens, completion.completion_tokens)
        self.admission.observe_call(time.monotonic() - started, completion.completion_tokens)
        return completion

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        self._call_started()
        started = time.monotonic()
        answered = False
        prompt_tokens = completion_tokens = 0
        pieces = self.engine.generate_stream(prompt, sampling, request_id, segments)
        try:
            while True:
                try:
                    piece = await self._watched(anext(pieces), request_id)
                except StopAsyncIteration:
                    break
                self.last_progress = time.monotonic()
                prompt_tokens = max(prompt_tokens, piece.prompt_tokens)
                completion_tokens += piece.completion_tokens
                yield piece
            answered = True
            self.metrics.count_tokens(prompt_tokens, completion_tokens)
            self.admission.observe_call(time.monotonic() - started, completion_tokens)
        except (UnknownPromptError, InvalidPromptError):
            answered = True
            raise
        finally:
            await pieces.aclose()
            self._call_finished(answered)

    async def _watched(self, call: Awaitable[T], request_id: str) -> T:
        """Await one engine call; fail it with EngineError as soon as the watchdog sees trouble, and
        abort its engine request when the caller is cancelled."""
        problem = self.problem()
        if problem:
            _close(call)
            raise EngineError(problem)
        trouble = self._trouble_future()
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait({task, trouble}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise EngineError(trouble.result())
        except EngineUnavailable as exc:
            self._mark_unreachable(str(exc))
            self.metrics.engine_errors.inc()
            raise
        except EngineError as exc:
            if not isinstance(exc, (UnknownPromptError, InvalidPromptError)):
                self.metrics.engine_errors.inc()
            raise
        except asyncio.CancelledError:
            await self._abort(request_id)
            raise
        finally:
            if not task.done():
                task.cancel()  # the engine's own abort runs when its call is cancelled
                await asyncio.gather(task, return_exceptions=True)

    def _trouble_future(self) -> asyncio.Future:
        if self._trouble is None or self._trouble.done():
            self._trouble = asyncio.get_running_loop().create_future()
        return self._trouble

    def _fail_pending(self, reason: str) -> None:
        if self._trouble is not None and not self._trouble.done():
            self._trouble.set_result(reason)

    async def _abort(self, request_id: str) -> None:
        try:
            await self.engine.abort(request_id)
        except Exception:  # best effort: the engine may already be gone
            logger.warning("could not abort engine request %s", request_id)

    def _call_started(self) -> None:
        if self.pending == 0:
            self.last_progress = time.monotonic()  # idle time is not a stall
        self.pending += 1

    def _call_finished(self, answered: bool) -> None:
        self.pending -= 1
        if answered:
            self.last_progress = time.monotonic()

    def _mark_unreachable(self, reason: str) -> None:
        if self.unreachable is None:
            logger.error("engine unreachable: %s; not ready until a probe generation succeeds", reason)
        self.unreachable = reason

    # --- the watchdog

    async def warm_up(self) -> None:
        """One real generation (readiness turns 200 only after it succeeded)."""
        await self._probe_generation("warmup")

    async def watch(self) -> None:
        """The one background task: detect death and stalls, probe until the engine recovers."""
        interval = min(1.0, max(self.stall_s / 4, 0.01))
        backoff, next_probe_at, next_check_at = PROBE_BACKOFF_FIRST_S, 0.0, 0.0
        probe: asyncio.Task | None = None
        try:
            while True:
                await asyncio.sleep(interval)
                if not self.engine.alive:
                    self._fail_pending("the engine has died")
                    continue
                self._check_stall()
                if self.stalled_since is None and self.unreachable is None:
                    backoff = PROBE_BACKOFF_FIRST_S
                    if (probe is None or probe.done()) and time.monotonic() >= next_check_at:
                        probe = asyncio.create_task(self._check())  # an upstream may go away while idle
                        next_check_at = time.monotonic() + HEALTH_CHECK_S
                    continue
                if (probe is None or probe.done()) and time.monotonic() >= next_probe_at:
                    probe = asyncio.create_task(self._recover())
                    next_probe_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, PROBE_BACKOFF_MAX_S)
        finally:
            if probe is not None:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)

    def _check_stall(self) -> None:
        if self.stalled_since is not None:
            if self._latest_progress() > self.stalled_since:
                logger.warning("the engine made progress again: stall over")
                self.stalled_since = None
            return
        if self._stalled_now():
            self.stalled_since = time.monotonic()
            logger.error("the engine made no progress for %g s with %d call(s) pending: failing them (503); "
                         "liveness fails until a probe generation succeeds", self.stall_s, self.pending)
            self._fail_pending(f"the engine made no progress for {self.stall_s:g} s")

    async def _check(self) -> None:
        try:
            await self.engine.check()
        except EngineUnavailable as exc:
            self._mark_unreachable(str(exc))
        except Exception as exc:  # a check that breaks is not an outage
            logger.warning("engine health check failed: %s", exc)

    async def _recover(self) -> None:
        try:
            await self._probe_generation(f"probe-{uuid.uuid4().hex[:8]}")
        except Exception as exc:  # still broken: keep probing with backoff
            logger.warning("engine probe failed: %s", exc)
            return
        self.last_progress = time.monotonic()
        if self.unreachable is not None:
            logger.warning("engine reachable again")
            self.unreachable = None

    async def _probe_generation(self, request_id: str) -> None:
        try:
            await self.engine.generate(PROBE_PROMPT, PROBE_SAMPLING, request_id)
        except UnknownPromptError:
            pass  # a scripted engine answered (with a replay miss): it works
        except EngineUnavailable as exc:
            self._mark_unreachable(str(exc))
            raise
        self.last_progress = time.monotonic()


def _close(call: Awaitable) -> None:
    close = getattr(call, "close", None)  # a coroutine never awaited would warn
    if close is not None:
        close()
