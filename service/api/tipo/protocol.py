"""Request and response models of POST /v1/tipo, POST /v1/tipo/batch and POST /v1/tipo/format.

Field names follow the ComfyUI TIPO node (tags, nl_prompt, width, height, tag_length, nl_length,
ban_tags, format, seed, temperature, top_p, top_k, min_p), so a node's settings map one to one.
Valid ranges and examples appear in the OpenAPI schema (/docs).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.tipo.constants import FORMAT_PRESETS, Length, SingleOperation
from service.tipo.request import DEFAULTS, REQUEST_FIELDS, Backend, Frontend, ProfileName, TipoRequest, ban_entries

SEED_RANGE = 2**64  # the reference accepts any integer; negative seeds act like their absolute value

# Hard bound of a ban_tags list, checked before its entries are cleaned; the server's
# max_ban_entries setting (service/api/limits.py) is the limit users see, set below this.
MAX_BAN_LIST_ENTRIES = 4096

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 but \t \n \r, DEL, C1
_LONE_SURROGATES = re.compile(r"[\ud800-\udfff]")  # JSON "\ud800" escapes: not encodable as UTF-8


def clean_user_text(text: str) -> str:
    """Control characters in user text: CR LF and lone CR become LF; tab and LF stay; every other C0/C1
    control character (and DEL) is removed; a lone surrogate becomes U+FFFD. Printable text is untouched."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return without_lone_surrogates(_CONTROL_CHARS.sub("", text))


def without_lone_surrogates(text: str) -> str:
    return _LONE_SURROGATES.sub("\ufffd", text)


def _cleaned_text(value):
    return clean_user_text(value) if isinstance(value, str) else value


def _cleaned_ban_tags(value):
    if isinstance(value, list):
        # Before cleaning entry by entry: 250,000 one-letter entries fit in a 1 MB body (~250 ms).
        if len(value) > MAX_BAN_LIST_ENTRIES:
            raise ValueError(f"too many entries: {len(value)}; at most {MAX_BAN_LIST_ENTRIES} are read "
                             "(the server's max_ban_entries may allow fewer)")
        return [_cleaned_text(entry) for entry in value]
    return _cleaned_text(value)


# User text, cleaned (`clean_user_text`) before it is validated.
CleanText = Annotated[str, BeforeValidator(_cleaned_text)]
BanTags = Annotated[str | list[str], BeforeValidator(_cleaned_ban_tags)]


class TipoPromptOptions(BaseModel):
    """What to make of a partial prompt: the options POST /v1/tipo and the chat completions share.
    Defaults come from the TIPO core's request (service/tipo/request.py)."""

    width: int = Field(DEFAULTS.width, ge=1, le=16384,
                       description="Image width; only width/height (aspect ratio) matters.")
    height: int = Field(DEFAULTS.height, ge=1, le=16384, description="Image height.")
    tag_length: Length = Field(DEFAULTS.tag_length, description="Tag count target: very_short 6-18, short 18-36, "
                               "long 36-54, very_long 54-72 tags.")
    nl_length: Length = Field(DEFAULTS.nl_length, description="Caption target: very_short 1-2, short 2-4, long 4-8, "
                              "very_long 8+ sentences.")
    ban_tags: BanTags = Field("", description="Tags to remove from the result: comma-separated string "
                                      "or list; each entry bans tags containing it or matching it as a regex "
                                      "anchored at the start.", examples=["sky, .*hair"])
    format: CleanText = Field(DEFAULTS.format, description="A preset name (" + ", ".join(map(repr, FORMAT_PRESETS))
                        + ") or a template with <|special|> <|characters|> <|copyrights|> <|artist|> <|general|> "
                        "<|extended|> <|generated|> <|quality|> <|meta|> <|rating|> placeholders. A text with "
                        "no placeholder is a 422 in profile 'fixed' (a misspelt preset name) and printed "
                        "literally in 'kgen', as by the reference.",
                        examples=["Both, tag first (recommend)", "<|general|>\n<|generated|>"])
    profile: ProfileName | None = Field(None, description="'fixed' (the server default unless configured) "
                                        "fixes the reference's bugs; 'kgen' reproduces tipo-kgen 0.3.1 + the "
                                        "ComfyUI node byte for byte, user text sent as typed. The server's "
                                        "allowed_profiles may allow only one (422 otherwise).")

    @field_validator("ban_tags")
    @classmethod
    def _ban_list(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and any("," in entry for entry in value):
            raise ValueError("a ban_tags list entry must not contain ',' (send one tag or regex per entry)")
        return value

    def ban_list(self) -> tuple[str, ...]:
        return ban_entries(self.ban_tags)


class TipoRequestBody(TipoPromptOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"tags": "1girl, hatsune miku, vocaloid, (masterpiece:1.2)", "nl_prompt": "",
             "width": 832, "height": 1216, "tag_length": "long", "nl_length": "long", "seed": 1234},
            {"tags": "", "nl_prompt": "A girl reading a book in a quiet library.", "profile": "kgen",
             "return_trace": True},
        ]},
    )

    tags: CleanText = Field(DEFAULTS.tags, description="Tag prompt in A1111 syntax: comma-separated, (tag:1.2) weights, "
                      "\\( \\) escapes.", examples=["1girl, hatsune miku, (masterpiece:1.2), absurdres"])
    nl_prompt: CleanText = Field(DEFAULTS.nl_prompt, description="Natural-language caption to expand.",
                           examples=["A girl reading a book in a quiet library."])
    seed: int | None = Field(DEFAULTS.seed, gt=-SEED_RANGE, lt=SEED_RANGE,
                             description="Seed of the whole request (same seed + same model = same output). "
                             "Absent, 0 (as in the reference) or negative (-1 as in the WebUI): a random seed, "
                             "returned in the response.",
                             examples=[1234])
    temperature: float = Field(DEFAULTS.temperature, ge=0, le=2, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(DEFAULTS.top_p, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(DEFAULTS.top_k, ge=0, le=32013, description="Top-k cut; 0 = none.")
    min_p: float = Field(DEFAULTS.min_p, ge=0, le=1, description="Min-p cut.")
    max_new_tokens: int = Field(DEFAULTS.max_new_tokens, ge=1, le=1024,
                                description="Token budget of each model call.")
    operation: SingleOperation | None = Field(DEFAULTS.operation, description="Run one single operation (ComfyUI "
                                              "'TIPO Single Operation' node) instead of the planned passes; 'None' "
                                              "= tag expansion.")
    frontend: Frontend = Field(DEFAULTS.frontend, description="Reference front end to reproduce: "
                               "'comfy' (the ComfyUI TIPO node: four strings) or 'webui' (the "
                               "SD-WebUI script: one string in `prompt`; min_p is kgen's 0.1, "
                               "BREAK kept, <lora:...> re-appended).")
    backend: Backend = Field(
        DEFAULTS.backend, validation_alias=AliasChoices("backend", "backend_emulated"),
        description="Reference backend to emulate, for replaying recordings: 'transformers' decodes with "
        "<s>/</s> and re-seeds the RNG before each call (changes tag order). Alias: backend_emulated.")
    aspect_ratio: float | None = Field(DEFAULTS.aspect_ratio, gt=0, le=100, description="Overrides width/height "
                                       "(the WebUI passes the ratio).")
    no_formatting: bool = Field(DEFAULTS.no_formatting, description="WebUI 'No formatting': `prompt` is the "
                                "unformatted prompt.")
    return_trace: bool = Field(False, description="Include every model call: prompt, sampling (with seed) and "
                               "completion.")
    timeout_s: float | None = Field(None, gt=0, description="Give up after this many seconds (504); capped by "
                                    "the server's request_timeout_s.")

    def core_request(self, profile: str, seed: int | None) -> TipoRequest:
        """The TIPO core's request: this body's options, in the profile and with the seed the server chose."""
        options = {name: getattr(self, name) for name in REQUEST_FIELDS}
        return TipoRequest(**{**options, "ban_tags": self.ban_list(), "profile": profile, "seed": seed})


class TipoBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[TipoRequestBody] = Field(..., min_length=1, description="The requests; each keeps its own seed.")
    n: int = Field(1, ge=1, le=64, description="Variants per request: variant i uses seed + i (with no seed "
                   "a random base seed is drawn once per request). len(requests) * n <= the server's max_batch.")
    timeout_s: float | None = Field(None, gt=0, description="Timeout of the whole batch (capped by the server).")


class ModelCallTrace(BaseModel):
    prompt: str = Field(description="The exact template text sent (the engine adds BOS).")
    sampling: dict = Field(description="temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed.")
    completion: str = Field(description="Only what the model appended.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    start_s: float = Field(0.0, description="Call start, seconds after timings.started_at.")
    end_s: float = Field(0.0, description="Call end, seconds after timings.started_at.")


class TipoUsage(BaseModel):
    model_calls: int
    prompt_tokens: int
    completion_tokens: int


class TipoTimings(BaseModel):
    started_at: float = Field(description="Unix time when processing started (trace times are relative to it).")
    queue_ms: float = Field(description="Time waiting for a processing slot.")
    engine_ms: float = Field(description="Sum of the model calls' durations.")
    total_ms: float = Field(description="Time from admission to the answer.")


class TipoResponse(BaseModel):
    prompt: str = Field(description="The optimized prompt, formatted.")
    user_prompt: str = Field(description="The user's own input, formatted the same way.")
    unformatted_prompt: str
    unformatted_user_prompt: str
    tags: dict[str, list[str]] = Field(description="Result tags by category (copyrights, meta, artist, characters, "
                                       "special, quality, rating, general).")
    new_tags: list[str] = Field(description="Tags the model added (not in the user's input).")
    captions: dict[str, str] = Field(description="'extended': the user's caption expanded; 'generated': a caption "
                                     "written from the tags.")
    seed: int = Field(description="The seed used (send it back to reproduce).")
    model: str
    profile: ProfileName
    usage: TipoUsage
    timings: TipoTimings
    operation_output: dict | None = Field(None, description="Single operation only: the ComfyUI 'TIPO Single "
                                          "Operation' node's maps, {'full_output': ..., 'addon_output': ...}.")
    trace: list[ModelCallTrace] | None = None


class TipoBatchItem(BaseModel):
    index: int = Field(description="Position of the request in `requests`.")
    variant: int = Field(description="0 .. n-1; uses seed + variant.")
    result: TipoResponse | None = None
    error: dict | None = Field(None, description="When this item failed: {message, type, param, code} as in "
                               "error bodies.")


class TipoBatchResponse(BaseModel):
    data: list[TipoBatchItem]


class TipoAddonOutput(BaseModel):
    """The `addon_output` map of a single operation (ComfyUI 'TIPO Single Operation' node)."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list, description="Tags the model added (weights applied).")
    nl: str = Field("", description="The caption (extended, else generated; weights applied).")
    user_tags: CleanText = Field("", description="The user's tag text, as sent.")
    user_nl: CleanText = Field("", description="The user's caption, as sent.")


class TipoFormatBody(BaseModel):
    """POST /v1/tipo/format: the ComfyUI 'TIPO Format' node. No model call."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"full_output": {"special": ["1girl"], "general": ["solo", "smile"], "extended": "A girl smiles."},
             "addon_output": {"tags": ["smile"], "nl": "A girl smiles.", "user_tags": "1girl, solo",
                              "user_nl": ""},
             "format": "Both, tag first (recommend)"},
        ]},
    )

    full_output: dict[str, str | list[str]] = Field(
        description="The `operation_output.full_output` map of a single-operation /v1/tipo answer: tag lists by "
        "category and the captions (`extended`, `generated`), weights applied.")
    addon_output: TipoAddonOutput = Field(
        description="The `operation_output.addon_output` map of the same answer.")
    format: CleanText = Field(DEFAULTS.format, description="A preset name or a template, as in /v1/tipo.",
                        examples=["Both, tag first (recommend)"])
    profile: ProfileName | None = Field(None, description="As in /v1/tipo ('kgen' formats like the ComfyUI "
                                        "'TIPO Format' node, bugs included).")


class TipoFormatResponse(BaseModel):
    prompt: str = Field(description="full_output formatted.")
    user_prompt: str = Field(description="The user's own input (addon_output user_tags / user_nl), formatted the "
                             "same way, with default lengths.")
    unformatted_prompt: str = Field(description="User tags, the new tags, a newline, the caption.")
    unformatted_user_prompt: str = Field(description="User tags and caption text, concatenated.")
    profile: ProfileName
