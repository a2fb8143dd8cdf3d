"""The logic of POST /v1/tipo and /v1/tipo/batch: build runners, drive them against the engine; and of
POST /v1/tipo/format (the ComfyUI 'TIPO Format' node: no model call).

A TIPO request is several model calls. `TipoServing.drive` loops `runner.next_call()` ->
`await engine.generate(...)` -> `runner.feed(text)`. Each HTTP request runs in its own asyncio task,
and a batch runs its runners with asyncio.gather, so the model calls of everything in flight reach
the engine together and vLLM batches them (continuous batching).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from fastapi import Request

from service.api.common import api_error_from, new_request_id, require_ready, run_admitted
from service.api.limits import ban_compiler, check_input_limits
from service.api.errors import ApiError
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
from service.engine.base import EngineError, PromptTooLongError
from service.settings import Settings
from service.tipo.constants import DEFAULT_LENGTH
from service.tipo.format import apply_format, resolve_format, unformatted
from service.tipo.parse import parse_output
from service.tipo.plan import plan_request
from service.tipo.profile import get_profile
from service.tipo.runner import TipoRequest, TipoResult, TipoRunner
from service.tipo.syntax import apply_weights, read_caption, read_tags
from service.tipo.tags import TagIndex, classify
from service.tipo.template import build_prompt


@dataclass
class Drive:
    """What driving one runner produced, besides its result."""

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
            except (EngineError, ValueError) as exc:  # the item fails, the batch goes on
                error = api_error_from(exc, self.state).body()["error"]
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
        try:
            outputs = format_outputs(body, profile, self.state.tag_index)
        except ValueError as exc:
            raise api_error_from(exc, self.state) from None
        return TipoFormatResponse(**outputs, profile=profile)

    # --- shared with the chat endpoint

    def make_runner(self, body: TipoRequestBody, seed: int) -> TipoRunner:
        """Validate what depends on settings and build the runner; input problems -> ApiError 422."""
        settings = self.state.settings
        check_input_limits(body, settings)
        core_request = to_core_request(body, profile=request_profile(body, settings), seed=seed)
        try:
            return TipoRunner(core_request, self.state.tag_index,
                              compile_pattern=ban_compiler(core_request, settings))
        except ValueError as exc:
            raise api_error_from(exc, self.state) from None

    async def run_one(self, runner: TipoRunner, body: TipoRequestBody, request_id: str, started: float,
                      queue_s: float) -> TipoResponse:
        drive = await self.drive(runner, request_id, started)
        result = runner.result()
        self.state.metrics.model_calls.observe(len(drive.calls))
        return to_response(
            result, body, drive,
            model=self.state.model_name,
            profile=request_profile(body, self.state.settings),
            queue_s=queue_s, total_s=time.perf_counter() - started,
        )

    async def drive(self, runner: TipoRunner, request_id: str, started: float) -> Drive:
        drive = Drive()
        while (call := runner.next_call()) is not None:
            call_started = time.perf_counter()
            try:
                completion = await self.state.gateway.generate(
                    call.prompt, call.sampling, f"{request_id}-{len(drive.calls)}", call.segments or None)
            except PromptTooLongError:
                if not drive.calls:
                    raise  # the user's own input is too long: 422
                runner.context_full()  # a retry or a later pass grew past the context: end with what we have
                continue
            call_ended = time.perf_counter()
            runner.feed(completion.text)
            drive.engine_s += call_ended - call_started
            drive.prompt_tokens += completion.prompt_tokens
            drive.completion_tokens += completion.completion_tokens
            drive.calls.append(ModelCallTrace(
                prompt=call.prompt,
                sampling=call.sampling.tipo_fields(),
                completion=completion.text,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                finish_reason=completion.finish_reason,
                start_s=round(call_started - started, 6),
                end_s=round(call_ended - started, 6),
            ))
        return drive


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


def to_core_request(body: TipoRequestBody, profile: str, seed: int | None) -> TipoRequest:
    return TipoRequest(
        tags=body.tags,
        nl_prompt=body.nl_prompt,
        width=body.width,
        height=body.height,
        tag_length=body.tag_length,
        nl_length=body.nl_length,
        ban_tags=body.ban_list(),
        format=body.format,
        seed=seed,  # None or 0: the runner draws one
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        max_new_tokens=body.max_new_tokens,
        operation=body.operation,
        profile=profile,
        frontend=body.frontend,
        backend=body.backend,
        aspect_ratio=body.aspect_ratio,
        no_formatting=body.no_formatting,
    )


def to_response(result: TipoResult, body: TipoRequestBody, drive: Drive, *, model: str, profile: str,
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
        usage=TipoUsage(model_calls=len(drive.calls), prompt_tokens=drive.prompt_tokens,
                        completion_tokens=drive.completion_tokens),
        timings=TipoTimings(started_at=round(time.time() - total_s, 6), queue_ms=round(queue_s * 1000, 3),
                            engine_ms=round(drive.engine_s * 1000, 3), total_ms=round(total_s * 1000, 3)),
        operation_output=({"full_output": result.full_map, "addon_output": result.addon_map}
                          if result.full_map is not None else None),
        trace=drive.calls if body.return_trace else None,
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
    """The 'TIPO Format' node's four strings: what `TipoRunner` answers for a single operation
    (`_operation_outputs`), computed from the operation's maps instead of a run.

    `prompt` formats full_output; `user_prompt` writes the user's own input (user_tags / user_nl) as the
    node does, with default lengths and no aspect ratio, parsed back and formatted the same way."""
    profile = get_profile(profile_name)
    addon = body.addon_output
    template = resolve_format(body.format, profile)
    tag_text = read_tags(addon.user_tags, profile)
    caption_text = read_caption(addon.user_nl, profile)
    nl = caption_text.text
    if not profile.blank_nl_counts_as_given and not nl.strip():
        nl = ""
    extras = "\n" + ", ".join(tag_text.extras) if tag_text.extras else ""  # fixed: extra networks re-appended

    plan = plan_request(classify(tag_text.tags, index), nl)
    document = build_prompt(plan.meta, plan.general, nl, "short_to_tag_to_long", DEFAULT_LENGTH, True,
                            gen_meta=True, raw_user_text=profile.raw_user_text)
    user_map = apply_weights(parse_output(document, index, profile), tag_text, caption_text, profile)
    return {
        "prompt": apply_format(body.full_output, template, profile) + extras,
        "user_prompt": apply_format(user_map, template, profile) + extras,
        "unformatted_prompt": unformatted(addon.user_tags, addon.tags, addon.nl, profile),
        "unformatted_user_prompt": addon.user_tags + caption_text.text,
    }
