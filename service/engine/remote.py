"""Any OpenAI-compatible `/v1/completions` server as the engine (vLLM's server, llama.cpp, SGLang).

Requests carry TIPO's sampling in full: the OpenAI fields plus `top_k`, `min_p`,
`repetition_penalty` (vLLM, SGLang) and `repeat_penalty` (llama.cpp), and `seed`. When a local
tokenizer is given, the prompt is sent as token ids (exactly the reference's ids, BOS included), so
the server's own tokenizer cannot change them; otherwise as text (the server adds BOS).

The official `openai` client (`AsyncOpenAI`) does the HTTP (pool, timeouts), parses the SSE stream
and retries: connection errors, timeouts, 408/409/429 and 5xx answers, `remote_retries` times, with
its backoff (0.5 s doubling up to 8 s, less up to 25 % jitter) or the server's `Retry-After` if at
most 2 minutes (a longer one: no retry); it logs each retry (`openai._base_client`, INFO). For a vLLM
upstream or its proxy, 408/409/429 mean "busy, try again", so retrying them is right; other 4xx
answers are not retried. It retries a request until its answer's headers arrived, never a stream
whose body has begun, so no piece is sent twice.

What stays ours: the request body (vLLM's and llama.cpp's fields go in `extra_body`), turning answers
and stream events into Completions, abort(request_id), and what a failure means. A server that cannot
be connected to, or still answers 502/503/504 after the retries (a proxy without upstream, a server not
ready), raises EngineUnavailable: the gateway turns readiness off and probes until it answers again
(start() too: the service stays loading until the upstream is up). Timeouts, other statuses and broken
streams raise EngineError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import openai

from service.engine.base import (
    Completion,
    Engine,
    EngineError,
    EngineStats,
    EngineUnavailable,
    Prompt,
    Sampling,
    Segments,
    TokenLogprob,
)
from service.engine.tokenizer import PromptTokenizer
from service.settings import Settings

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0
UNAVAILABLE_STATUSES = (502, 503, 504)  # a proxy without upstream, or a server not ready
RETRIED_CLIENT_STATUSES = (408, 409, 429)  # the 4xx answers the openai client retries
_END = object()  # end-of-stream marker
# Idle connections are dropped before the upstream drops them (vLLM's server and uvicorn: 5 s), so a call is
# not sent on a connection being closed (the openai client would retry it, after a backoff).
UPSTREAM_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0)


class RemoteEngine(Engine):
    def __init__(self, settings: Settings, tokenizer: PromptTokenizer | None = None) -> None:
        if not settings.remote_url:
            raise EngineError("the remote engine needs TIPO_REMOTE_URL, e.g. http://vllm:8000/v1")
        self.base_url = settings.remote_url.rstrip("/")
        self.retries = settings.remote_retries
        self.tokenizer = tokenizer
        self.model_name = settings.served_model_name or settings.remote_model
        self._remote_model = settings.remote_model
        # The client needs some key (and would read OPENAI_API_KEY without one); without a configured key
        # every call omits the Authorization header, as a server without --api-key expects.
        self._auth_headers = {} if settings.remote_api_key else {"Authorization": openai.Omit()}
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=settings.remote_api_key or "none", max_retries=self.retries,
            http_client=openai.DefaultAsyncHttpxClient(limits=UPSTREAM_LIMITS),
            timeout=openai.Timeout(settings.remote_timeout_s, connect=min(10.0, settings.remote_timeout_s)))
        self._check_client = self._client.with_options(timeout=CHECK_TIMEOUT_S, max_retries=0)  # same pool
        self._in_flight: dict[str, set[asyncio.Task]] = {}  # request_id -> its running HTTP calls

    async def start(self) -> None:
        """Find the model to ask for when none is configured: the server's first model."""
        if self._remote_model:
            return
        try:
            page = await self._client.models.list(extra_headers=self._auth_headers)
        except openai.APIError as exc:
            raise self._failure(exc) from exc
        models = getattr(page, "data", None) or []
        if not models:
            raise EngineError(f"{self.base_url}/models lists no model")
        self._remote_model = models[0].id
        self.model_name = self.model_name or self._remote_model
        log.info("remote engine %s: model %s", self.base_url, self._remote_model)

    async def shutdown(self) -> None:
        await self._client.close()

    async def check(self) -> None:
        """One try with a short timeout; any answer below 500 means the server is there."""
        try:
            await self._check_client.models.with_raw_response.list(extra_headers=self._auth_headers)
        except openai.APIConnectionError as exc:  # timeouts included
            raise EngineUnavailable(f"remote engine {self.base_url}: {_describe(exc)}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise EngineUnavailable(f"remote engine {self.base_url}/models: HTTP {exc.status_code}") from exc

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        params = self._params(prompt, sampling, stream=False, segments=segments)

        async def call() -> Completion:
            try:
                answer = await self._client.completions.create(**params, extra_headers=self._headers(request_id))
            except openai.APIError as exc:
                raise self._failure(exc) from exc
            except ValueError as exc:  # a JSON content type with a body that is not JSON
                raise EngineError(f"{self.base_url}/completions answered an unexpected body: {exc}") from exc
            return self._completion(answer)

        return await self._abortable(request_id, call())

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        params = self._params(prompt, sampling, stream=True, segments=segments)
        pieces: asyncio.Queue = asyncio.Queue()

        async def call() -> None:
            try:
                await self._stream(params, request_id, pieces.put_nowait)
            finally:
                pieces.put_nowait(_END)  # also on error or abort, so the loop below always ends

        task = asyncio.ensure_future(self._abortable(request_id, call()))
        try:
            while (piece := await pieces.get()) is not _END:
                yield piece
            await task  # raises the call's error, if any
        finally:
            task.cancel()  # the consumer stopped early: stop the HTTP call

    async def abort(self, request_id: str) -> None:
        for task in list(self._in_flight.get(request_id, ())):
            task.cancel()  # closes the connection; vLLM's server aborts a request whose client left

    def stats(self) -> EngineStats:
        running = sum(len(tasks) for tasks in self._in_flight.values())
        return EngineStats(running=running, waiting=0)

    # --- request building and parsing

    def _params(self, prompt: Prompt, sampling: Sampling, stream: bool, segments: Segments | None = None) -> dict:
        """completions.create()'s arguments; the server receives the OpenAI fields and extra_body in one body."""
        params = {
            "model": self._remote_model,
            "prompt": self._prompt_ids(prompt, segments) if self.tokenizer and isinstance(prompt, str) else prompt,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        extra_body = {
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "repetition_penalty": sampling.repetition_penalty,
            "repeat_penalty": sampling.repetition_penalty,  # llama.cpp's name
            # TIPO's calls keep special tokens in the text, as the reference's decode (vLLM extension fields).
            "skip_special_tokens": sampling.skip_special_tokens,
            "spaces_between_special_tokens": sampling.spaces_between_special_tokens,
        }
        if stream:
            params["stream_options"] = {"include_usage": True}
        if sampling.seed is not None:
            params["seed"] = sampling.seed
        # Raw completions' options, sent only when asked for (TIPO's calls never set them).
        optional = {"stop": list(sampling.stop), "presence_penalty": sampling.presence_penalty,
                    "frequency_penalty": sampling.frequency_penalty, "logprobs": sampling.logprobs}
        params.update({key: value for key, value in optional.items() if value})
        optional_extra = {"stop_token_ids": list(sampling.stop_token_ids), "min_tokens": sampling.min_tokens,
                          "ignore_eos": sampling.ignore_eos}
        extra_body.update({key: value for key, value in optional_extra.items() if value})
        params["extra_body"] = extra_body
        return params

    def _headers(self, request_id: str) -> dict:
        return {"X-Request-Id": request_id, **self._auth_headers}

    def _prompt_ids(self, prompt: str, segments: Segments | None) -> list[int]:
        # Without a local tokenizer the server tokenises the text and reads a `<|long|>` typed by a user
        # as the marker: only token ids keep user text literal (docs/RELIABILITY.md).
        return self.tokenizer.encode_segments(segments) if segments else self.tokenizer.encode_template(prompt)

    def _completion(self, answer) -> Completion:
        # The client builds its models without validation (a missing field is None); a body that is not
        # JSON comes back as its text.
        try:
            choice = answer.choices[0]
            usage = answer.usage
            return Completion(
                text=choice.text,
                prompt_tokens=int(usage.prompt_tokens or 0) if usage else 0,
                completion_tokens=int(usage.completion_tokens or 0) if usage else 0,
                finish_reason=choice.finish_reason or "stop",
                logprobs=_logprobs(choice.logprobs),
            )
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            body = answer.to_json(indent=None) if hasattr(answer, "to_json") else str(answer)
            raise EngineError(f"{self.base_url}/completions answered an unexpected body: {body[:200]!r}") from exc

    # --- transport: streaming, failures, abort

    async def _stream(self, params: dict, request_id: str, emit) -> None:
        started = False  # once a piece went out, the call must not be repeated
        try:
            # create() returns once the answer's headers arrived (retrying until then); the body is read below.
            stream = await self._client.completions.create(**params, extra_headers=self._headers(request_id))
            async with stream:  # closes the response on any exit, abort included
                async for event in stream:
                    piece = _stream_piece(event)
                    if piece is not None:
                        started = True
                        emit(piece)
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            # The library retries nothing once the headers are in, so a stream that breaks before its first
            # piece is no longer retried (the hand-written client did; only our own retry loop could). Such a
            # failure counts as the request's (a lost connection: EngineUnavailable); after a piece, as a broken stream.
            if started:
                raise EngineError(f"{self.base_url} stream broke after it started: {_describe(exc)}") from exc
            raise self._failure(exc) from exc
        except openai.APIError as exc:  # an error event in the stream
            raise EngineError(f"{self.base_url} stream error: {exc.body if exc.body is not None else exc}") from exc
        except (ValueError, AttributeError, TypeError) as exc:  # an event that is not JSON, or not a completion
            raise EngineError(f"{self.base_url} sent a malformed stream event: {exc}") from exc

    def _failure(self, exc: openai.APIError) -> EngineError:
        """A call's failure, after the client's retries, as the EngineError the gateway acts on."""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status < 500 and status not in RETRIED_CLIENT_STATUSES:
                return EngineError(f"{self.base_url} refused the call: HTTP {status}: {_answer_text(exc)[:300]}")
            unreachable = status in UNAVAILABLE_STATUSES
        else:
            # Cannot connect: the upstream is down (it may come back: readiness fails, liveness not). A
            # timeout or a connection lost in mid-answer is a slow or overloaded upstream that still answers
            # others: the call fails, readiness stays (marking it unreachable failed every call in flight).
            unreachable = _cannot_connect(exc)
        # The client numbers its tries in a request header; the error carries the last try's request.
        attempts = int(exc.request.headers.get("x-stainless-retry-count", self.retries)) + 1
        kind = EngineUnavailable if unreachable else EngineError
        return kind(f"remote engine {self.base_url} failed after {attempts} attempt(s): {_describe(exc)}")

    async def _abortable(self, request_id: str, coro):
        """Run `coro` as its own task so abort(request_id) can stop it; the caller sees EngineError."""
        task = asyncio.ensure_future(coro)
        self._in_flight.setdefault(request_id, set()).add(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not _current_task_cancelling():  # abort() cancelled the call, not our caller
                raise EngineError(f"request {request_id} was aborted") from None
            task.cancel()  # the caller itself was cancelled: stop the HTTP call too
            raise
        finally:
            tasks = self._in_flight.get(request_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._in_flight[request_id]


def _stream_piece(event) -> Completion | None:
    """One stream event as a piece: its text and finish reason, or the usage event's counts."""
    if not event.choices:
        if not event.usage:
            return None
        return Completion(text="", prompt_tokens=int(event.usage.prompt_tokens or 0),
                          completion_tokens=int(event.usage.completion_tokens or 0), finish_reason=None)
    choice = event.choices[0]
    if not choice.text and choice.finish_reason is None:
        return None
    return Completion(text=choice.text or "", completion_tokens=0, finish_reason=choice.finish_reason,
                      logprobs=_logprobs(choice.logprobs))


def _logprobs(data) -> list[TokenLogprob] | None:
    """OpenAI's completions `logprobs` object as TokenLogprobs."""
    if not data:
        return None
    tops = data.top_logprobs or [{}] * len(data.tokens or [])
    return [TokenLogprob(token=token, logprob=float(logprob if logprob is not None else float("-inf")), top=top or {})
            for token, logprob, top in zip(data.tokens or [], data.token_logprobs or [], tops)]


def _answer_text(exc: openai.APIStatusError) -> str:
    try:
        return exc.response.text
    except Exception:  # a response closed before it was read
        return str(exc.body)


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_answer_text(exc)[:200]}"
    cause = exc.__cause__ or exc  # the transport's exception
    if isinstance(exc, openai.APITimeoutError):
        return f"timed out ({type(cause).__name__})"
    if isinstance(exc, openai.APIConnectionError):
        if _cannot_connect(exc):
            return f"cannot connect ({cause})"
        return f"connection lost ({type(cause).__name__}: {cause})"  # e.g. closed in mid-answer
    return str(exc) or type(exc).__name__


def _cannot_connect(exc: openai.APIError) -> bool:
    """No connection could be made (refused, no route): the transport's ConnectError, whichever httpx the
    client runs on."""
    cause = exc.__cause__
    return (isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
            and cause is not None and "ConnectError" in type(cause).__name__)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
