"""The SD-WebUI script's own input and output handling (z-tipo-extension scripts/tipo.py, REFERENCE.md §2.1, §4.4).

It differs from the ComfyUI node in four ways: extra-network tokens (`<lora:x:0.8>`) are cut from
the tag text and re-appended at the end; `BREAK` is a keyword re-inserted after the tag it
followed; the caption weights are written back (with the reference's bugs); and it returns one
string: the formatted prompt (or the unformatted one), a newline, the extra-network tokens.
"""

from __future__ import annotations

import re

from service.tipo.profile import ReferenceFailure
from service.tipo.syntax import EXTRA_NETWORK, TagText, escape_tag, weave_like_reference


def cut_extra_networks(text: str) -> tuple[str, str]:
    """(text without the tokens, the tokens rebuilt as " <name:args>" grouped by name in first-seen order)."""
    found: dict[str, list[str]] = {}

    def take(match: re.Match) -> str:
        found.setdefault(match.group(1), []).append(match.group(2))
        return ""

    remaining = EXTRA_NETWORK.sub(take, text)
    rebuilt = "".join(f" <{name}:{args}>" for name, all_args in found.items() for args in all_args)
    return remaining, rebuilt


def apply_webui_weights(tag_map: dict, tags: TagText, caption_weighted: list[tuple[str, float]]) -> dict:
    """The script's `apply_strength`, bugs included (kgen profile).

    A caption whose weighted parts are not all present gets the text computed for the previous
    caption of the map (docs/REFERENCE.md §2.3); with no previous caption the reference crashes.
    """
    result: dict = {}
    previous_caption: str | None = None
    for key, value in tag_map.items():
        if isinstance(value, str):
            if all(part in value for part, _ in caption_weighted):
                previous_caption = weave_like_reference(value, caption_weighted)
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
