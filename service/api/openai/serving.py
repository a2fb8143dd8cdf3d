"""The logic of the OpenAI-compatible endpoints.

/v1/completions  raw completion of prompts (TIPO template text, or token ids) by the engine, as vLLM's
                 own server does it: the engine's finish reasons and token counts, stop strings and
                 ids, logprobs, echo, penalties, ignore_eos, min_tokens; sampling defaults from the
                 model's generation_config.json. `stream: true` sends each piece as the engine makes it.
/v1/chat/completions  the last user message is a partial prompt, the reply is the optimized prompt
                 (a full TIPO request, see `split_partial_prompt` for how tags and a caption are told
                 apart). A stream sends the role chunk as soon as the request is admitted, the reply
                 when the optimization ends.
Errors follow OpenAI's: 400 `invalid_request_error` naming the field, 404 for an unknown model.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import contextmanager

from fastapi import Request
from pydantic import ValidationError

from service.api.common import GuardedStream, new_request_id, require_ready, run_admitted, sse, stream_admitted
from service.api.errors import ApiError, api_error_for, validation_message
from service.api.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatReply,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    LogprobsResult,
    ModelCard,
    ModelList,
    Usage,
)
from service.api.state import ServiceState
from service.api.tipo.protocol import TipoPromptOptions, TipoRequestBody
from service.api.tipo.serving import TipoServing, random_seed, resolve_seed
from service.engine.base import Completion, Prompt, TokenLogprob
from service.tipo.sampling import Sampling

# Sampling of a raw completion whose request and model name none (OpenAI's and vLLM's neutral values).
NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
FALLBACK_MAX_TOKENS = 512  # when the prompt's length cannot be known (a remote engine without tokenizer)
# No token of a LLaMA vocabulary spans more than 16 characters: a text prompt longer than this many
# characters per context token cannot fit, and is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 32


class OpenAIServing:
    def __init__(self, state: ServiceState):
        self.state = state

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.state.model_name, created=self.state.created)])

    def check_model(self, model: str | None) -> None:
        if model and model != self.state.model_name:
            raise ApiError(404, f"The model `{model}` does not exist; this server serves "
                           f"`{self.state.model_name}` (GET /v1/models)", type="not_found_error",
                           param="model", code="model_not_found")

    # --- /v1/completions

    async def completions(self, body: CompletionRequest, request: Request) -> CompletionResponse | GuardedStream:
        with openai_errors():
            self.check_model(body.model)
            refuse_unsupported_completion(body)
            prompts = completion_prompts(body.prompt)
            count = len(prompts) * body.n
            if count > self.state.settings.max_batch:
                raise ApiError(400, f"too many completions in one request: {len(prompts)} prompt(s) x n={body.n} = "
                               f"{count}; the server allows at most {self.state.settings.max_batch} (max_batch)",
                               param="prompt" if len(prompts) > 1 else "n")
            require_ready(self.state)
            defaults = {**NEUTRAL_SAMPLING, **self.state.engine.sampling_defaults()}
            # Choice i*n + j completes prompt i with seed + j (OpenAI's ordering of choices).
            jobs = []
            for i, prompt in enumerate(prompts):
                max_tokens = self.max_tokens_for(prompt, body.max_tokens, defaults)
                jobs += [(i * body.n + j, prompt, self.completion_sampling(body, j, max_tokens, defaults))
                         for j in range(body.n)]
                await asyncio.sleep(0)  # counting a prompt's tokens takes up to ~5 ms: one prompt per loop turn
            check_logprobs_budget(body, jobs)
            request_id = new_request_id("cmpl")
            if body.stream:
                return await self.stream_completions(body, request, request_id, jobs)

            async def work() -> list[Completion]:
                return await asyncio.gather(*(self.state.gateway.generate(prompt, sampling, f"{request_id}-{index}")
                                              for index, prompt, sampling in jobs))

            completions = await run_admitted(self.state, request, cost=len(jobs), timeout_s=None, work=work)
        choices = []
        for (index, prompt, _), completion in zip(jobs, completions):
            prefix = prompt if body.echo else ""
            choices.append(CompletionChoice(
                index=index, text=prefix + completion.text, finish_reason=completion.finish_reason,
                logprobs=logprobs_result(completion.logprobs, len(prefix)) if body.logprobs is not None else None))
        # A prompt counts once however many choices complete it (n), as in vLLM's server.
        prompt_tokens = sum(c.prompt_tokens for (index, _, _), c in zip(jobs, completions) if index % body.n == 0)
        completion_tokens = sum(c.completion_tokens for c in completions)
        return CompletionResponse(
            id=request_id, created=int(time.time()), model=self.state.model_name, choices=choices,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens),
        )

    def max_tokens_for(self, prompt: Prompt, asked: int | None, defaults: dict) -> int:
        """The token budget of one prompt: what was asked, if prompt + that fits the context (else 400);
        absent: the model's max_new_tokens default, capped by what the context leaves (as vLLM)."""
        context = self.state.engine.max_model_len
        if context is None:
            return asked or int(defaults.get("max_new_tokens", FALLBACK_MAX_TOKENS))
        if isinstance(prompt, str) and len(prompt) > context * MAX_CHARS_PER_TOKEN:
            raise ApiError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                           f"{len(prompt)} characters, more than that many tokens can hold. Shorten the prompt.",
                           param="prompt", code="context_length_exceeded")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else self.state.engine.count_tokens(prompt)
        if prompt_tokens == 0 and isinstance(prompt, str):  # the engine cannot count (no local tokenizer)
            return asked or int(defaults.get("max_new_tokens", FALLBACK_MAX_TOKENS))
        room = context - prompt_tokens
        if asked is not None and asked > room or room < 1:
            raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                           f"{prompt_tokens + (asked or 1)} tokens ({prompt_tokens} in the prompt, {asked or 1} in "
                           f"the completion). Please reduce the prompt or max_tokens.",
                           param="max_tokens" if room >= 1 else "prompt", code="context_length_exceeded")
        return asked or min(room, int(defaults.get("max_new_tokens", room)))

    @staticmethod
    def completion_sampling(body: CompletionRequest, choice: int, max_tokens: int, defaults: dict) -> Sampling:
        def pick(name: str):
            value = getattr(body, name)
            return defaults[name] if value is None else value

        stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        return Sampling(
            temperature=pick("temperature"), top_p=pick("top_p"), top_k=pick("top_k"), min_p=pick("min_p"),
            repetition_penalty=pick("repetition_penalty"), max_new_tokens=max_tokens,
            seed=choice_seed(body.seed, choice), stop=tuple(s for s in stops if s),
            stop_token_ids=tuple(body.stop_token_ids or ()), presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, min_tokens=body.min_tokens, ignore_eos=body.ignore_eos,
            logprobs=body.logprobs, skip_special_tokens=body.skip_special_tokens,
            spaces_between_special_tokens=body.spaces_between_special_tokens,
        )

    async def stream_completions(self, body: CompletionRequest, request: Request, request_id: str,
                                 jobs: list[tuple[int, Prompt, Sampling]]) -> GuardedStream:
        state = self.state
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        want_logprobs = body.logprobs is not None

        def chunk(index: int, text: str, finish_reason: str | None, logprobs: LogprobsResult | None = None) -> str:
            return sse({"id": request_id, "object": "text_completion", "created": created,
                        "model": state.model_name,
                        "choices": [{"index": index, "text": text,
                                     "logprobs": logprobs.model_dump() if logprobs else None,
                                     "finish_reason": finish_reason}]})

        async def events() -> AsyncIterator[str]:
            offsets = {index: 0 for index, _, _ in jobs}
            if body.echo:
                for index, prompt, _ in jobs:
                    offsets[index] = len(prompt)
                    yield chunk(index, prompt, None)
            prompt_tokens = completion_tokens = 0
            async for index, piece in merged_streams(state, request_id, jobs):
                prompt_tokens += piece.prompt_tokens if index % body.n == 0 else 0  # once per prompt, as above
                completion_tokens += piece.completion_tokens
                if piece.text or piece.finish_reason is not None:
                    logprobs = logprobs_result(piece.logprobs, offsets[index]) if want_logprobs else None
                    offsets[index] += len(piece.text)
                    yield chunk(index, piece.text, piece.finish_reason, logprobs)
            if include_usage:
                yield sse({"id": request_id, "object": "text_completion", "created": created,
                           "model": state.model_name, "choices": [],
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}})

        return await stream_admitted(state, request, cost=len(jobs), timeout_s=None, events=events)

    # --- /v1/chat/completions

    async def chat(self, body: ChatCompletionRequest, request: Request) -> ChatCompletionResponse | GuardedStream:
        with openai_errors():
            self.check_model(body.model)
            refuse_unsupported_chat(body)
            if body.n != 1:
                raise ApiError(400, "n must be 1 for chat completions (use POST /v1/tipo/batch for variants)",
                               param="n")
            user_messages = [m for m in body.messages if m.role == "user"]
            if not user_messages:
                raise ApiError(400, "messages must contain a user message (the partial prompt)", param="messages")
            tags, caption = split_partial_prompt(user_messages[-1].text())
            try:
                tipo_body = self.tipo_body(body, tags, caption)
            except ValidationError as exc:
                message, param = validation_message(list(exc.errors()))
                raise ApiError(400, message, param=param) from None
            require_ready(self.state)
            tipo = TipoServing(self.state)
            runner = tipo.make_runner(tipo_body, seed=resolve_seed(tipo_body.seed))
            request_id = new_request_id("chatcmpl")
            created = int(time.time())

            async def work():
                return await tipo.run_one(runner, tipo_body, request_id, time.perf_counter(), queue_s=0.0)

            if body.stream:
                return await self.stream_chat(body, request, request_id, created, work)
            result = await run_admitted(self.state, request, cost=1, timeout_s=None, work=work)
        return ChatCompletionResponse(
            id=request_id, created=created, model=self.state.model_name,
            choices=[ChatChoice(index=0, message=ChatReply(content=result.prompt))], usage=chat_usage(result))

    async def stream_chat(self, body: ChatCompletionRequest, request: Request, request_id: str, created: int,
                          work) -> GuardedStream:
        def chunk(delta: dict, finish_reason: str | None) -> str:
            return sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                        "model": self.state.model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)  # at once: the client sees the answer start
            result = await work()
            yield chunk({"content": result.prompt}, None)
            yield chunk({}, "stop")
            if body.stream_options and body.stream_options.include_usage:
                yield sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                           "model": self.state.model_name, "choices": [], "usage": chat_usage(result).model_dump()})

        return await stream_admitted(self.state, request, cost=1, timeout_s=None, events=events)

    @staticmethod
    def tipo_body(body: ChatCompletionRequest, tags: str, caption: str) -> TipoRequestBody:
        """The TIPO request of a chat message; sampling the client left out keeps TIPO's defaults."""
        sampling = {name: getattr(body, name) for name in ("temperature", "top_p", "min_p")
                    if getattr(body, name) is not None}
        if body.top_k is not None:
            sampling["top_k"] = max(body.top_k, 0)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return TipoRequestBody(
            tags=tags, nl_prompt=caption, **body.model_dump(include=set(TipoPromptOptions.model_fields)),
            seed=None if body.seed is None or body.seed < 0 else body.seed,
            **sampling, **({"max_new_tokens": min(max_tokens, 1024)} if max_tokens else {}),
        )


def choice_seed(seed: int | None, choice: int) -> int:
    return random_seed() if seed is None or seed < 0 else seed + choice


def chat_usage(result) -> Usage:
    """A chat answer's usage: every model call of the optimization, summed."""
    return Usage(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                 total_tokens=result.usage.prompt_tokens + result.usage.completion_tokens)


def completion_prompts(prompt: str | list) -> list[Prompt]:
    """The prompts of a completions request: one text or token-id list, or a list of them."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    if any(isinstance(item, list) and not item for item in prompt):
        raise ApiError(400, "a token-id prompt must not be empty", param="prompt")
    return list(prompt)


def logprobs_result(entries: list[TokenLogprob] | None, offset: int) -> LogprobsResult:
    """OpenAI's logprobs object; `offset`: where the completion starts in the choice's text."""
    result = LogprobsResult()
    for entry in entries or ():
        result.tokens.append(entry.token)
        result.token_logprobs.append(entry.logprob)
        result.top_logprobs.append(entry.top)
        result.text_offset.append(offset)
        offset += len(entry.token)
    return result


# Logprob entries one answer may carry (choices x tokens x (alternatives + 1)): each is built on the
# event loop and sent as JSON (~30 bytes), so this bounds both (~2 MB, tens of ms).
MAX_LOGPROB_ENTRIES = 65_536


def check_logprobs_budget(body: CompletionRequest, jobs: list[tuple[int, Prompt, Sampling]]) -> None:
    if body.logprobs is None:
        return
    entries = sum(sampling.max_new_tokens for _, _, sampling in jobs) * (body.logprobs + 1)
    if entries > MAX_LOGPROB_ENTRIES:
        raise ApiError(400, f"logprobs={body.logprobs} over {len(jobs)} choice(s) of up to "
                       f"{sum(s.max_new_tokens for _, _, s in jobs)} tokens in all is {entries} entries; the server "
                       f"returns at most {MAX_LOGPROB_ENTRIES} (lower logprobs, max_tokens or n)",
                       param="logprobs", code="invalid_value")


def refuse_unsupported_completion(body: CompletionRequest) -> None:
    if body.suffix:
        raise unsupported("suffix", "suffix is not supported (TIPO models complete text, they do not insert)")
    if (body.best_of or 1) > 1:
        raise unsupported("best_of", "best_of > 1 is not supported; use n and pick on the client")
    if body.logit_bias:
        raise unsupported("logit_bias", "logit_bias is not supported")
    if body.echo and body.logprobs is not None:
        raise unsupported("echo", "echo with logprobs (the prompt's logprobs) is not supported; drop one of them")
    if body.echo and not isinstance(body.prompt, str) and any(not isinstance(p, str) for p in body.prompt):
        raise unsupported("echo", "echo needs text prompts (token-id prompts are not decoded back)")


def refuse_unsupported_chat(body: ChatCompletionRequest) -> None:
    """A chat answer is a TIPO optimization (several model calls and a formatter): what shapes the
    text of one model call cannot apply to it."""
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    checks = (
        ("stop", any(stops), "stop sequences"),
        ("presence_penalty", body.presence_penalty, "presence_penalty (repetition_penalty applies)"),
        ("frequency_penalty", body.frequency_penalty, "frequency_penalty (repetition_penalty applies)"),
        ("logit_bias", body.logit_bias, "logit_bias"),
        ("logprobs", body.logprobs or body.top_logprobs, "logprobs"),
        ("response_format", body.response_format and body.response_format.get("type", "text") != "text",
         "response_format other than text (the reply is a prompt in the requested format)"),
        ("tools", body.tools or body.functions, "tools and functions"),
        ("tool_choice", body.tool_choice not in (None, "none") or body.function_call not in (None, "none"),
         "tool_choice"),
    )
    for param, present, what in checks:
        if present:
            raise unsupported(param, f"{what}: not supported by the chat endpoint, whose reply is a TIPO "
                              "optimization; use /v1/completions for raw model text")


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


@contextmanager
def openai_errors():
    """OpenAI's clients expect 400 for a bad request: the 422s of the shared paths become 400s."""
    try:
        yield
    except Exception as exc:
        error = api_error_for(exc)
        if error.status == 422:
            error.status = 400
        raise error from None


async def merged_streams(
    state: ServiceState, request_id: str, jobs: list[tuple[int, Prompt, Sampling]]
) -> AsyncIterator[tuple[int, Completion]]:
    """Run the choices' streams concurrently; yield (choice index, piece) as pieces come."""
    queue: asyncio.Queue = asyncio.Queue()
    ended = object()

    async def pump(index: int, prompt: Prompt, sampling: Sampling) -> None:
        try:
            async for piece in state.gateway.generate_stream(prompt, sampling, f"{request_id}-{index}"):
                await queue.put((index, piece))
            await queue.put((index, ended))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(*job)) for job in jobs]
    try:
        running = len(tasks)
        while running:
            index, piece = await queue.get()
            if isinstance(piece, Exception):
                raise piece
            if piece is ended:
                running -= 1
            else:
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
