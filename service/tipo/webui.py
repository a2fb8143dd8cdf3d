"""The SD-WebUI script's own input and output handling (z-tipo-extension scripts/tipo.py, REFERENCE.md §2.1, §4.4).

It differs from the ComfyUI node in four ways: extra-network tokens (`<lora:x:0.8>`) are cut from
the tag text and re-appended at the end; `BREAK` is a keyword re-inserted after the tag it
followed; the caption weights are written back (with the reference's bugs); and it returns one
string: the formatted prompt (or the unformatted one), a newline, the extra-network tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service.tipo.profile import ReferenceFailure
from service.tipo.syntax import BREAK_WEIGHT, escape_tag, parse_attention

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network token


def cut_extra_networks(text: str) -> tuple[str, str]:
    """(text without the tokens, the tokens rebuilt as " <name:args>" grouped by name in first-seen order)."""
    found: dict[str, list[str]] = {}

    def take(match: re.Match) -> str:
        found.setdefault(match.group(1), []).append(match.group(2))
        return ""

    remaining = EXTRA_NETWORK.sub(take, text)
    rebuilt = "".join(f" <{name}:{args}>" for name, all_args in found.items() for args in all_args)
    return remaining, rebuilt


@dataclass
class WebuiTags:
    tags: list[str]
    weights: dict[str, float]
    breaks_after: set[str] = field(default_factory=set)


def read_webui_tags(text: str) -> WebuiTags:
    """The script's loop over the emphasis runs: a `BREAK` run marks the tag before it."""
    tags: list[str] = []
    weights: dict[str, float] = {}
    breaks_after: set[str] = set()
    for chunk, weight in parse_attention(text):
        pieces = [piece.strip() for piece in chunk.strip().split(",") if piece.strip()]
        if chunk == "BREAK" and weight == BREAK_WEIGHT:
            if not tags:
                raise ReferenceFailure("WebUI: BREAK before any tag (the reference crashes with IndexError)")
            breaks_after.add(tags[-1])
            continue
        tags.extend(pieces)
        if weight != 1:
            for tag in pieces:
                weights[tag] = weight
    return WebuiTags(tags, weights, breaks_after)


def apply_webui_weights(
    tag_map: dict, tags: WebuiTags, caption_weighted: list[tuple[str, float]]
) -> dict:
    """The script's `apply_strength`, bugs included (kgen profile).

    A caption whose weighted parts are not all present gets the text computed for the previous
    caption of the map (docs/REFERENCE.md §2.3); with no previous caption the reference crashes.
    """
    result: dict = {}
    previous_caption: str | None = None
    for key, value in tag_map.items():
        if isinstance(value, str):
            if all(part in value for part, _ in caption_weighted):
                previous_caption = _weave(value, caption_weighted)
            elif previous_caption is None:
                raise ReferenceFailure(
                    "WebUI: a weighted part of the caption is missing from the output caption "
                    "(the reference crashes with UnboundLocalError)"
                )
            result[key] = previous_caption
            continue
        written = []
        for tag in value:
            escaped = escape_tag(tag)
            written.append(f"({escaped}:{tags.weights[tag]})" if tag in tags.weights else escaped)
            if escaped in tags.breaks_after or tag in tags.breaks_after:
                written.append("BREAK")
        result[key] = written
    return result


def _weave(text: str, caption_weighted: list[tuple[str, float]]) -> str:
    out = ""
    rest = text
    for part, weight in caption_weighted:
        if not part or part not in rest:
            raise ReferenceFailure(
                f"WebUI: weighted caption part {part!r} cannot be placed (the reference crashes with ValueError)"
            )
        before, rest = rest.split(part, 1)
        out += escape_tag(before) + f"({escape_tag(part)}:{weight})"
    return out + rest  # the reference leaves the rest unescaped
