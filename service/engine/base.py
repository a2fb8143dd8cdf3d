"""The one small interface every engine implements (vllm, remote, scripted).

An engine turns a prompt into a completion. It knows nothing about TIPO: the TIPO runner
(service/tipo/runner.py) decides what to ask, the serving layer drives many runners against one
engine at once, so concurrent model calls reach the engine together and vLLM batches them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from service.tipo.sampling import Sampling

# Which parts of a prompt are user text: (text, is_template) pairs whose concatenation is the prompt
# (built by service.tipo.template). Engines that tokenise read `<|...|>` markers only in template
# parts and keep content literal, so a `<|long|>` typed by a user never becomes the model's control
# token. segments=None: the whole prompt is template text (raw completions, warm-up).
from service.tipo.template import Segments

__all__ = ["Completion", "Engine", "EngineError", "EngineStats", "EngineUnavailable", "PromptTooLongError", "Sampling", "Segments",
           "UnknownPromptError"]


class EngineError(RuntimeError):
    """The engine could not answer (dead, stalled, remote unreachable). The service maps it to 503."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached now (a remote upstream is down); it may come back. Readiness
    fails until a probe generation succeeds; liveness does not."""


class UnknownPromptError(EngineError):
    """Scripted engine: no recorded completion for this prompt (and seed)."""


class PromptTooLongError(EngineError):
    """The prompt leaves no room for a completion in the model's context. A client error (4xx)."""


@dataclass
class Completion:
    text: str  # only what the model appended to the prompt (no prompt, no BOS/EOS)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (EOS) or "length"


@dataclass
class EngineStats:
    """Figures the engine exposes for /metrics and readiness."""

    running: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(abc.ABC):
    """An async text-completion engine. Cancelling a generate() task aborts its engine request."""

    model_name: str = ""

    async def start(self) -> None:
        """Load the model. Called once, before the first request."""

    async def shutdown(self) -> None:
        """Release the model."""

    @abc.abstractmethod
    async def generate(self, prompt: str, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        """Complete `prompt` (BOS is added by the engine). Raises EngineError when it cannot.

        `segments`, when given, split `prompt` into template and user parts (see `Segments`)."""

    async def generate_stream(self, prompt: str, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[str]:
        """Yield the completion text in pieces. Default: one piece."""
        completion = await self.generate(prompt, sampling, request_id, segments)
        yield completion.text

    async def check(self) -> None:
        """A cheap health check while idle; raises EngineUnavailable when the engine cannot be
        reached (a remote upstream). Default: nothing to check (in-process engines report `alive`)."""

    async def abort(self, request_id: str) -> None:
        """Stop the engine work of a request whose client is gone."""

    def count_tokens(self, prompt: str) -> int:
        """Tokens of `prompt` as the model sees it (BOS included); 0 when unknown."""
        return 0

    def stats(self) -> EngineStats:
        return EngineStats()

    @property
    def last_step_at(self) -> float | None:
        """time.monotonic() of the engine's last observed step (vLLM: its last output batch); None when
        the engine cannot tell. The service uses it to tell a long generation from a stalled engine."""
        return None

    @property
    def alive(self) -> bool:
        """False once the engine has died for good (an in-process engine crashed): liveness fails. An
        engine that may come back (a remote upstream) stays alive and raises EngineUnavailable."""
        return True
