"""The TIPO prompt template (docs/REFERENCE.md §1): meta lines, a target line, then the content slots.

The result must be byte-identical to the reference's prompt builder, because the models were
trained on exactly this layout and because the service is compared with the reference byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.tipo.constants import GEN_META_TOKEN, SLOT_SEPARATOR


def slots_of(mode: str | None) -> list[str]:
    """Slot order of a mode: "short_to_tag_to_long" -> ["short", "tag", "long"]; no mode -> ["tag"]."""
    return mode.split(SLOT_SEPARATOR) if mode else ["tag"]


def target_slot(mode: str | None) -> str:
    """The slot the model is asked to produce: the last one."""
    return slots_of(mode)[-1]


# A prompt as (text, is_template) parts whose concatenation is the prompt text: template parts hold
# the keys, the target line and the newlines; content parts hold the values (tags, captions, meta),
# which engines tokenise literally (a `<|long|>` typed by a user is not the marker token). With
# `raw_user_text` (profile kgen) the values are flagged as template parts too, so the engines
# tokenise the whole prompt like the reference (a typed `<|long|>` is the marker token).
Segments = tuple[tuple[str, bool], ...]

# What the reference parser reads as the start of a new field after a newline (parse.FIELD).
_FIELD_START = re.compile(r"[^:\n]+:")


def build_prompt(
    meta: Mapping[str, str | None],
    general: str,
    nl: str,
    mode: str | None,
    length: str,
    expand: bool,
    gen_meta: bool = False,
    raw_user_text: bool = False,
) -> str:
    """Build the text the model continues (the concatenation of `build_prompt_segments`)."""
    return "".join(
        text for text, _ in build_prompt_segments(meta, general, nl, mode, length, expand, gen_meta, raw_user_text)
    )


def build_prompt_segments(
    meta: Mapping[str, str | None],
    general: str,
    nl: str,
    mode: str | None,
    length: str,
    expand: bool,
    gen_meta: bool = False,
    raw_user_text: bool = False,
) -> Segments:
    """Build the prompt as template and content parts.

    meta: category -> joined tags, written in the mapping's order (see plan.meta_from_tags);
      empty or None values give no line.
    general: the special + general tags joined with ", ".
    nl: the natural-language text; it goes to the `short` slot when the mode mentions "short",
      else to the `long` slot.
    expand: True -> the prompt ends with the last written content and the model continues it;
      False -> the prompt ends with "<last slot>:" and the model fills that slot.
    Content is inserted raw (a multi-line caption stays multi-line), except that it can never start
    a line of its own: see `one_field`.
    raw_user_text (profile kgen): content is inserted exactly as the reference does, `key:` lines
      included, and flagged as template text (engines tokenise typed markers as markers).
    """
    parts: list[tuple[str, bool]] = []

    def line(key: str, value: str) -> None:
        parts.append((f"{key}: ", True))
        parts.append((value, True) if raw_user_text else (one_field(value), False))
        parts.append(("\n", True))

    for key, value in meta.items():
        if value:
            line(key, value)

    target_tokens = []
    if length:
        target_tokens.append(f"<|{length}|>")
    if mode:
        target_tokens.append(f"<|{mode}|>")
    if gen_meta:
        target_tokens.append(GEN_META_TOKEN)
    # The reference joins with spaces and trims, so a missing length leaves no leading space.
    parts.append((f"target: {' '.join(target_tokens).strip()}\n", True))

    content = {"tag": general}
    if nl:
        content["short" if mode and "short" in mode else "long"] = nl

    slots = slots_of(mode)
    for position, slot in enumerate(slots):
        value = content.get(slot, "")
        if value.strip():
            line(slot, value)
        elif position < len(slots) - 1:
            parts.append((f"{slot}: \n", True))  # an empty middle slot is still written (note the space)
    if expand:
        return _strip(parts)
    parts.append((f"{slots[-1]}:", True))
    return tuple(part for part in parts if part[0])


def one_field(value: str) -> str:
    """`value` with every newline that would start a new `key:` field joined into a space.

    The reference inserts content raw, so a caption line like "Note: ..." or a tag text
    "1girl\ntarget: <|very_long|>" would add a template line (the parser reads `\n<key>:` as a
    field). Only such newlines go (profile fixed; kgen inserts content raw: docs/PROFILES.md); any
    other newline is kept, so ordinary multi-line captions stay byte-identical to the reference.
    """
    if "\n" not in value:
        return value
    lines = value.split("\n")
    kept: list[str] = []
    current = lines[-1]
    for previous in reversed(lines[:-1]):
        if _FIELD_START.match(current):  # the newline before `current` would start a field
            current = previous + " " + current
        else:
            kept.append(current)
            current = previous
    kept.append(current)
    return "\n".join(reversed(kept))


def _strip(parts: list[tuple[str, bool]]) -> Segments:
    """str.strip() of the joined text, applied to the parts."""
    while parts and not parts[0][0].strip():
        parts.pop(0)
    while parts and not parts[-1][0].strip():
        parts.pop()
    if parts:
        parts[0] = (parts[0][0].lstrip(), parts[0][1])
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
    return tuple(part for part in parts if part[0])
