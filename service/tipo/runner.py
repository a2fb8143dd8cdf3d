"""The request runner: a pure state machine from a TIPO request to model calls to the final prompt.

    runner = TipoRunner(request, index)
    while (call := runner.next_call()) is not None:
        runner.feed(engine_completion_text(call.prompt, call.sampling))
    result = runner.result()

No I/O and no engine inside, so the serving layer can drive many runners against one engine at once.
The flow is the reference's (tipo-kgen 0.3.1 `tipo_runner` + the z-tipo-extension front ends):

1. read the tag and caption boxes (prompt syntax), classify the tags, plan the passes (docs/REFERENCE.md §3.3);
2. per pass, up to 11 attempts (docs/REFERENCE.md §3.4): build the prompt, call the model, parse, post-process,
   stop when the length target is met, else continue from what was produced with seed + 1;
3. carry tags and caption to the next pass; format the last pass's result (docs/REFERENCE.md §4).

Randomness (docs/REFERENCE.md §2.5) comes from one `random.Random` per request, drawn in the reference's order:
the request seed seeds it, each pass draws its seed with randint(0, 2**32), post-processing shuffles.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Literal

from service.tipo import webui
from service.tipo.constants import (
    CAPTION_KEYS,
    DEFAULT_FORMAT_NAME,
    DEFAULT_LENGTH,
    KGEN_MIN_P,
    LENGTHS,
    MAX_RETRIES,
    MAX_SAME_OUTPUT,
    SEED_SPACE,
    WEBUI_SEED_MAX,
)
from service.tipo.format import (
    NodeOutputs,
    addon_of,
    apply_format,
    resolve_format,
    unformatted,
    with_final_period,
)
from service.tipo.parse import parse_output
from service.tipo.plan import (
    Operation,
    Plan,
    carry_over,
    general_from_tags_for_retry,
    plan_request,
    plan_single_operation,
)
from service.tipo.postprocess import BanList, meets_target, postprocess, split_ban_text
from service.tipo.profile import Profile, get_profile
from service.tipo.sampling import Sampling
from service.tipo.syntax import CaptionText, TagText, apply_weights, read_caption, read_tags
from service.tipo.tags import CLASSIFY_KEYS, TagIndex, classify
from service.tipo.template import Segments, build_prompt, build_prompt_segments


@dataclass(frozen=True)
class TipoRequest:
    """One request. Defaults are the ComfyUI TIPO node's widget defaults."""

    tags: str = ""
    nl_prompt: str = ""
    width: int = 1024
    height: int = 1024
    tag_length: str = "long"
    nl_length: str = "long"
    ban_tags: tuple[str, ...] = ()  # entries (a ban text box string is split on commas)
    format: str = DEFAULT_FORMAT_NAME  # a preset name or a template
    seed: int | None = 1234  # 0 or None: a random seed (reported in the result)
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80
    min_p: float = 0.05
    max_new_tokens: int = 512
    operation: str | None = None  # a single operation (SINGLE_OPERATIONS) instead of the full plan
    profile: str = "fixed"
    # Which reference front end to reproduce: the ComfyUI node (four strings) or the SD-WebUI script
    # (one string; min_p not passed, so kgen's 0.1; BREAK kept; extra networks re-appended).
    frontend: Literal["comfy", "webui"] = "comfy"
    # Reference backend emulation, only to replay vectors recorded with transformers: the model text
    # is "<s> " + prompt + completion + "</s>" and the RNG is re-seeded before each call.
    backend: Literal["llama_cpp", "transformers"] = "llama_cpp"
    aspect_ratio: float | None = None  # overrides width / height (the WebUI passes the ratio)
    no_formatting: bool = False  # WebUI "No formatting": return the unformatted prompt


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
    full_map: dict | None = None  # single operation: the node's full output (weights applied)
    addon_map: dict | None = None  # single operation: the node's addon output


class RunnerStateError(RuntimeError):
    """next_call / feed / result called out of order."""


def choose_seed(request: TipoRequest) -> int:
    seed = int(request.seed or 0)
    if request.frontend == "webui":
        seed %= WEBUI_SEED_MAX
    # 0 means "random" in the reference (an unseeded draw of randint(0, 2**32)).
    return seed or secrets.randbelow(SEED_SPACE + 1)


class TipoRunner:
    """Drives one request: ask `next_call()`, answer with `feed(completion)`, until it returns None.

    Construction reads and validates the request (ValueError, InvalidBanTag, ReferenceFailure);
    `feed` may raise ReferenceFailure in the kgen profile where the reference crashes mid-run.
    """

    def __init__(self, request: TipoRequest, index: TagIndex, compile_pattern=None):
        # compile_pattern: how ban entries are compiled (BanList.of; default re.compile).
        if request.frontend not in ("comfy", "webui"):
            raise ValueError(f"unknown frontend {request.frontend!r}")
        if request.backend not in ("llama_cpp", "transformers"):
            raise ValueError(f"unknown backend {request.backend!r}")
        if request.operation is not None and request.frontend != "comfy":
            raise ValueError("single operations exist only in the ComfyUI front end")
        self.request = request
        self.profile: Profile = get_profile(request.profile)
        self.index = index
        # Entries as the front ends split them (a plain string is split the same way).
        ban_entries = split_ban_text(request.ban_tags) if isinstance(request.ban_tags, str) else request.ban_tags
        self.ban = BanList.of((entry.strip() for entry in ban_entries if entry.strip()), compile_pattern)
        self.template = resolve_format(request.format, self.profile)
        self.seed = choose_seed(request)
        self._rng = random.Random(self.seed)
        self.calls: list[CallRecord] = []
        self.context_ends = 0  # passes ended because the next prompt did not fit (context_full)

        self._read_input()
        self._plan = self._make_plan()
        # The ComfyUI node formats the user's input before running the model (so it fails first).
        self._user_prompt_text = ""
        if request.frontend == "comfy" and request.operation is None:
            self._user_prompt_text = self._user_prompt(self._plan.meta, self._plan.general, self.tag_length)

        self._operation_index = 0
        self._general = self._plan.general  # input of the current operation
        self._nl = self._plan.nl
        self._pending: ModelCall | None = None
        self._parsed: dict | None = None
        self._result: TipoResult | None = None
        if self._plan.operations:
            self._start_operation()
        else:
            self._finish({})  # nothing to ask the model (possible with the planner's flags)

    # --- input ------------------------------------------------------------------------------------

    def _read_input(self) -> None:
        request, profile = self.request, self.profile
        self.extras_suffix = ""  # WebUI: extra networks re-appended at the end
        if request.frontend == "webui" and profile.naive_prompt_syntax:
            tag_source = request.tags.strip()
            tag_source, self.extras_suffix = webui.cut_extra_networks(tag_source)
            self.user_tags_text = tag_source
            self.webui_tags = webui.read_webui_tags(tag_source)
            self.tag_text = TagText(self.webui_tags.tags, self.webui_tags.weights, [])
        else:
            self.user_tags_text = request.tags.strip() if request.frontend == "webui" else request.tags
            self.tag_text = read_tags(self.user_tags_text, profile)
            self.webui_tags = None
        self.caption_text: CaptionText = read_caption(request.nl_prompt, profile)
        nl = self.caption_text.text
        if not profile.blank_nl_counts_as_given and not nl.strip():
            nl = ""
        self.nl = nl
        self.user_map = classify(self.tag_text.tags, self.index)

    def _make_plan(self) -> Plan:
        request = self.request
        tag_length = request.tag_length.replace(" ", "_")
        nl_length = request.nl_length.replace(" ", "_")
        for name, value in (("tag_length", tag_length), ("nl_length", nl_length)):
            if value not in LENGTHS:
                raise ValueError(f"unknown {name} {value!r}; use one of {list(LENGTHS)}")
        self.tag_length = tag_length
        if request.operation is not None:
            plan = plan_single_operation(
                self.user_map, self.nl, request.operation, tag_length=tag_length, nl_length=nl_length
            )
        else:
            wants_caption = (not self.nl and "<|extended|>" in self.template) or "<|generated|>" in self.template
            plan = plan_request(
                self.user_map, self.nl, extra_caption=wants_caption, tag_length=tag_length, nl_length=nl_length
            )
        plan.meta["aspect_ratio"] = f"{self._aspect_ratio():.1f}"
        return plan

    def _aspect_ratio(self) -> float:
        if self.request.aspect_ratio is not None:
            return self.request.aspect_ratio
        if self.request.height <= 0:
            raise ValueError("height must be positive")
        return self.request.width / self.request.height

    def _user_prompt(self, meta: dict, general: str, length: str) -> str:
        """The node's user_prompt: the user's own input written as a TIPO document (no model),
        parsed back and formatted like the result."""
        document = build_prompt(meta, general, self.nl, "short_to_tag_to_long", length, True, gen_meta=True,
                                raw_user_text=self.profile.raw_user_text)
        user_map = parse_output(document, self.index, self.profile)
        weighted = apply_weights(user_map, self.tag_text, self.caption_text, self.profile)
        return self._with_extras(apply_format(weighted, self.template, self.profile))

    def _with_extras(self, prompt: str) -> str:
        """fixed: extra networks and prompt-editing tokens the user wrote are re-appended verbatim."""
        if not self.tag_text.extras:
            return prompt
        return prompt + "\n" + ", ".join(self.tag_text.extras)

    # --- the state machine --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def operation(self) -> Operation:
        return self._plan.operations[self._operation_index]

    def _start_operation(self) -> None:
        self._op_seed = self._rng.randint(0, SEED_SPACE)
        self._attempt = 0
        self._seen_outputs: set[str] = set()
        self._same_output_count = 0
        self._attempt_general = self._general
        self._attempt_nl = self._nl

    def next_call(self) -> ModelCall | None:
        """The next model call, or None when the request is complete. Repeats until fed."""
        if self.done:
            return None
        if self._pending is None:
            op = self.operation
            segments = build_prompt_segments(
                self._plan.meta, self._attempt_general, self._attempt_nl, op.mode, op.length, op.expand,
                raw_user_text=self.profile.raw_user_text,
            )
            prompt = "".join(text for text, _ in segments)
            model_seed = self._op_seed + self._attempt
            if self.request.backend == "transformers":
                self._rng.seed(model_seed % SEED_SPACE)  # transformers.set_seed re-seeds Python's random
            self._pending = ModelCall(prompt, self._sampling(model_seed), segments)
        return self._pending

    def _sampling(self, seed: int) -> Sampling:
        request = self.request
        return Sampling(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=KGEN_MIN_P if request.frontend == "webui" else request.min_p,
            max_new_tokens=request.max_new_tokens,
            seed=seed,
        )

    def feed(self, completion: str) -> None:
        """The text the model appended to the pending call's prompt."""
        call = self._pending
        if call is None:
            raise RunnerStateError("feed() without a pending call (call next_call() first)")
        self._pending = None
        op = self.operation
        self.calls.append(CallRecord(call.prompt, call.sampling, completion, op, self._attempt))

        if self.request.backend == "transformers":
            text = "<s> " + call.prompt + completion + "</s>"
        else:
            text = call.prompt + completion  # llama.cpp: prompt + completion
        parsed = parse_output(text, self.index, self.profile)
        parsed = postprocess(
            parsed, self._attempt_general, self._attempt_nl, op.mode, op.length, self.ban, self._rng, self.profile
        )
        self._parsed = parsed

        if meets_target(parsed, op.target, op.length):
            self._finish_operation()
            return
        self._attempt += 1
        if text in self._seen_outputs:
            self._same_output_count += 1
        else:
            self._same_output_count = 0
            self._seen_outputs.add(text)
        # Iterative growth: the next attempt continues from everything produced so far.
        if self.profile.caption_retry_discards or op.expand:
            next_nl = parsed.get("extended", "") or parsed.get("generated", "") or self._attempt_nl
        else:
            # fixed: a fill-mode retry re-rolls the caption instead of re-sending it (which the
            # parser would ignore, REFERENCE.md §7-14).
            next_nl = parsed.get("extended", "") or self._attempt_nl
        self._attempt_nl = self._carried_caption(next_nl.strip())
        self._attempt_general = general_from_tags_for_retry(parsed)
        if self._attempt > MAX_RETRIES or self._same_output_count >= MAX_SAME_OUTPUT:
            self._finish_operation()

    def context_full(self) -> None:
        """The engine cannot take the pending call: its prompt leaves no room in the model's context.

        Only the runner's own retries and later passes make a prompt longer than the user's input,
        so the pass ends with what it has, as if its length target were met (both profiles: the
        reference would send the longer prompt, which a 1k-context engine cannot take). The first
        call holds nothing but the user's input: there is nothing to end with (RunnerStateError).
        """
        if self._pending is None:
            raise RunnerStateError("context_full() without a pending call")
        if self._parsed is None:
            raise RunnerStateError("the first model call does not fit the context: the input is too long")
        self._pending = None
        self.context_ends += 1
        self._finish_operation()

    def _carried_caption(self, caption: str) -> str:
        """fixed: a caption fed back to the model ends its last sentence, so the model does not
        continue a sentence that was finished (kgen re-joins sentences without the final period)."""
        return caption if self.profile.lose_final_period else with_final_period(caption)

    def _finish_operation(self) -> None:
        parsed = self._parsed
        if self._operation_index < len(self._plan.operations) - 1:
            self._general, nl = carry_over(parsed, self._nl)
            self._nl = self._carried_caption(nl)
            self._operation_index += 1
            self._start_operation()
        else:
            self._finish(parsed)

    # --- output ----------------------------------------------------------------------------------------

    def result(self) -> TipoResult:
        if self._result is None:
            raise RunnerStateError("the request is not complete (next_call() is not None yet)")
        return self._result

    def _finish(self, final_map: dict) -> None:
        profile = self.profile
        final_map = dict(final_map)
        if not profile.lose_final_period:
            for key in CAPTION_KEYS:
                if isinstance(final_map.get(key), str):
                    final_map[key] = with_final_period(final_map[key])
        addon = addon_of(final_map, self.user_map, profile)
        if self.request.frontend == "webui":
            outputs = self._webui_outputs(final_map, addon)
            full_map = addon_map = None
        elif self.request.operation is not None:
            outputs, full_map, addon_map = self._operation_outputs(final_map, addon)
        else:
            outputs = self._node_outputs(final_map, addon)
            full_map = addon_map = None
        self._result = TipoResult(
            prompt=outputs.prompt,
            user_prompt=outputs.user_prompt,
            unformatted_prompt=outputs.unformatted_prompt,
            unformatted_user_prompt=outputs.unformatted_user_prompt,
            tags={category: list(final_map.get(category, [])) for category in CLASSIFY_KEYS},
            new_tags=list(addon.tags),
            captions={key: final_map.get(key, "") for key in CAPTION_KEYS},
            seed=self.seed,
            calls=list(self.calls),
            full_map=full_map,
            addon_map=addon_map,
        )

    def _weighted(self, tag_map: dict) -> dict:
        return apply_weights(tag_map, self.tag_text, self.caption_text, self.profile)

    def _node_outputs(self, final_map: dict, addon) -> NodeOutputs:
        """The TIPO node's four strings (docs/REFERENCE.md §4.4)."""
        new_tags = self._weighted({"tags": addon.tags, "nl": addon.nl})
        return NodeOutputs(
            prompt=self._with_extras(apply_format(self._weighted(final_map), self.template, self.profile)),
            user_prompt=self._user_prompt_text,
            unformatted_prompt=unformatted(self.request.tags, new_tags["tags"], new_tags["nl"], self.profile),
            unformatted_user_prompt=self.request.tags + self.caption_text.text,
        )

    def _operation_outputs(self, final_map: dict, addon) -> tuple[NodeOutputs, dict, dict]:
        """The TIPO Single Operation node's maps, and the four strings its TIPO Format node would make."""
        full_map = self._weighted(final_map)
        addon_map = self._weighted({"tags": addon.tags, "nl": addon.nl})
        addon_map["user_tags"] = self.request.tags
        addon_map["user_nl"] = self.request.nl_prompt
        # TIPO Format writes the user's own prompt with default lengths and no aspect ratio.
        plan = plan_request(self.user_map, self.nl)
        outputs = NodeOutputs(
            prompt=self._with_extras(apply_format(full_map, self.template, self.profile)),
            user_prompt=self._user_prompt(plan.meta, plan.general, DEFAULT_LENGTH),
            unformatted_prompt=unformatted(self.request.tags, addon_map["tags"], addon_map["nl"], self.profile),
            unformatted_user_prompt=self.request.tags + self.caption_text.text,
        )
        return outputs, full_map, addon_map

    def _webui_outputs(self, final_map: dict, addon) -> NodeOutputs:
        """The WebUI script's single string, in `prompt` (and the unformatted one in unformatted_prompt)."""
        if self.webui_tags is not None:  # kgen: the script's own weighting, bugs included
            weigh = lambda tag_map: webui.apply_webui_weights(tag_map, self.webui_tags, self.caption_text.weighted)  # noqa: E731
            extras = self.extras_suffix
        else:
            weigh = self._weighted
            extras = "".join(f" {token}" for token in self.tag_text.extras)
        new_tags = weigh({"tags": addon.tags, "nl": addon.nl})
        unformatted_prompt = unformatted(self.user_tags_text, new_tags["tags"], new_tags["nl"], self.profile)
        formatted = apply_format(weigh(final_map), self.template, self.profile).replace("BREAK,", "BREAK")
        final = unformatted_prompt if self.request.no_formatting else formatted
        return NodeOutputs(
            prompt=final + "\n" + extras,
            user_prompt="",
            unformatted_prompt=unformatted_prompt,
            unformatted_user_prompt=self.user_tags_text + self.caption_text.text,
        )
