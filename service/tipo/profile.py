"""Behaviour profiles.

`kgen` reproduces tipo-kgen 0.3.1 + the z-tipo-extension ComfyUI node byte for byte, bugs included
(docs/REFERENCE.md §7). `fixed` (the default) fixes those bugs. Each flag below is one documented difference;
docs/PROFILES.md lists them with the test that shows each one.

Where the reference crashes (IndexError on a `short` caption without user NL, NL made only of dots),
`kgen` raises `ReferenceFailure` (the service answers 4xx naming it) and `fixed` handles the input.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.tipo.errors import InputError


class ReferenceFailure(InputError):
    """The reference would crash on this input; `kgen` reports it instead of guessing."""


@dataclass(frozen=True)
class Profile:
    name: str
    # §4.1: `text.strip("<s>").strip("</s>")` is a character-set strip that eats a trailing s / < / > / '/'
    # of the last tag (twintails -> twintail) and the `>` of a final `<|empty|>`.
    charset_strip: bool
    # §4.2-7: the tag cap uses the *sentence* cap (long -> 8 new tags), dropping tags and causing up to
    # 11 model calls. Fixed: the tag cap (TARGET_TIPO_MAX).
    tag_cap_uses_sentence_cap: bool
    # §4.2-9, §4.3: sentences re-joined with ". " lose their final period; a caption already ending in "."
    # gets ".." from the format. Fixed: captions keep one final period and the format adds none twice.
    lose_final_period: bool
    # §4.3: a format with both <|generated|> and <|extended|> and no user NL prints the caption twice.
    duplicate_caption: bool
    # §4.2-6 / §7-10, §7-16: IndexError when a short caption comes back without user NL, or NL is only dots.
    crash_like_reference: bool
    # §2.1-2 / §7-9: weights of tags renamed by underscore normalisation are lost.
    lose_underscore_weights: bool
    # §2.1 / §7-19: A1111 emphasis grammar applied blindly: `ask_(askzy)` splits, `<lora:x:0.8>` and
    # `[A:B:0.5]` are mangled, BREAK becomes a weighted tag.
    naive_prompt_syntax: bool
    # §7-14: fill-mode caption retries never grow the caption (the retry prompt repeats `long:`).
    caption_retry_discards: bool
    # §4.4 / §7-13: unformatted_prompt loses the generated caption when the user gave no NL.
    unformatted_loses_generated: bool
    # §4.3 / §7-8: an empty caption leaves a lone "." line (format text `<|extended|>.`).
    stray_period_line: bool
    # §4.4: unformatted_prompt always joins with ", ", so it starts with ", " when the user gave no tags.
    unformatted_leading_comma: bool
    # §7-17: whitespace-only NL counts as "NL given" for the extra caption pass but as "no NL" for the plan.
    blank_nl_counts_as_given: bool
    # §4.3: a format text that is no preset and has no <|...|> placeholder is printed literally (the
    # model's output is thrown away). Fixed: a 422 listing the presets (it is almost always a misspelt name).
    unknown_format_is_literal: bool
    # §1, §4.1: user text (tags, caption, meta values) goes into the prompt exactly as typed, and is
    # tokenised with the template: a caption line `Style: ...` becomes a `key:` line of the prompt
    # and a typed `<|long|>` the marker token, as when the reference tokenises the whole prompt. It is
    # the user's own request (no other request, no secret reachable through it). Fixed: content can
    # never start a template line (template.one_field) and reaches the model as literal text
    # (ModelCall.segments). An operator who wants the guard everywhere restricts allowed_profiles.
    raw_user_text: bool


KGEN = Profile(
    name="kgen",
    charset_strip=True,
    tag_cap_uses_sentence_cap=True,
    lose_final_period=True,
    duplicate_caption=True,
    crash_like_reference=True,
    lose_underscore_weights=True,
    naive_prompt_syntax=True,
    caption_retry_discards=True,
    unformatted_loses_generated=True,
    stray_period_line=True,
    unformatted_leading_comma=True,
    blank_nl_counts_as_given=True,
    unknown_format_is_literal=True,
    raw_user_text=True,
)

FIXED = Profile(
    name="fixed",
    charset_strip=False,
    tag_cap_uses_sentence_cap=False,
    lose_final_period=False,
    duplicate_caption=False,
    crash_like_reference=False,
    lose_underscore_weights=False,
    naive_prompt_syntax=False,
    caption_retry_discards=False,
    unformatted_loses_generated=False,
    stray_period_line=False,
    unformatted_leading_comma=False,
    blank_nl_counts_as_given=False,
    unknown_format_is_literal=False,
    raw_user_text=False,
)

PROFILES = {p.name: p for p in (KGEN, FIXED)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"unknown profile {name!r}; use one of {sorted(PROFILES)}", "profile") from None
