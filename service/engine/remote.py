"""Any OpenAI-compatible `/v1/completions` server as the engine (vLLM's server, llama.cpp, SGLang).

Requests carry TIPO's sampling in full: the OpenAI fields plus `top_k`, `min_p`,
`repetition_penalty` (vLLM, SGLang) and `repeat_penalty` (llama.cpp), and `seed`. When a local
tokenizer is given, the prompt is sent as token ids (exactly the reference's ids, BOS included), so
the server's own tokenizer cannot change them; otherwise as text (the server adds BOS).

Connection errors, timeouts and 5xx answers are retried `remote_retries` times with exponential
backoff; a streamed call is retried only until its first piece arrived. 4xx answers are not retried.
A server that cannot be connected to raises EngineUnavailable: the gateway turns readiness off and
probes until it answers again (start() too: the service stays loading until the upstream is up).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx

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

BACKOFF_FIRST_S = 0.25  # wait before the first retry; doubles each retry
BACKOFF_MAX_S = 4.0
CHECK_TIMEOUT_S = 5.0
_END = object()  # end-of-stream marker


class _Retryable(Exception):
    """A failure worth another try (connection refused, timeout, 5xx)."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text}")
        self.unavailable = status in (502, 503, 504)  # a proxy without upstream, or a server not ready


class RemoteEngine(Engine):
    def __init__(self, settings: Settings, tokenizer: PromptTokenizer | None = None) -> None:
        if not settings.remote_url:
            raise EngineError("the remote engine needs TIPO_REMOTE_URL, e.g. http://vllm:8000/v1")
        self.base_url = settings.remote_url.rstrip("/")
        self.retries = settings.remote_retries
        self.tokenizer = tokenizer
        self.model_name = settings.served_model_name or settings.remote_model
        self._remote_model = settings.remote_model
        headers = {"Authorization": f"Bearer {settings.remote_api_key}"} if settings.remote_api_key else {}
        timeout = httpx.Timeout(settings.remote_timeout_s, connect=min(10.0, settings.remote_timeout_s))
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)
        self._in_flight: dict[str, set[asyncio.Task]] = {}  # request_id -> its running HTTP calls

    async def start(self) -> None:
        """Find the model to ask for when none is configured: the server's first model."""
        if self._remote_model:
            return
        response = await self._with_retries(lambda: self._client.get(f"{self.base_url}/models"))
        models = response.json().get("data") or []
        if not models:
            raise EngineError(f"{self.base_url}/models lists no model")
        self._remote_model = models[0]["id"]
        self.model_name = self.model_name or self._remote_model
        log.info("remote engine %s: model %s", self.base_url, self._remote_model)

    async def shutdown(self) -> None:
        await self._client.aclose()

    async def check(self) -> None:
        try:
            response = await self._client.get(f"{self.base_url}/models", timeout=CHECK_TIMEOUT_S)
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"remote engine {self.base_url}: {_describe(exc)}") from exc
        if response.status_code >= 500:
            raise EngineUnavailable(f"remote engine {self.base_url}/models: HTTP {response.status_code}")

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        body = self._body(prompt, sampling, stream=False, segments=segments)

        async def call() -> Completion:
            response = await self._with_retries(
                lambda: self._client.post(f"{self.base_url}/completions", json=body,
                                          headers={"X-Request-Id": request_id}))
            return self._completion(response)

        return await self._abortable(request_id, call())

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        body = self._body(prompt, sampling, stream=True, segments=segments)
        pieces: asyncio.Queue = asyncio.Queue()

        async def call() -> None:
            try:
                await self._stream_with_retries(body, request_id, pieces.put_nowait)
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

    def _body(self, prompt: Prompt, sampling: Sampling, stream: bool, segments: Segments | None = None) -> dict:
        body = {
            "model": self._remote_model,
            "prompt": self._prompt_ids(prompt, segments) if self.tokenizer and isinstance(prompt, str) else prompt,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "repetition_penalty": sampling.repetition_penalty,
            "repeat_penalty": sampling.repetition_penalty,  # llama.cpp's name
            "stream": stream,
            # TIPO's calls keep special tokens in the text, as the reference's decode (vLLM extension fields).
            "skip_special_tokens": sampling.skip_special_tokens,
            "spaces_between_special_tokens": sampling.spaces_between_special_tokens,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        # Raw completions' options, sent only when asked for (TIPO's calls never set them).
        optional = {"stop": list(sampling.stop), "stop_token_ids": list(sampling.stop_token_ids),
                    "presence_penalty": sampling.presence_penalty, "frequency_penalty": sampling.frequency_penalty,
                    "min_tokens": sampling.min_tokens, "ignore_eos": sampling.ignore_eos, "logprobs": sampling.logprobs}
        body.update({key: value for key, value in optional.items() if value})
        return body

    def _prompt_ids(self, prompt: str, segments: Segments | None) -> list[int]:
        # Without a local tokenizer the server tokenises the text and reads a `<|long|>` typed by a user
        # as the marker: only token ids keep user text literal (docs/RELIABILITY.md).
        return self.tokenizer.encode_segments(segments) if segments else self.tokenizer.encode_template(prompt)

    def _completion(self, response: httpx.Response) -> Completion:
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(
                text=choice["text"],
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason=choice.get("finish_reason") or "stop",
                logprobs=_logprobs(choice.get("logprobs")),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"{self.base_url}/completions answered an unexpected body: "
                              f"{response.text[:200]!r}") from exc

    # --- transport: retries, streaming, abort

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

    async def _with_retries(self, send) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = await send()
                if response.status_code >= 500:
                    raise _Retryable(response.status_code, response.text[:200])
                if response.status_code >= 400:
                    raise EngineError(f"{self.base_url} refused the call: HTTP {response.status_code}: "
                                      f"{response.text[:300]}")
                return response
            except (httpx.TransportError, _Retryable) as exc:
                await self._retry_or_raise(exc, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _stream_with_retries(self, body: dict, request_id: str, emit) -> None:
        for attempt in range(self.retries + 1):
            started = False  # once a piece went out, a retry would repeat it: no more retries
            try:
                async with self._client.stream("POST", f"{self.base_url}/completions", json=body,
                                               headers={"X-Request-Id": request_id}) as response:
                    if response.status_code >= 500:
                        raise _Retryable(response.status_code, repr((await response.aread())[:200]))
                    if response.status_code >= 400:
                        raise EngineError(f"{self.base_url} refused the call: HTTP {response.status_code}: "
                                          f"{(await response.aread())[:300]!r}")
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:"):].strip()
                        if data == "[DONE]":
                            return
                        piece = _stream_piece(data, self.base_url)
                        if piece is not None:
                            started = True
                            emit(piece)
                    return
            except (httpx.TransportError, _Retryable) as exc:
                if started:
                    raise EngineError(f"{self.base_url} stream broke after it started: {exc!r}") from exc
                await self._retry_or_raise(exc, attempt)

    async def _retry_or_raise(self, exc: Exception, attempt: int) -> None:
        """After a failed attempt: raise EngineError when no retry is left, else wait the backoff."""
        if attempt >= self.retries:
            # Cannot connect: the upstream is down (it may come back: readiness fails, liveness not).
            unreachable = (isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException)) \
                or (isinstance(exc, _Retryable) and exc.unavailable)
            kind = EngineUnavailable if unreachable else EngineError
            raise kind(f"remote engine {self.base_url} failed after {attempt + 1} "
                       f"attempt(s): {_describe(exc)}") from exc
        log.warning("remote engine %s: %s; retry %d of %d", self.base_url, _describe(exc),
                    attempt + 1, self.retries)
        await asyncio.sleep(min(BACKOFF_FIRST_S * 2**attempt, BACKOFF_MAX_S))


def _stream_piece(data: str, base_url: str) -> Completion | None:
    """One stream event as a piece: its text and finish reason, or the usage event's counts."""
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"{base_url} sent a malformed stream event: {data[:200]!r}") from exc
    if "error" in event:
        raise EngineError(f"{base_url} stream error: {event['error']}")
    choices = event.get("choices") or []
    usage = event.get("usage") or {}
    if not choices:
        if not usage:
            return None
        return Completion(text="", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), finish_reason=None)
    choice = choices[0]
    if not choice.get("text") and choice.get("finish_reason") is None:
        return None
    return Completion(text=choice.get("text") or "", completion_tokens=0, finish_reason=choice.get("finish_reason"),
                      logprobs=_logprobs(choice.get("logprobs")))


def _logprobs(data: dict | None) -> list[TokenLogprob] | None:
    """OpenAI's completions `logprobs` object as TokenLogprobs."""
    if not data:
        return None
    tops = data.get("top_logprobs") or [{}] * len(data.get("tokens") or [])
    return [TokenLogprob(token=token, logprob=float(logprob if logprob is not None else float("-inf")), top=top or {})
            for token, logprob, top in zip(data.get("tokens") or [], data.get("token_logprobs") or [], tops)]


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    return str(exc) or type(exc).__name__


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
