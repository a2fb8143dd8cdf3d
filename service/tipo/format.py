"""Turning a tag map into the final prompt (docs/REFERENCE.md §4.3) and the ComfyUI node's outputs (docs/REFERENCE.md §4.4)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.tipo.constants import CAPTION_KEYS, FORMAT_PRESETS
from service.tipo.errors import InputError
from service.tipo.profile import Profile

# A placeholder <|...|> that does not itself contain a whole placeholder on the same line.
LEFTOVER_PLACEHOLDER = re.compile(r"<\|(?:(?!<\|.*\|>).)*\|>")
# Applied in this order after the substitution.
TIDY_RULES = (
    (re.compile(r"\n +"), "\n"),  # spaces after a newline
    (re.compile(r"\n\n\n+"), "\n\n"),  # 3+ newlines
    (re.compile(r"  +"), " "),  # runs of spaces
)
SENTENCE_END = (".", "!", "?")


PLACEHOLDER = re.compile(r"<\|[^|]+\|>")


class UnknownFormat(InputError):
    """Neither a preset name nor a template with a <|...|> placeholder (most likely a misspelt preset)."""

    field = "format"


def resolve_format(name_or_template: str, profile: Profile) -> str:
    """A preset name gives its template; any other text is a template.

    kgen: like the reference, a text without any <|...|> placeholder is printed literally (the
    model's output is ignored). fixed: such a text is almost always a misspelt preset name, so it
    is an error that lists the presets.
    """
    if name_or_template in FORMAT_PRESETS:
        return FORMAT_PRESETS[name_or_template]
    if not profile.unknown_format_is_literal and not PLACEHOLDER.search(name_or_template):
        raise UnknownFormat(
            f"format {name_or_template!r} is not a preset name ({', '.join(FORMAT_PRESETS)}) "
            "and has no <|...|> placeholder (profile 'kgen' prints such a text literally)"
        )
    return name_or_template


def apply_format(tag_map: Mapping, template: str, profile: Profile) -> str:
    """Fill the <|key|> placeholders of `template` from `tag_map` (lists joined with ", ").

    kgen steps: an <|extended|> with no extended caption shows the generated one; an empty value
    removes "<|key|>," (with its comma) and "<|key|>"; unknown placeholders are deleted; whitespace
    is tidied; the result is stripped of whitespace, then of commas.
    fixed: no caption printed twice, no "." added after a caption that already ends a sentence, no
    lone "." where a caption is empty.
    """
    form = template
    if "<|extended|>" in form and not tag_map.get("extended", ""):
        if profile.duplicate_caption or "<|generated|>" not in form:
            form = form.replace("<|extended|>", "<|generated|>")
    if not profile.lose_final_period or not profile.stray_period_line:
        form = _drop_extra_periods(form, tag_map, profile)
    for key, value in tag_map.items():
        placeholder = f"<|{key}|>"
        if placeholder not in form:
            continue
        if not value:
            form = form.replace(placeholder + ",", "").replace(placeholder, "")
        else:
            form = form.replace(placeholder, ", ".join(value) if isinstance(value, list) else value)
    form = LEFTOVER_PLACEHOLDER.sub("", form)
    for pattern, replacement in TIDY_RULES:
        form = pattern.sub(replacement, form)
    return form.strip().strip(",")


def _drop_extra_periods(form: str, tag_map: Mapping, profile: Profile) -> str:
    """fixed: "<|caption|>." loses its "." when the caption is empty or already ends a sentence."""
    for key in CAPTION_KEYS:
        value = tag_map.get(key)
        text = value if isinstance(value, str) else ""
        empty = not text.strip()
        if (empty and not profile.stray_period_line) or (
            not empty and text.rstrip().endswith(SENTENCE_END) and not profile.lose_final_period
        ):
            form = form.replace(f"<|{key}|>.", f"<|{key}|>")
    return form


def with_final_period(text: str) -> str:
    """fixed: a caption ends its last sentence."""
    text = text.rstrip()
    return text if not text or text.endswith(SENTENCE_END) else text + "."


# --- the ComfyUI node's outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Addon:
    """What the model added: tags not in the user's input (same category), and the caption."""

    tags: list[str]
    nl: str


def addon_of(final_map: Mapping, user_map: Mapping, profile: Profile) -> Addon:
    """The node's "addon": new tags in map order; the caption.

    kgen: the caption is the last of generated/extended visited, and `extended` (always present,
    maybe "") comes after `generated` when the user gave no NL, so the generated caption is lost.
    fixed: the extended caption, else the generated one.
    """
    tags: list[str] = []
    nl = ""
    for key, value in final_map.items():
        if key == "generated" and nl == "":
            nl = value
            continue
        if key == "extended":
            nl = value
            continue
        if key not in user_map:
            continue
        tags.extend(tag for tag in value if tag not in user_map[key])
    if not profile.unformatted_loses_generated:
        nl = final_map.get("extended") or final_map.get("generated") or ""
    return Addon(tags, nl)


def unformatted(user_tags: str, new_tags: list[str], caption: str, profile: Profile) -> str:
    """The node's unformatted_prompt: user tags, the new tags, a newline, the caption.

    kgen always writes ", " between the parts (so it starts with ", " when the user gave no tags);
    fixed joins only the non-empty parts.
    """
    if profile.unformatted_leading_comma:
        return user_tags + ", " + ", ".join(new_tags) + "\n" + caption
    tags = ", ".join(part for part in (user_tags.strip(), ", ".join(new_tags)) if part)
    return tags + "\n" + caption


@dataclass(frozen=True)
class NodeOutputs:
    prompt: str
    user_prompt: str
    unformatted_prompt: str
    unformatted_user_prompt: str
