"""One TIPO request, run as the reference runs it: a generator that yields model calls, is sent each
completion, and returns the result.

    run = run_tipo(prepare(request, index))
    call = next(run)
    while True:
        try:
            call = run.send(engine_completion_text(call))
        except StopIteration as done:
            result = done.value
            break

`TipoRunner` wraps it as `next_call()` / `feed(text)` / `result()`, which the serving layer drives
against the engine. No I/O inside. The flow is the reference's (tipo-kgen 0.3.1 `tipo_runner` + the
z-tipo-extension front ends):

1. `prepare`: read the tag and caption boxes (frontends.py), classify the tags, plan the passes
   (docs/REFERENCE.md §3.3); every input error is raised here, before any model call;
2. `run_tipo`: per pass, up to 11 attempts (docs/REFERENCE.md §3.4): build the prompt, call the model,
   parse, post-process, stop when the length target is met, else continue from what was produced with
   seed + 1; carry tags and caption to the next pass;
3. `finish`: format the last pass's result as the front end does (frontends.py, docs/REFERENCE.md §4).

Randomness (docs/REFERENCE.md §2.5) comes from one `random.Random` per request, drawn in the reference's order:
the request seed seeds it, each pass draws its seed with randint(0, 2**32), post-processing shuffles.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field

from service.tipo import frontends
from service.tipo.constants import (
    CAPTION_KEYS,
    KGEN_MIN_P,
    MAX_RETRIES,
    MAX_SAME_OUTPUT,
    SEED_SPACE,
    WEBUI_SEED_MAX,
)
from service.tipo.format import addon_of, resolve_format, with_final_period
from service.tipo.parse import parse_output
from service.tipo.plan import (
    Operation,
    Plan,
    carry_over,
    general_from_tags_for_retry,
    plan_request,
    plan_single_operation,
)
from service.tipo.postprocess import BanList, meets_target, postprocess
from service.tipo.profile import Profile, get_profile
from service.tipo.request import TipoRequest
from service.tipo.sampling import Sampling
from service.tipo.tags import CLASSIFY_KEYS, TagIndex
from service.tipo.template import Segments, build_prompt_segments

@dataclass(frozen=True)
class ModelCall:
    prompt: str
    sampling: Sampling
    # The prompt as (text, is_template) parts (template.build_prompt_segments): engines tokenise the
    # content parts literally, so user text cannot become a marker token.
    segments: Segments = ()


@dataclass(frozen=True)
class CallRecord:
    prompt: str
    sampling: Sampling
    completion: str
    operation: Operation
    attempt: int


@dataclass
class TipoResult:
    prompt: str  # the formatted prompt (WebUI: its whole returned string)
    user_prompt: str  # the user's own input, formatted the same way, no model
    unformatted_prompt: str  # user tags, new tags, newline, caption
    unformatted_user_prompt: str  # user tags and caption text, concatenated
    tags: dict[str, list[str]]  # final tags by category (no weights)
    new_tags: list[str]  # tags the model added (not in the user's input, same category)
    captions: dict[str, str]  # "extended" (user NL continued) and "generated" (model-written)
    seed: int  # the seed that seeded the request's RNG
    calls: list[CallRecord] = field(default_factory=list)
    context_ends: int = 0  # passes ended because the next prompt did not fit the model's context
    full_map: dict | None = None  # single operation: the node's full output (weights applied)
    addon_map: dict | None = None  # single operation: the node's addon output


class RunnerStateError(RuntimeError):
    """next_call / feed / context_full / result called out of order."""


class _DidNotFit:
    """Sent to `run_tipo` instead of a completion: the engine cannot take the call (its prompt leaves no
    room in the model's context)."""


DID_NOT_FIT = _DidNotFit()


def choose_seed(request: TipoRequest) -> int:
    seed = int(request.seed or 0)
    if request.frontend == "webui":
        seed %= WEBUI_SEED_MAX
    # 0 means "random" in the reference (an unseeded draw of randint(0, 2**32)).
    return seed or secrets.randbelow(SEED_SPACE + 1)


@dataclass(frozen=True)
class PlannedRequest:
    """A request read, checked and planned: everything `run_tipo` needs."""

    request: TipoRequest
    profile: Profile
    index: TagIndex
    ban: BanList
    template: str
    seed: int
    user: frontends.UserInput
    plan: Plan
    user_prompt: str  # the ComfyUI node's user_prompt (computed before the model runs, as the node does)

    def sampling(self, seed: int) -> Sampling:
        request = self.request
        return Sampling(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=KGEN_MIN_P if request.frontend == "webui" else request.min_p,
            max_new_tokens=request.max_new_tokens,
            seed=seed,
        )

    def carried_caption(self, caption: str) -> str:
        """fixed: a caption fed back to the model ends its last sentence, so the model does not
        continue a sentence that was finished (kgen re-joins sentences without the final period)."""
        return caption if self.profile.lose_final_period else with_final_period(caption)


def prepare(request: TipoRequest, index: TagIndex, compile_pattern: Callable | None = None) -> PlannedRequest:
    """Read, check and plan a request. Input errors (`InputError`: unknown format, invalid ban regex, an
    input the reference crashes on in profile kgen) are raised here. `compile_pattern`: how ban entries
    are compiled (BanList.of; default re.compile)."""
    profile = get_profile(request.profile)
    ban = BanList.of(request.ban_tags, compile_pattern)
    template = resolve_format(request.format, profile)
    user = frontends.read_input(request, profile, index)
    if request.operation is not None:
        plan = plan_single_operation(user.user_map, user.nl, request.operation, tag_length=request.tag_length,
                                     nl_length=request.nl_length)
    else:
        wants_caption = (not user.nl and "<|extended|>" in template) or "<|generated|>" in template
        plan = plan_request(user.user_map, user.nl, extra_caption=wants_caption, tag_length=request.tag_length,
                            nl_length=request.nl_length)
    plan.meta["aspect_ratio"] = f"{request.ratio:.1f}"
    # The ComfyUI node formats the user's input before running the model (so it fails first).
    user_prompt = ""
    if request.frontend == "comfy" and request.operation is None:
        user_prompt = frontends.user_prompt(user, plan.meta, plan.general, request.tag_length, template, profile,
                                            index)
    return PlannedRequest(request, profile, index, ban, template, choose_seed(request), user, plan, user_prompt)


def run_tipo(planned: PlannedRequest) -> Generator[ModelCall, str | _DidNotFit, TipoResult]:
    """Yield each model call; be sent its completion (only what the model appended) or DID_NOT_FIT;
    return the result."""
    request, profile, plan = planned.request, planned.profile, planned.plan
    rng = random.Random(planned.seed)
    calls: list[CallRecord] = []
    context_ends = 0  # passes ended because the next prompt did not fit the context
    general, nl = plan.general, plan.nl  # what the current pass starts from
    parsed: dict = {}  # the latest answer, parsed and post-processed

    for number, op in enumerate(plan.operations):
        op_seed = rng.randint(0, SEED_SPACE)
        attempt_general, attempt_nl = general, nl
        seen: set[str] = set()
        same_in_a_row = 0
        for attempt in range(MAX_RETRIES + 1):
            segments = build_prompt_segments(plan.meta, attempt_general, attempt_nl, op.mode, op.length, op.expand,
                                             raw_user_text=profile.raw_user_text)
            prompt = "".join(text for text, _ in segments)
            if request.backend == "transformers":
                rng.seed((op_seed + attempt) % SEED_SPACE)  # transformers.set_seed re-seeds Python's random
            call = ModelCall(prompt, planned.sampling(op_seed + attempt), segments)
            completion = yield call
            if completion is DID_NOT_FIT:
                # Only retries and later passes outgrow the user's input: end the pass with what it has,
                # as if its target were met (the reference would send a prompt a 1k context cannot take).
                context_ends += 1
                break
            calls.append(CallRecord(prompt, call.sampling, completion, op, attempt))

            if request.backend == "transformers":
                text = "<s> " + prompt + completion + "</s>"
            else:
                text = prompt + completion  # llama.cpp: prompt + completion
            parsed = parse_output(text, planned.index, profile)
            parsed = postprocess(parsed, attempt_general, attempt_nl, op.mode, op.length, planned.ban, rng, profile)
            if meets_target(parsed, op.target, op.length):
                break
            same_in_a_row = same_in_a_row + 1 if text in seen else 0
            seen.add(text)
            # Iterative growth: the next attempt continues from everything produced so far.
            if profile.caption_retry_discards or op.expand:
                next_nl = parsed.get("extended", "") or parsed.get("generated", "") or attempt_nl
            else:
                # fixed: a fill-mode retry re-rolls the caption instead of re-sending it (which the
                # parser would ignore, REFERENCE.md §7-14).
                next_nl = parsed.get("extended", "") or attempt_nl
            attempt_nl = planned.carried_caption(next_nl.strip())
            attempt_general = general_from_tags_for_retry(parsed)
            if same_in_a_row >= MAX_SAME_OUTPUT:
                break

        if number < len(plan.operations) - 1:
            general, nl = carry_over(parsed, nl)
            nl = planned.carried_caption(nl)

    return finish(planned, parsed, calls, context_ends)


def finish(planned: PlannedRequest, final_map: dict, calls: list[CallRecord], context_ends: int = 0) -> TipoResult:
    """The result: the last pass's tags and captions, written as the request's front end does."""
    request, profile, user = planned.request, planned.profile, planned.user
    final_map = dict(final_map)
    if not profile.lose_final_period:
        for key in CAPTION_KEYS:
            if isinstance(final_map.get(key), str):
                final_map[key] = with_final_period(final_map[key])
    addon = addon_of(final_map, user.user_map, profile)
    full_map = addon_map = None
    if request.frontend == "webui":
        outputs = frontends.webui_outputs(user, request, final_map, addon.tags, addon.nl, planned.template, profile)
    elif request.operation is not None:
        full_map, addon_map = frontends.operation_maps(user, request, final_map, addon.tags, addon.nl, profile)
        outputs = frontends.operation_strings(user, full_map, addon_map["tags"], addon_map["nl"], planned.template,
                                              profile, planned.index)
    else:
        outputs = frontends.node_outputs(user, final_map, addon.tags, addon.nl, planned.template, profile,
                                         planned.user_prompt)
    return TipoResult(
        **asdict(outputs),
        tags={category: list(final_map.get(category, [])) for category in CLASSIFY_KEYS},
        new_tags=list(addon.tags),
        captions={key: final_map.get(key, "") for key in CAPTION_KEYS},
        seed=planned.seed,
        calls=calls,
        context_ends=context_ends,
        full_map=full_map,
        addon_map=addon_map,
    )


class TipoRunner:
    """`run_tipo` behind a pull interface: ask `next_call()` (it repeats until answered), answer with
    `feed(completion)` or `context_full()`, until `next_call()` is None; then `result()`.

    Construction reads and checks the request (`InputError`)."""

    def __init__(self, request: TipoRequest, index: TagIndex, compile_pattern: Callable | None = None):
        planned = prepare(request, index, compile_pattern)
        self.seed = planned.seed
        self._run = run_tipo(planned)
        self._fed = 0
        self._pending: ModelCall | None = None
        self._asked = False  # next_call() handed out the pending call: it may be answered
        self._result: TipoResult | None = None
        self._advance(None)

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def context_ends(self) -> int:
        return self.result().context_ends

    def next_call(self) -> ModelCall | None:
        """The next model call, or None when the request is complete. Repeats until fed."""
        self._asked = self._pending is not None
        return self._pending

    def feed(self, completion: str) -> None:
        """The text the model appended to the pending call's prompt."""
        if not self._asked:
            raise RunnerStateError("feed() without a pending call (call next_call() first)")
        self._fed += 1
        self._advance(completion)

    def context_full(self) -> None:
        """The engine cannot take the pending call. The first call holds nothing but the user's input:
        there is nothing to end the pass with (RunnerStateError)."""
        if not self._asked:
            raise RunnerStateError("context_full() without a pending call")
        if not self._fed:
            raise RunnerStateError("the first model call does not fit the context: the input is too long")
        self._advance(DID_NOT_FIT)

    def result(self) -> TipoResult:
        if self._result is None:
            raise RunnerStateError("the request is not complete (next_call() is not None yet)")
        return self._result

    def _advance(self, answer) -> None:
        self._asked = False
        try:
            self._pending = self._run.send(answer)
        except StopIteration as finished:
            self._pending, self._result = None, finished.value
