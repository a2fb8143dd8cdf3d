"""The logic of POST /v1/tipo and /v1/tipo/batch: build runners, drive them against the engine; and of
POST /v1/tipo/format (the ComfyUI 'TIPO Format' node: no model call).

A TIPO request is several model calls. `TipoServing.call_model` loops `runner.next_call()` ->
`await engine.generate(...)` -> `runner.feed(text)`. Each HTTP request runs in its own asyncio task,
and a batch runs its runners with asyncio.gather, so the model calls of everything in flight reach
the engine together and vLLM batches them (continuous batching).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

from fastapi import Request

from service.api.common import new_request_id, require_ready, run_admitted
from service.api.errors import ApiError, api_error_for
from service.api.limits import ban_compiler, check_input_limits
from service.api.state import ServiceState
from service.api.tipo.protocol import (
    ModelCallTrace,
    TipoBatchBody,
    TipoBatchItem,
    TipoBatchResponse,
    TipoFormatBody,
    TipoFormatResponse,
    TipoRequestBody,
    TipoResponse,
    TipoTimings,
    TipoUsage,
)
from service.engine.base import PromptTooLongError
from service.settings import Settings
from service.tipo import frontends
from service.tipo.format import resolve_format
from service.tipo.profile import get_profile
from service.tipo.request import TipoRequest
from service.tipo.runner import TipoResult, TipoRunner
from service.tipo.tags import TagIndex


@dataclass
class CallLog:
    """The model calls of one request as the engine answered them (its trace, usage and engine time)."""

    calls: list[ModelCallTrace] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_s: float = 0.0


class TipoServing:
    def __init__(self, state: ServiceState):
        self.state = state

    # --- endpoints

    async def tipo(self, body: TipoRequestBody, request: Request) -> TipoResponse:
        require_ready(self.state)  # before any request work: the tag index may not be loaded yet
        runner = self.make_runner(body, seed=resolve_seed(body.seed))
        queued_at = time.perf_counter()

        async def work() -> TipoResponse:
            started = time.perf_counter()
            return await self.run_one(runner, body, new_request_id("tipo"), started, queue_s=started - queued_at)

        return await run_admitted(self.state, request, cost=1, timeout_s=body.timeout_s, work=work)

    async def batch(self, body: TipoBatchBody, request: Request) -> TipoBatchResponse:
        require_ready(self.state)
        total = len(body.requests) * body.n
        if total > self.state.settings.max_batch:
            raise ApiError(422, f"batch too large: {len(body.requests)} requests x n={body.n} = {total} runs; "
                           f"the server allows at most {self.state.settings.max_batch} (max_batch)", param="requests")
        # Build every runner first, so an invalid item fails the call before any model work.
        jobs = []
        for index, item in enumerate(body.requests):
            base_seed = resolve_seed(item.seed)  # the rule of a single request, once per item
            for variant in range(body.n):
                try:
                    runner = self.make_runner(item, seed=base_seed + variant)
                except ApiError as exc:
                    exc.message = f"requests[{index}]: {exc.message}"
                    exc.param = f"requests[{index}].{exc.param}" if exc.param else f"requests[{index}]"
                    raise
                jobs.append((index, variant, item, runner))
            await asyncio.sleep(0)  # a big batch must not hold the event loop while its runners are built
        queued_at = time.perf_counter()
        batch_id = new_request_id("tipobatch")

        async def run_item(index: int, variant: int, item: TipoRequestBody, runner: TipoRunner) -> TipoBatchItem:
            started = time.perf_counter()
            try:
                result = await self.run_one(runner, item, f"{batch_id}-{index}-{variant}", started,
                                            queue_s=started - queued_at)
            except Exception as exc:  # the item fails (its error as in an error body), the batch goes on
                error = api_error_for(exc).body()["error"]
                return TipoBatchItem(index=index, variant=variant, error=error)
            return TipoBatchItem(index=index, variant=variant, result=result)

        async def work() -> TipoBatchResponse:
            items = await asyncio.gather(*(run_item(*job) for job in jobs))
            return TipoBatchResponse(data=list(items))

        return await run_admitted(self.state, request, cost=len(jobs), timeout_s=body.timeout_s, work=work)

    async def format(self, body: TipoFormatBody) -> TipoFormatResponse:
        """The four strings of the ComfyUI 'TIPO Format' node from a single operation's two maps.

        Pure CPU work bounded by the input limits (no engine, no admission); it needs the tag index only,
        so it answers while the engine is busy or failed, but not before the tag lists are loaded."""
        if self.state.tag_index is None:
            raise ApiError(503, "the service is starting: the tag lists are not loaded yet",
                           type="service_unavailable", headers={"Retry-After": "5"})
        addon = body.addon_output
        # The user's text and the format go through the limits of a /v1/tipo request.
        as_request = TipoRequestBody(tags=addon.user_tags, nl_prompt=addon.user_nl, format=body.format,
                                     profile=body.profile)
        try:
            check_input_limits(as_request, self.state.settings)
        except ApiError as exc:
            if exc.param in ("tags", "nl_prompt"):
                exc.param = "addon_output.user_tags" if exc.param == "tags" else "addon_output.user_nl"
            raise
        check_operation_maps(body, self.state.settings)
        profile = request_profile(as_request, self.state.settings)
        outputs = format_outputs(body, profile, self.state.tag_index)  # an InputError is a 422 (errors.py)
        return TipoFormatResponse(**outputs, profile=profile)

    # --- shared with the chat endpoint

    def make_runner(self, body: TipoRequestBody, seed: int) -> TipoRunner:
        """Check the limits and build the runner: input errors (ApiError, InputError) before any model work."""
        settings = self.state.settings
        check_input_limits(body, settings)
        core_request = body.core_request(profile=request_profile(body, settings), seed=seed)
        return TipoRunner(core_request, self.state.tag_index, compile_pattern=ban_compiler(core_request, settings))

    async def run_one(self, runner: TipoRunner, body: TipoRequestBody, request_id: str, started: float,
                      queue_s: float) -> TipoResponse:
        call_log = await self.call_model(runner, request_id, started)
        result = runner.result()
        self.state.metrics.model_calls.observe(len(call_log.calls))
        return to_response(
            result, body, call_log,
            model=self.state.model_name,
            profile=request_profile(body, self.state.settings),
            queue_s=queue_s, total_s=time.perf_counter() - started,
        )

    async def call_model(self, runner: TipoRunner, request_id: str, started: float) -> CallLog:
        """Answer the runner's model calls with the engine until it is done."""
        call_log = CallLog()
        while (call := runner.next_call()) is not None:
            call_started = time.perf_counter()
            try:
                completion = await self.state.gateway.generate(
                    call.prompt, call.sampling, f"{request_id}-{len(call_log.calls)}", call.segments or None)
            except PromptTooLongError:
                if not call_log.calls:
                    raise  # the user's own input is too long: 422
                runner.context_full()  # a retry or a later pass grew past the context: end with what we have
                continue
            call_ended = time.perf_counter()
            runner.feed(completion.text)
            call_log.engine_s += call_ended - call_started
            call_log.prompt_tokens += completion.prompt_tokens
            call_log.completion_tokens += completion.completion_tokens
            call_log.calls.append(ModelCallTrace(
                prompt=call.prompt,
                sampling=call.sampling.tipo_fields(),
                completion=completion.text,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                finish_reason=completion.finish_reason,
                start_s=round(call_started - started, 6),
                end_s=round(call_ended - started, 6),
            ))
        return call_log


def request_profile(body: TipoRequestBody, settings: Settings) -> str:
    """The profile a request runs in: its own or the server's default, if the server allows it
    (allowed_profiles: an operator may keep every request in `fixed`, docs/PROFILES.md)."""
    profile = body.profile or settings.default_profile
    if profile not in settings.allowed_profile_names:
        allowed = " or ".join(repr(name) for name in settings.allowed_profile_names)
        raise ApiError(422, f"profile {profile!r} is not allowed on this server; use {allowed} "
                       "(allowed_profiles)", param="profile")
    return profile


def random_seed() -> int:
    return random.SystemRandom().randrange(1, 2**32)


def resolve_seed(seed: int | None) -> int:
    """A request's seed: absent, 0 or negative (-1 is "random" in the WebUI) draws one."""
    return seed if seed is not None and seed > 0 else random_seed()


def to_response(result: TipoResult, body: TipoRequestBody, call_log: CallLog, *, model: str, profile: str,
                queue_s: float, total_s: float) -> TipoResponse:
    return TipoResponse(
        prompt=result.prompt,
        user_prompt=result.user_prompt,
        unformatted_prompt=result.unformatted_prompt,
        unformatted_user_prompt=result.unformatted_user_prompt,
        tags=result.tags,
        new_tags=result.new_tags,
        captions=result.captions,
        seed=result.seed,
        model=model,
        profile=profile,
        usage=TipoUsage(model_calls=len(call_log.calls), prompt_tokens=call_log.prompt_tokens,
                        completion_tokens=call_log.completion_tokens),
        timings=TipoTimings(started_at=round(time.time() - total_s, 6), queue_ms=round(queue_s * 1000, 3),
                            engine_ms=round(call_log.engine_s * 1000, 3), total_ms=round(total_s * 1000, 3)),
        operation_output=({"full_output": result.full_map, "addon_output": result.addon_map}
                          if result.full_map is not None else None),
        trace=call_log.calls if body.return_trace else None,
    )


def check_operation_maps(body: TipoFormatBody, settings: Settings) -> None:
    """The maps an operation answers hold the user's input plus what the model added (up to ~72 tags and a
    caption): twice the input limits bounds them, and so the answer every format placeholder repeats."""
    maps = (("full_output", body.full_output), ("addon_output", {"tags": body.addon_output.tags,
                                                                  "nl": body.addon_output.nl}))
    for name, values in maps:
        entries = sum(len(v) if isinstance(v, list) else 1 for v in values.values())
        chars = sum(sum(map(len, v)) if isinstance(v, list) else len(v) for v in values.values())
        if entries > 2 * settings.max_tags or chars > 2 * (settings.max_tag_chars + settings.max_caption_chars):
            raise ApiError(422, f"{name} too large: {entries} entries, {chars} characters; the server allows at most "
                           f"{2 * settings.max_tags} entries and {2 * (settings.max_tag_chars + settings.max_caption_chars)}"
                           " characters (twice max_tags, and twice max_tag_chars + max_caption_chars)", param=name)


def format_outputs(body: TipoFormatBody, profile_name: str, index: TagIndex) -> dict[str, str]:
    """The 'TIPO Format' node's four strings: what a single-operation run answers (frontends.py),
    made from the operation's maps instead of a run."""
    profile = get_profile(profile_name)
    addon = body.addon_output
    user = frontends.read_input(TipoRequest(tags=addon.user_tags, nl_prompt=addon.user_nl), profile, index)
    outputs = frontends.operation_strings(user, body.full_output, addon.tags, addon.nl,
                                          resolve_format(body.format, profile), profile, index)
    return asdict(outputs)
