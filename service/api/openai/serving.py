"""The logic of the OpenAI-compatible endpoints.

/v1/completions  raw completion of a prompt (the TIPO template text) by the engine, streamed token by
                 token with `stream: true`. TIPO's sampling extras (top_k, min_p, repetition_penalty,
                 seed) are accepted as extra fields.
/v1/chat/completions  the last user message is a partial prompt, the reply is the optimized prompt
                 (a full TIPO request, see `split_partial_prompt` for how tags and a caption are told
                 apart). With `stream: true` the finished reply is sent as SSE chunks, so errors still
                 get their proper HTTP status.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from service.api.common import (
    SSE_HEADERS,
    GuardedStream,
    new_request_id,
    require_ready,
    run_admitted,
    sse,
    stream_admitted,
)
from service.api.errors import ApiError, validation_message
from service.api.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatReply,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
)
from service.api.state import ServiceState
from service.api.tipo.protocol import TipoRequestBody
from service.api.tipo.serving import TipoServing, random_seed, resolve_seed
from service.engine.base import Completion
from service.tipo.sampling import Sampling

DEFAULT_MAX_TOKENS = Sampling().max_new_tokens


class OpenAIServing:
    def __init__(self, state: ServiceState):
        self.state = state

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.state.model_name, created=self.state.created)])

    # --- /v1/completions

    async def completions(self, body: CompletionRequest, request: Request) -> CompletionResponse | StreamingResponse:
        refuse_unsupported(body)
        if body.echo or body.suffix or (body.best_of or 1) > 1:
            raise ApiError(422, "echo, suffix and best_of are not supported", param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(422, "prompt must not be empty", param="prompt")
        # Choice i*n + j completes prompt i with seed + j (OpenAI's ordering of choices).
        jobs = [(i * body.n + j, prompt, self.sampling(body, j, body.max_tokens))
                for i, prompt in enumerate(prompts) for j in range(body.n)]
        if len(jobs) > self.state.settings.max_batch:
            raise ApiError(422, f"too many completions in one request: {len(prompts)} prompt(s) x n={body.n} = "
                           f"{len(jobs)}; the server allows at most {self.state.settings.max_batch} (max_batch)",
                           param="prompt" if len(prompts) > 1 else "n")
        request_id = new_request_id("cmpl")
        if body.stream:
            return await self.stream_completions(body, request, request_id, jobs)

        async def work() -> list[Completion]:
            return await asyncio.gather(*(self.state.gateway.generate(prompt, sampling, f"{request_id}-{index}")
                                          for index, prompt, sampling in jobs))

        completions = await run_admitted(self.state, request, cost=len(jobs), timeout_s=None, work=work)
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        completion_tokens = sum(c.completion_tokens for c in completions)
        return CompletionResponse(
            id=request_id, created=int(time.time()), model=self.state.model_name,
            choices=[CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason)
                     for (index, _, _), c in zip(jobs, completions)],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
        )

    @staticmethod
    def tipo_body(body: ChatCompletionRequest, tags: str, caption: str) -> TipoRequestBody:
        return TipoRequestBody(
            tags=tags, nl_prompt=caption, width=body.width, height=body.height,
            tag_length=body.tag_length, nl_length=body.nl_length, ban_tags=body.ban_tags,
            **({"format": body.format} if body.format else {}),
            seed=None if body.seed is None or body.seed < 0 else body.seed,
            temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0), min_p=body.min_p,
            max_new_tokens=min(body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS, 1024),
            profile=body.profile,
        )

    def sampling(self, body: SamplingFields, choice: int, max_tokens: int | None) -> Sampling:
        seed = None if body.seed is None or body.seed < 0 else body.seed + choice
        return Sampling(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            repetition_penalty=body.repetition_penalty, max_new_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            seed=seed if seed is not None else random_seed(),
        )

    async def stream_completions(self, body: CompletionRequest, request: Request, request_id: str,
                                 jobs: list[tuple[int, str, Sampling]]) -> GuardedStream:
        state = self.state
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(index: int, text: str, finish_reason: str | None) -> str:
            return sse({"id": request_id, "object": "text_completion", "created": created,
                        "model": state.model_name,
                        "choices": [{"index": index, "text": text, "logprobs": None,
                                     "finish_reason": finish_reason}]})

        async def events() -> AsyncIterator[str]:
            texts = {index: "" for index, _, _ in jobs}
            async for index, piece in merged_streams(state, request_id, jobs):
                if piece is None:
                    yield chunk(index, "", "stop")
                else:
                    texts[index] += piece
                    yield chunk(index, piece, None)
            # Token counts of a stream come from the engine's tokenizer (0 when it has none).
            prompt_tokens = sum(state.engine.count_tokens(prompt) for _, prompt, _ in jobs)
            completion_tokens = sum(max(state.engine.count_tokens(text) - 1, 0) for text in texts.values())
            state.metrics.count_tokens(prompt_tokens, completion_tokens)
            if include_usage:
                yield sse({"id": request_id, "object": "text_completion", "created": created,
                           "model": state.model_name, "choices": [],
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}})

        return await stream_admitted(state, request, cost=len(jobs), timeout_s=None, events=events)

    # --- /v1/chat/completions

    async def chat(self, body: ChatCompletionRequest, request: Request) -> ChatCompletionResponse | StreamingResponse:
        refuse_unsupported(body)
        if body.n != 1:
            raise ApiError(422, "n must be 1 for chat completions (use POST /v1/tipo/batch for variants)", param="n")
        user_messages = [m for m in body.messages if m.role == "user"]
        if not user_messages:
            raise ApiError(422, "messages must contain a user message (the partial prompt)", param="messages")
        tags, caption = split_partial_prompt(user_messages[-1].text())
        try:
            tipo_body = self.tipo_body(body, tags, caption)
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise ApiError(422, message, param=param) from None
        require_ready(self.state)
        tipo = TipoServing(self.state)
        runner = tipo.make_runner(tipo_body, seed=resolve_seed(tipo_body.seed))
        request_id = new_request_id("chatcmpl")

        async def work():
            return await tipo.run_one(runner, tipo_body, request_id, time.perf_counter(), queue_s=0.0)

        result = await run_admitted(self.state, request, cost=1, timeout_s=None, work=work)
        created = int(time.time())
        usage = Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                      total_tokens=result.usage.prompt_tokens + result.usage.completion_tokens)
        if not body.stream:
            return ChatCompletionResponse(
                id=request_id, created=created, model=self.state.model_name,
                choices=[ChatChoice(index=0, message=ChatReply(content=result.prompt))], usage=usage)

        def chunk(delta: dict, finish_reason: str | None) -> str:
            return sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                        "model": self.state.model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

        events = [chunk({"role": "assistant", "content": ""}, None), chunk({"content": result.prompt}, None),
                  chunk({}, "stop")]
        if body.stream_options and body.stream_options.include_usage:
            events.append(sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                               "model": self.state.model_name, "choices": [], "usage": usage.model_dump()}))
        events.append("data: [DONE]\n\n")
        return StreamingResponse(iter(events), media_type="text/event-stream", headers=SSE_HEADERS)


def refuse_unsupported(body: SamplingFields) -> None:
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if any(stops):
        raise ApiError(422, "stop sequences are not supported: TIPO models stop at their end-of-sequence token",
                       param="stop")
    if body.presence_penalty or body.frequency_penalty:
        raise ApiError(422, "presence_penalty and frequency_penalty are not supported; use repetition_penalty",
                       param="presence_penalty")
    if body.logprobs:
        raise ApiError(422, "logprobs are not supported", param="logprobs")


async def merged_streams(
    state: ServiceState, request_id: str, jobs: list[tuple[int, str, Sampling]]
) -> AsyncIterator[tuple[int, str | None]]:
    """Run the choices' streams concurrently; yield (index, piece), then (index, None) when one ends."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, prompt: str, sampling: Sampling) -> None:
        try:
            async for piece in state.gateway.generate_stream(prompt, sampling, f"{request_id}-{index}"):
                await queue.put((index, piece, None))
            await queue.put((index, None, None))
        except Exception as exc:
            await queue.put((index, None, exc))

    tasks = [asyncio.ensure_future(pump(*job)) for job in jobs]
    try:
        running = len(tasks)
        while running:
            index, piece, error = await queue.get()
            if error is not None:
                raise error
            if piece is None:
                running -= 1
            yield index, piece
    finally:
        for task in tasks:  # client gone, timeout or error: stop (and abort) the other choices
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- reading a chat message as a partial prompt

_PREFIXES = {"tags": "tags", "tag": "tags", "caption": "caption", "nl": "caption", "description": "caption"}
_PREFIX = re.compile(r"^\s*(tags?|caption|nl|description)\s*:\s*", re.IGNORECASE)
_WORDS_IN_A_TAG = 4  # "hand on own hip": real tags have at most 4 words


def split_partial_prompt(message: str) -> tuple[str, str]:
    """Tell the tags and the caption of a chat message apart; returns (tags, caption).

    The message is read line by line (blank lines ignored):
    - a line starting with `tags:` (or `tag:`) is tags, one starting with `caption:`, `nl:` or
      `description:` is caption text (the prefix is removed);
    - otherwise a line is caption text when it ends with `.`, `!` or `?`, or when one of its
      comma-separated pieces has more than 4 words; else it is a tag list.
    Tag lines are joined with ", ", caption lines with " ".
    Example: "1girl, hatsune miku, smile\nShe waves at the viewer." -> tags "1girl, hatsune miku, smile",
    caption "She waves at the viewer."
    """
    tag_lines, caption_lines = [], []
    for line in message.splitlines():
        line = line.strip()
        if not line:
            continue
        prefix = _PREFIX.match(line)
        if prefix:
            kind = _PREFIXES[prefix.group(1).lower()]
            line = line[prefix.end():].strip()
        else:
            kind = "caption" if _looks_like_caption(line) else "tags"
        if line:
            (tag_lines if kind == "tags" else caption_lines).append(line.strip(", "))
    return ", ".join(tag_lines), " ".join(caption_lines)


def _looks_like_caption(line: str) -> bool:
    if line.rstrip().endswith((".", "!", "?")):
        return True
    return any(len(piece.split()) > _WORDS_IN_A_TAG for piece in line.split(","))
