"""Which model passes a request needs (docs/REFERENCE.md §3.3) and what is carried from one pass to the next.

A plan is a list of operations; each is one mode (or None = plain tag expansion), a length target
and whether the model continues the last slot (expand) or fills it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.tipo.constants import DEFAULT_LENGTH, SINGLE_OPERATIONS
from service.tipo.errors import InputError
from service.tipo.template import target_slot

TagMap = dict  # category -> list of tags, or caption key -> str (insertion order matters)


@dataclass(frozen=True)
class Operation:
    mode: str | None  # None = plain tag expansion
    length: str
    expand: bool

    @property
    def target(self) -> str:
        """The slot this operation asks for: tag, short or long."""
        return target_slot(self.mode)

    def as_list(self) -> list:
        """The reference's [mode, length, expand] form."""
        return [self.mode, self.length, self.expand]


@dataclass(frozen=True)
class Plan:
    meta: dict[str, str | None]  # the meta block, fixed for the whole request
    operations: tuple[Operation, ...]
    general: str  # special + general tags joined with ", "
    nl: str  # the user's natural-language text


class UnknownOperation(InputError):
    """A single-operation request named an operation the reference does not accept."""

    field = "operation"


def joined(tags: Sequence[str]) -> str:
    return ", ".join(tags)


def general_from_tags(tag_map: Mapping[str, Sequence[str]]) -> str:
    """Special tags (1girl, ...) then general tags, as one ", "-joined string."""
    text = joined(list(tag_map.get("special", [])) + list(tag_map.get("general", [])))
    return text.strip().strip(",")


def meta_from_tags(tag_map: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
    """The meta dict of REFERENCE.md §2.2: meta and quality always present (maybe ""), the others None when empty.

    The insertion order is the order of the meta lines in the prompt; aspect_ratio is added by the caller.
    """
    return {
        "meta": joined(tag_map.get("meta", [])),
        "rating": joined(tag_map.get("rating", [])) or None,
        "artist": joined(tag_map.get("artist", [])).strip() or None,
        "characters": joined(tag_map.get("characters", [])).strip() or None,
        "copyrights": joined(tag_map.get("copyrights", [])).strip() or None,
        "quality": joined(tag_map.get("quality", [])),
    }


def plan_request(
    tag_map: Mapping[str, Sequence[str]],
    nl: str = "",
    *,
    expand_tags: bool = True,
    expand_prompt: bool = True,
    extra_caption: bool = True,
    tag_first: bool = True,
    tag_length: str = "",
    nl_length: str = "",
) -> Plan:
    """The passes of a full request (docs/REFERENCE.md §3.3 table).

    extra_caption: append the pass that writes a caption (the front ends ask for it when the format
    wants one). It is appended last.
    """
    general = general_from_tags(tag_map)
    tag_length = tag_length or DEFAULT_LENGTH
    nl_length = nl_length or DEFAULT_LENGTH
    has_tags = bool(general.strip())
    has_nl = bool(nl.strip())

    def op(mode: str | None, length: str, expand: bool) -> Operation:
        return Operation(mode, length, expand)

    if not has_tags and not has_nl:
        # Nothing given: expand tags from nothing, then caption (continuing, i.e. expand=True).
        operations = [op(None, tag_length, True)]
        caption_op = op("tag_to_long", nl_length, True)
    elif not has_nl:
        operations = [op(None, tag_length, True)] if expand_tags else []
        caption_op = op("tag_to_long", nl_length, False)
    elif not has_tags:
        operations = [op("long_to_tag", tag_length, bool(expand_prompt))]
        caption_op = op("short_to_tag_to_long", nl_length, False)
    elif not expand_tags and not expand_prompt:
        operations = []
        caption_op = op("short_to_tag_to_long", nl_length, False)
    elif not expand_prompt:
        operations = [op("short_to_tag", tag_length, True), op("short_to_tag_to_long", nl_length, False)]
        caption_op = op("short_to_tag_to_long", nl_length, False)
    elif not expand_tags:
        # The reference uses the *tag* length for this caption pass.
        operations = [op("tag_to_long", tag_length, True), op("tag_to_short_to_long", nl_length, False)]
        caption_op = op("tag_to_short_to_long", nl_length, False)
    elif tag_first:
        operations = [op("short_to_tag", tag_length, True), op("tag_to_long", nl_length, True)]
        caption_op = op("short_to_tag_to_long", nl_length, False)
    else:
        operations = [op("tag_to_long", nl_length, True), op("long_to_tag", tag_length, True)]
        caption_op = op("tag_to_short_to_long", nl_length, False)
    if extra_caption:
        operations.append(caption_op)
    return Plan(meta_from_tags(tag_map), tuple(operations), general, nl)


def plan_single_operation(
    tag_map: Mapping[str, Sequence[str]],
    nl: str,
    operation: str,
    *,
    tag_length: str = "",
    nl_length: str = "",
) -> Plan:
    """One pass, always expanding (the "TIPO Single Operation" node). `operation` is a name of SINGLE_OPERATIONS."""
    if operation not in SINGLE_OPERATIONS:
        raise UnknownOperation(f"unknown operation {operation!r}; use one of {list(SINGLE_OPERATIONS)}")
    mode = None if operation == "None" else operation
    tags_out = mode is None or mode.endswith("to_tag")
    length = (tag_length or DEFAULT_LENGTH) if tags_out else (nl_length or DEFAULT_LENGTH)
    return Plan(meta_from_tags(tag_map), (Operation(mode, length, True),), general_from_tags(tag_map), nl)


def carry_over(parsed: TagMap, nl: str) -> tuple[str, str]:
    """(general, nl) for the next operation after a non-final one (docs/REFERENCE.md §3.3 "state carried").

    A caption written by this pass continues the user's text when there was one, so it becomes
    `extended`; `parsed` is updated in place like the reference does. The meta block never changes.
    """
    if "generated" in parsed and nl:
        parsed["extended"] = parsed.pop("generated")
    next_nl = parsed.get("generated") or parsed.get("extended") or nl
    return general_from_tags_for_retry(parsed), next_nl.strip()


def general_from_tags_for_retry(parsed: Mapping) -> str:
    """The tags fed back into the next attempt or pass: special + general, no trimming."""
    return joined(list(parsed.get("special", [])) + list(parsed.get("general", [])))
