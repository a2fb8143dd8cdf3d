"""One TIPO request: the options of the ComfyUI TIPO node (and of the SD-WebUI script), each default in
one place. The API's request models (service/api/tipo/protocol.py) take their defaults from here and hand
the core this dataclass; the core checks the values the API cannot (`InputError` naming the field).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal, get_args

from service.tipo.constants import DEFAULT_FORMAT_NAME, LENGTHS, Length, SingleOperation
from service.tipo.errors import InputError
from service.tipo.sampling import Sampling

ProfileName = Literal["fixed", "kgen"]
# Which reference front end to reproduce: the ComfyUI node (four strings) or the SD-WebUI script
# (one string; min_p not passed, so kgen's 0.1; BREAK kept; extra networks re-appended).
Frontend = Literal["comfy", "webui"]
# Reference backend emulation, only to replay vectors recorded with transformers: the model text
# is "<s> " + prompt + completion + "</s>" and the RNG is re-seeded before each call.
Backend = Literal["llama_cpp", "transformers"]


@dataclass(frozen=True)
class TipoRequest:
    """Defaults are the ComfyUI TIPO node's widget defaults (sampling: `Sampling`'s), but the seed: none
    (a random one, reported in the result), as a service should."""

    tags: str = ""
    nl_prompt: str = ""
    width: int = 1024
    height: int = 1024
    tag_length: Length = "long"
    nl_length: Length = "long"
    ban_tags: tuple[str, ...] = ()  # entries (`ban_entries`: a ban text box is split on commas)
    format: str = DEFAULT_FORMAT_NAME  # a preset name or a template
    seed: int | None = None  # None or 0: a random seed
    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    top_k: int = Sampling.top_k
    min_p: float = Sampling.min_p
    max_new_tokens: int = Sampling.max_new_tokens
    operation: SingleOperation | None = None  # one single operation instead of the full plan
    profile: ProfileName = "fixed"
    frontend: Frontend = "comfy"
    backend: Backend = "llama_cpp"
    aspect_ratio: float | None = None  # overrides width / height (the WebUI passes the ratio)
    no_formatting: bool = False  # WebUI "No formatting": return the unformatted prompt

    def __post_init__(self) -> None:
        # The reference's widgets spell lengths with spaces or underscores.
        for name in ("tag_length", "nl_length"):
            length = getattr(self, name).replace(" ", "_")
            if length not in LENGTHS:
                raise InputError(f"unknown {name} {length!r}; use one of {list(LENGTHS)}", name)
            object.__setattr__(self, name, length)
        for name, allowed in (("frontend", get_args(Frontend)), ("backend", get_args(Backend))):
            if getattr(self, name) not in allowed:
                raise InputError(f"unknown {name} {getattr(self, name)!r}; use one of {list(allowed)}", name)
        if self.operation is not None and self.frontend != "comfy":
            raise InputError("single operations exist only in the ComfyUI front end", "operation")
        if self.aspect_ratio is None and self.height <= 0:
            raise InputError("height must be positive", "height")
        object.__setattr__(self, "ban_tags", ban_entries(self.ban_tags))

    @property
    def ratio(self) -> float:
        return self.aspect_ratio if self.aspect_ratio is not None else self.width / self.height


def ban_entries(ban: str | Sequence[str]) -> tuple[str, ...]:
    """Ban entries as the front ends read them: a text is split on commas; entries stripped, empties dropped."""
    entries = ban.split(",") if isinstance(ban, str) else ban
    return tuple(entry.strip() for entry in entries if entry.strip())


REQUEST_FIELDS = tuple(f.name for f in fields(TipoRequest))
DEFAULTS = TipoRequest()
