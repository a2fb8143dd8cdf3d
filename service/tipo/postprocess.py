"""Post-processing of one parsed model answer (docs/REFERENCE.md §4.2) and the ban filter (docs/REFERENCE.md §2.4).

Order of the steps, and of the random draws, follows tipo-kgen 0.3.1: both matter for byte-identical
output, since the new tags and sentences are shuffled with the request's RNG.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.tipo.constants import MAX_SENTENCES, MAX_TAGS, MIN_SENTENCES, MIN_TAGS
from service.tipo.errors import InputError
from service.tipo.profile import Profile, ReferenceFailure


class InvalidBanTag(InputError):
    """A ban entry that is not a valid regular expression, or one that could take exponential time."""

    field = "ban_tags"

    def __init__(self, entry: str, reason: str):
        super().__init__(f"ban tag {entry!r} is not a valid regular expression: {reason}")
        self.entry = entry


class BanPatternTimeout(InvalidBanTag):
    """A ban regex that ran out of the request's time budget for ban matching (a compile function
    given to `BanList.of`, e.g. service/regex_budget.py, raises it; the stdlib `re` has no timeout)."""

    def __init__(self, entry: str, budget_ms: float):
        InputError.__init__(
            self,
            f"ban tag {entry!r} ran out of the server's time budget for ban regexes ({budget_ms:g} ms per "
            "request): simplify it (no nested or overlapping repetition such as (a|a)* or (a+)+), or send "
            "fewer regex entries",
        )
        self.entry = entry


# A quantified group that itself holds a quantifier (`(a+)+`, `(\w*)*`, `(x{1,}){2,}`): the classic
# catastrophic-backtracking shape. Tags are short, but `(a+)+$` against 30 characters already runs
# for minutes and would block every request; the reference would hang there.
# It is only a first line of defence: it misses `((a+))+`, `(a|a)*`, `(a|aa)+`; a compile function
# with a time budget (service/regex_budget.py) is what bounds the matching. Linear time: the group's
# text before its first quantifier cannot hold a quantifier character, so nothing is retried (the
# plain `(?:[^()\\]|\\.)*{Q}` form took 0.6 s on "(" + "+" * 4000).
_QUANTIFIER = r"(?:[+*]|\{\d*,\d*\})"
_NOT_QUANTIFIER = r"(?:[^()\\+*{]|\\.|\{(?!\d*,\d*\}))"
_NESTED_QUANTIFIER = re.compile(rf"\({_NOT_QUANTIFIER}*{_QUANTIFIER}(?:[^()\\]|\\.)*\){_QUANTIFIER}")

# How a ban entry is compiled: anything with `.match(tag)`; raises re.error or InvalidBanTag.
CompilePattern = Callable[[str], Any]


# An entry without these characters is a plain string: as a regex it matches exactly itself, so its
# `re.match` is implied by its substring test and it needs no regex at all.
_REGEX_SYNTAX = re.compile(r"[\\.^$*+?{}\[\]|()]")
# Tags whose verdict a ban list remembers (the user's tags come back in every model call).
_VERDICT_CACHE_SIZE = 8192


@dataclass(frozen=True)
class BanList:
    """Ban entries; a tag is banned when an entry is a substring of it or the entry, as a regex,
    matches at the start of the tag (`re.match`). So `sky` also bans `blue sky`.

    Every entry with regex syntax is compiled up front so an invalid regex fails the request before
    any model call (the reference raises re.error in the middle of the run). `compile` is
    `re.compile` unless the caller gives another with the same semantics (the service: one with a
    time budget per request, service/regex_budget.py).

    Cost: one scan of the tag for all substrings (an alternation of the escaped entries), then the
    regex entries; verdicts are remembered per tag. 256 plain entries cost 7 ms per 600 tags
    entry by entry, 0.1 ms this way.
    """

    entries: tuple[str, ...] = ()
    patterns: tuple[Any, ...] = ()  # the compiled entries that have regex syntax
    substrings: re.Pattern | None = None  # matches where any entry occurs
    verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, entries: Iterable[str], compile: CompilePattern | None = None) -> BanList:
        compile = compile or re.compile
        entries = tuple(entries)
        patterns = []
        for entry in entries:
            if not _REGEX_SYNTAX.search(entry):
                continue
            try:
                patterns.append(compile(entry))
            except re.error as error:
                raise InvalidBanTag(entry, str(error)) from None
            except RecursionError:  # sre's parser recurses once per group: "((((...))))" thousands deep
                raise InvalidBanTag(entry, "groups nested too deeply") from None
            if _NESTED_QUANTIFIER.search(entry):
                raise InvalidBanTag(entry, "a quantified group holding a quantifier, like (a+)+, can take "
                                   "exponential time; write it without the nesting, e.g. a+")
        substrings = re.compile("|".join(map(re.escape, entries))) if entries else None
        return cls(entries, tuple(patterns), substrings)

    def bans(self, tag: str) -> bool:
        verdict = self.verdicts.get(tag)
        if verdict is None:
            verdict = bool(self.substrings is not None and self.substrings.search(tag)) or any(
                pattern.match(tag) for pattern in self.patterns)
            if len(self.verdicts) < _VERDICT_CACHE_SIZE:
                self.verdicts[tag] = verdict
        return verdict

    def keep(self, tags: Iterable[str]) -> list[str]:
        return [tag for tag in tags if not self.bans(tag)]


def sentences_of(text: str) -> list[str]:
    """Sentences as the reference counts them: split on every ".", stripped, empties dropped."""
    return [part.strip() for part in text.split(".") if part.strip()]


def dedup(items: Iterable[str]) -> list[str]:
    """Drop repeats, keeping the first occurrence."""
    return list(dict.fromkeys(items))


def shuffled(items: Sequence[str], rng: random.Random) -> list[str]:
    # random.shuffle draws nothing for 0 or 1 items, so calling it always keeps the stream aligned.
    items = list(items)
    rng.shuffle(items)
    return items


def _caption(parsed: dict, key: str, profile: Profile) -> None:
    """Make sure a caption value is a string (a literal `extended:` line in the output parses as a list)."""
    value = parsed.get(key)
    if isinstance(value, list):
        if profile.crash_like_reference:
            raise ReferenceFailure(
                f"the model wrote a '{key}:' line; the reference crashes on it in post-processing (AttributeError)"
            )
        parsed[key] = ", ".join(value)


def postprocess(
    parsed: dict,
    general: str,
    nl: str,
    mode: str | None,
    length: str,
    ban: BanList,
    rng: random.Random,
    profile: Profile,
) -> dict:
    """Clean one parsed answer against the input of the attempt (`general`, `nl`).

    Returns a new map: captions kept only where the mode produces them, banned tags removed from
    every list, new general tags shuffled after the input ones, new sentences (all but the last)
    shuffled after the input ones, both capped by the length target.
    """
    parsed = dict(parsed)

    # 1. Keep only the captions this mode writes.
    if mode is None:
        parsed.pop("extended", None)
        parsed.pop("generated", None)
    else:
        if "long" not in mode:
            parsed.pop("generated", None)
        if "short" not in mode:
            parsed.pop("extended", None)
    for key in ("extended", "generated"):
        _caption(parsed, key, profile)

    # 2. A caption that continues the user's text is the user's text, extended.
    if "generated" in parsed and nl and not parsed.get("extended", "").strip():
        parsed["extended"] = parsed.pop("generated")

    input_tags = [tag.strip() for tag in general.split(",")]
    input_sentences = sentences_of(nl)

    # 3. Ban filter on every list (0.3.1: user tags, rating, artist, ... included; captions are not filtered).
    for key, value in list(parsed.items()):
        if isinstance(value, list):
            parsed[key] = ban.keep(value)

    # 4. Input tags keep their place; new ones are shuffled.
    kept_tags = [tag for tag in parsed.get("general", []) if tag in input_tags]
    new_tags = shuffled([tag for tag in parsed.get("general", []) if tag not in input_tags], rng)

    # 5. New sentences of the extended caption.
    new_sentences = [s for s in sentences_of(parsed.get("extended", "")) if s not in input_sentences]
    if new_sentences:
        if input_sentences:
            # The model continued the last input sentence: the longer version replaces it.
            if input_sentences[-1] in new_sentences[0]:
                input_sentences[-1] = new_sentences.pop(0)
        elif profile.crash_like_reference:
            raise ReferenceFailure(
                "post-processing got a 'short' caption but the request has no usable NL text "
                "(empty, blank or only dots); the reference crashes here with IndexError"
            )
    if new_sentences:
        new_sentences = shuffled(new_sentences[:-1], rng) + [new_sentences[-1]]

    # 6. Caps.
    tag_cap = MAX_TAGS[length]
    sentence_cap = MAX_SENTENCES[length]
    if len(kept_tags) + len(new_tags) > tag_cap:
        # kgen keeps only "sentence cap - input tags" new tags (a bug: long -> 8), which then
        # fails the retry criterion and causes up to 10 more passes.
        keep = (sentence_cap if profile.tag_cap_uses_sentence_cap else tag_cap) - len(kept_tags)
        new_tags = new_tags[: max(keep, 0)]
    if len(input_sentences) + len(new_sentences) > sentence_cap:
        new_sentences = new_sentences[: max(sentence_cap - len(input_sentences), 0)]

    # 7. The generated caption: its sentences not already given, capped, in order.
    generated = []
    if "generated" in parsed:
        generated = [s for s in sentences_of(parsed["generated"]) if s not in input_sentences][:sentence_cap]

    # 8. Write back. Sentences are re-joined with ". " (no final period; see the format).
    parsed["general"] = dedup(kept_tags + new_tags)
    parsed["extended"] = ". ".join(dedup(input_sentences + new_sentences))
    if generated:
        parsed["generated"] = ". ".join(dedup(generated))
    return parsed


def sentence_count(text: str) -> int:
    """The reference's count: pieces of split("."), so "" counts as 1 and a final "." adds one."""
    return len(text.split("."))


def meets_target(parsed: dict, target: str, length: str) -> bool:
    """The retry criterion of one attempt (docs/REFERENCE.md §3.4)."""
    if target == "long" and "generated" not in parsed:
        target = "short"
    if target == "tag":
        count, low = len(parsed.get("special", []) + parsed.get("general", [])), MIN_TAGS[length]
    elif target == "short":
        count, low = sentence_count(parsed.get("extended", "")), MIN_SENTENCES[length]
    else:
        count, low = sentence_count(parsed.get("generated", "")), MIN_SENTENCES[length]
    return low <= count <= 1000
