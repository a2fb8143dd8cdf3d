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

__all__ = ["Completion", "Engine", "EngineError", "EngineStats", "EngineUnavailable", "InvalidPromptError", "Prompt", "PromptTooLongError",
           "Sampling", "Segments", "TokenLogprob", "UnknownPromptError"]

# Template text, or token ids given by a client of /v1/completions (sent to the model as they are).
Prompt = str | list[int]


class EngineError(RuntimeError):
    """The engine could not answer (dead, stalled, remote unreachable). The service maps it to 503."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached now (a remote upstream is down); it may come back. Readiness
    fails until a probe generation succeeds; liveness does not."""


class UnknownPromptError(EngineError):
    """Scripted engine: no recorded completion for this prompt (and seed)."""


class InvalidPromptError(EngineError):
    """The prompt cannot run as given (a token id outside the vocabulary). A client error (4xx)."""


class PromptTooLongError(InvalidPromptError):
    """The prompt leaves no room for a completion in the model's context. A client error (4xx)."""


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and the most likely tokens at its position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    """A whole completion, or, from generate_stream(), one piece of it: then the counts are those of
    the piece (their sum over the pieces is the completion's) and finish_reason is None until the last."""

    text: str  # only what the model appended to the prompt (no prompt, no BOS/EOS)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = "stop"  # "stop" (EOS or a stop sequence) or "length"
    logprobs: list[TokenLogprob] | None = None  # with Sampling.logprobs: one entry per generated token
    token_ids: tuple[int, ...] = ()  # the generated token ids, where the engine reports them


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
    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        """Complete `prompt` (BOS is added by the engine to text, not to token ids). Raises
        EngineError when it cannot.

        `segments`, when given, split `prompt` into template and user parts (see `Segments`)."""

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        """Yield the completion in pieces (see `Completion`). Default: one piece."""
        yield await self.generate(prompt, sampling, request_id, segments)

    def sampling_defaults(self) -> dict[str, float | int]:
        """The model's own sampling defaults (its generation_config.json: temperature, top_p, top_k,
        min_p, repetition_penalty, max_new_tokens), for raw completions that name none. {}: none."""
        return {}

    @property
    def max_model_len(self) -> int | None:
        """Tokens of context (prompt + completion); None when unknown."""
        return None

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
