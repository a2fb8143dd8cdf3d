"""What the WebUI script does, without the WebUI: its arguments, the requests it sends (every prompt of a
batch in one /v1/tipo/batch call), how the answers replace the prompts, and the infotext written and pasted back.

`scripts/tipo_service.py` wires this to the WebUI (gradio controls, `modules.*`); here `p` is any object with the
attributes of the WebUI's StableDiffusionProcessing that are used (prompt, all_prompts, all_seeds, seed, width,
height, hr_prompt, all_hr_prompts, extra_generation_params).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .tipo_client import RetryPolicy, TipoClient, TipoServiceError
from .tipo_client.constants import FORMAT_PRESETS, KGEN_FORMAT_NAMES

# --- the script's controls (z-tipo's options) --------------------------------------------------------------

LENGTH_CHOICES = ["very short", "short", "long", "very long"]
CUSTOM_FORMAT = "custom"
FORMAT_CHOICES = [*KGEN_FORMAT_NAMES, CUSTOM_FORMAT]
DEFAULT_FORMAT_NAME = "Both, tag first (recommend)"
BEFORE = "Before applying other prompt processings"
AFTER = "After applying other prompt processings"
TIMINGS = [BEFORE, AFTER]
SERVER_DEFAULT_PROFILE = "server default"
PROFILES = [SERVER_DEFAULT_PROFILE, "kgen", "fixed"]
SEED_SPACE_AFTER = 2**31 - 1  # "after": a random seed is randrange(2**31 - 1)
SEED_SPACE_BEFORE = 4294967294  # "before": randrange(4294967294)

# Infotext keys (z-tipo's), so images paste back into the UI.
PARAMS_KEY = "TIPO Parameters"
PROMPT_KEY = "TIPO prompt"
NL_PROMPT_KEY = "TIPO nl prompt"
FORMAT_KEY = "TIPO format"


@dataclass
class Args:
    """The script's arguments, in the order of the controls `ui()` returns."""

    enabled: bool = False
    tag_prompt: str = ""
    nl_prompt: str = ""
    tag_length: str = "long"
    nl_length: str = "long"
    ban_tags: str = ""
    format_selected: str = DEFAULT_FORMAT_NAME
    format: str = FORMAT_PRESETS[DEFAULT_FORMAT_NAME]
    seed: int = -1
    timing: str = AFTER
    no_formatting: bool = False
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80

    @classmethod
    def names(cls) -> List[str]:
        return list(cls.__dataclass_fields__)

    @classmethod
    def of(cls, values: Sequence[Any]) -> "Args":
        names = cls.names()
        if len(values) != len(names):
            raise ValueError(f"the TIPO script takes {len(names)} arguments ({', '.join(names)}), got {len(values)}")
        args = cls(**dict(zip(names, values)))
        args.seed = int(args.seed if args.seed not in (None, "") else -1)
        args.top_k = int(args.top_k)
        return args

    def template(self) -> str:
        """The format sent: a preset's template, or the custom text."""
        return self.format if self.format_selected not in FORMAT_PRESETS else FORMAT_PRESETS[self.format_selected]


@dataclass
class ServiceSettings:
    """The WebUI settings of the extension (Settings > TIPO service); empty values fall back to the environment."""

    url: str = ""
    api_key: str = ""
    profile: str = SERVER_DEFAULT_PROFILE
    timeout_s: float = 120.0
    max_batch: int = 64

    def client(self, **kwargs: Any) -> TipoClient:
        timeout_s = float(self.timeout_s) if self.timeout_s and self.timeout_s > 0 else 120.0
        return TipoClient(self.url.strip() or None, api_key=self.api_key.strip() or None, timeout=timeout_s + 10,
                          retry=RetryPolicy(max_retries=8, max_wait_s=timeout_s, max_backoff_s=10.0), **kwargs)


# --- requests and answers ----------------------------------------------------------------------------------


def to_request(args: Args, tags: str, nl_prompt: str, seed: int, aspect_ratio: float,
               settings: ServiceSettings) -> Dict[str, Any]:
    """A /v1/tipo body in the WebUI front end (one string back; min_p is the script's 0.1)."""
    body: Dict[str, Any] = {
        "frontend": "webui",
        "tags": tags,
        "nl_prompt": nl_prompt,
        "aspect_ratio": aspect_ratio,
        "seed": seed,
        "tag_length": args.tag_length.replace(" ", "_"),
        "nl_length": args.nl_length.replace(" ", "_"),
        "ban_tags": args.ban_tags,
        "format": args.template(),
        "temperature": float(args.temperature),
        "top_p": float(args.top_p),
        "top_k": int(args.top_k),
        "no_formatting": bool(args.no_formatting),
    }
    if settings.profile and settings.profile != SERVER_DEFAULT_PROFILE:
        body["profile"] = settings.profile
    return body


def aspect_ratio_of(p: Any) -> float:
    width, height = getattr(p, "width", 0) or 0, getattr(p, "height", 0) or 0
    return width / height if width > 0 and height > 0 else 1.0


def tag_source(prompt: str, args: Args) -> str:
    """The tags sent: the prompt, or the extra Tag Prompt when the prompt is empty."""
    return prompt if prompt.strip() else args.tag_prompt


@dataclass
class Upsampled:
    """What one run did: the prompts before and after, and what the infotext records."""

    originals: List[str]
    prompts: List[str]
    seed: int  # the script's seed (random ones drawn), before each prompt's image seed is added
    model: str = ""
    profile: str = ""
    calls: int = 0
    seeds: List[int] = field(default_factory=list)


def upsample(prompts: Sequence[str], seeds: Sequence[int], args: Args, base_seed: int, aspect_ratio: float,
             settings: ServiceSettings, send: Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]) -> Upsampled:
    """Every prompt with its seed (base_seed + seed) through `send` (one batch call per `max_batch` prompts)."""
    originals = list(prompts)
    requests = [to_request(args, tag_source(prompt, args), args.nl_prompt, base_seed + int(seed), aspect_ratio,
                           settings) for prompt, seed in zip(originals, seeds)]
    chunk = max(1, int(settings.max_batch or 64))
    results: List[Dict[str, Any]] = []
    calls = 0
    for start in range(0, len(requests), chunk):
        results.extend(send(requests[start:start + chunk]))
        calls += 1
    first = results[0] if results else {}
    return Upsampled(originals, [result["prompt"] for result in results], base_seed, model=first.get("model", ""),
                     profile=first.get("profile", ""), calls=calls, seeds=[request["seed"] for request in requests])


def run_after(p: Any, args: Args, settings: ServiceSettings, send, rng: Optional[random.Random] = None) -> Upsampled:
    """'After applying other prompt processings' (the script's `process`): every entry of p.all_prompts, each with
    the script's seed + its image seed (p.all_seeds), in one call; hires prompts follow unless they differed."""
    base = args.seed if args.seed != -1 else (rng or random).randrange(SEED_SPACE_AFTER)
    done = upsample(p.all_prompts, p.all_seeds, args, base, aspect_ratio_of(p), settings, send)
    hr_prompts = getattr(p, "all_hr_prompts", None)
    for index, (old, new) in enumerate(zip(done.originals, done.prompts)):
        p.all_prompts[index] = new
        if hr_prompts is not None and index < len(hr_prompts) and hr_prompts[index] == old:
            hr_prompts[index] = new
    if getattr(p, "main_prompt", None) == (done.originals[0] if done.originals else None):
        p.main_prompt = done.prompts[0]
    write_infotext(p, args, done)
    return done


def run_before(p: Any, args: Args, settings: ServiceSettings, send, rng: Optional[random.Random] = None) -> Upsampled:
    """'Before applying other prompt processings' (the script's `before_process`, after fix_seed(p)): p.prompt
    (before styles and wildcards), with the script's seed + p.seed; the hires prompt follows if it was the same."""
    base = args.seed if args.seed != -1 else (rng or random).randrange(SEED_SPACE_BEFORE)
    prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt]  # the API may send a list
    done = upsample(prompts, [int(p.seed)] * len(prompts), args, base, aspect_ratio_of(p), settings, send)
    new = done.prompts if isinstance(p.prompt, list) else done.prompts[0]
    if getattr(p, "hr_prompt", None) == p.prompt:
        p.hr_prompt = new
    p.prompt = new
    write_infotext(p, args, done)
    return done


def sender(settings: ServiceSettings, **client_kwargs: Any):
    """`send(requests) -> results`: one /v1/tipo/batch call per list; a failure raises TipoServiceError with the
    service's message and no client frames."""

    def send(requests: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        try:
            with settings.client(**client_kwargs) as client:
                return client.tipo_many(requests, timeout_s=float(settings.timeout_s or 120.0))
        except TipoServiceError as error:
            raise error.with_traceback(None) from None

    return send


# --- infotext ------------------------------------------------------------------------------------------------


def swap_quotes(text: str) -> str:
    """' <-> " (the infotext then needs no escaped double quotes)."""
    return text.translate(str.maketrans({"'": '"', '"': "'"}))


def write_infotext(p: Any, args: Args, done: Upsampled) -> None:
    params = {
        "seed": done.seed,
        "timing": args.timing,
        "tag_length": args.tag_length,
        "nl_length": args.nl_length,
        "ban_tags": args.ban_tags,
        "format_selected": args.format_selected,
        "format": args.template(),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "model": done.model,
        "gguf_cpu": False,
        "no_formatting": args.no_formatting,
        "profile": done.profile,
    }
    extra = p.extra_generation_params
    extra[PARAMS_KEY] = swap_quotes(json.dumps(params, ensure_ascii=False))
    # One original per image: a list is indexed per image by the WebUI's infotext writer.
    sources = [tag_source(prompt, args) for prompt in done.originals]
    extra[PROMPT_KEY] = sources[0] if len(set(sources)) == 1 else sources
    if args.nl_prompt:
        extra[NL_PROMPT_KEY] = args.nl_prompt
    if args.format_selected != DEFAULT_FORMAT_NAME:
        extra[FORMAT_KEY] = args.format_selected


def read_params(infotext: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The `TIPO Parameters` entry of a parsed infotext, or None."""
    text = infotext.get(PARAMS_KEY)
    if not isinstance(text, str):
        return None
    try:
        params = json.loads(swap_quotes(text))
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def pasted_values(infotext: Mapping[str, Any]) -> Dict[str, Any]:
    """The controls' values from an image's infotext (only those it records); {} when TIPO was not used."""
    params = read_params(infotext)
    if params is None:
        return {}
    values: Dict[str, Any] = {"enabled": True}
    for name in ("seed", "timing", "tag_length", "nl_length", "ban_tags", "format_selected", "temperature", "top_p",
                 "top_k", "no_formatting"):
        if name in params:
            values[name] = params[name]
    if "format" in params:
        values["format"] = params["format"]
    if isinstance(infotext.get(NL_PROMPT_KEY), str):
        values["nl_prompt"] = infotext[NL_PROMPT_KEY]
    return values


def on_pasted(infotext: Dict[str, Any]) -> None:
    """The prompt box gets the prompt TIPO started from, so generating again with the pasted TIPO settings and
    seed gives the same prompt (and image)."""
    if read_params(infotext) is not None and isinstance(infotext.get(PROMPT_KEY), str):
        infotext["Prompt"] = infotext[PROMPT_KEY]


def args_dict(args: Args) -> Dict[str, Any]:
    return asdict(args)
