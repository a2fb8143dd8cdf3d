"""What the reference's front ends do around a TIPO run: read the user's boxes, and write the answer
strings (docs/REFERENCE.md §2.1, §4.4).

* the ComfyUI TIPO node: four strings (the formatted prompt, the user's own prompt formatted the same
  way, the unformatted prompt and the unformatted user prompt);
* the ComfyUI TIPO Single Operation node: two maps, and the four strings its TIPO Format node makes
  of them (`operation_strings`, also behind POST /v1/tipo/format);
* the SD-WebUI script: one string (the formatted or unformatted prompt, a newline, the extra networks).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.tipo import webui
from service.tipo.constants import DEFAULT_LENGTH
from service.tipo.format import NodeOutputs, apply_format, unformatted
from service.tipo.parse import parse_output
from service.tipo.plan import plan_request
from service.tipo.profile import Profile
from service.tipo.request import TipoRequest
from service.tipo.syntax import CaptionText, TagText, apply_weights, read_caption, read_tags, read_tags_like_reference
from service.tipo.tags import TagIndex, classify
from service.tipo.template import build_prompt


@dataclass(frozen=True)
class UserInput:
    """The tag and caption boxes as the front end reads them."""

    tags_text: str  # the tag text the front end passes on (WebUI: stripped, extra networks cut)
    tag_text: TagText
    caption_text: CaptionText
    nl: str  # the caption as the planner sees it
    user_map: dict  # the user's tags by category
    # WebUI in profile kgen: the script's own tag reading and weighting (bugs included), and the extra
    # networks it cut from the tags, to re-append at the end.
    webui_weighting: bool = False
    extras_suffix: str = ""


def read_input(request: TipoRequest, profile: Profile, index: TagIndex) -> UserInput:
    extras_suffix = ""
    webui_weighting = request.frontend == "webui" and profile.naive_prompt_syntax
    if webui_weighting:
        tags_text, extras_suffix = webui.cut_extra_networks(request.tags.strip())
        tag_text = read_tags_like_reference(tags_text, break_marks_previous_tag=True)
    else:
        tags_text = request.tags.strip() if request.frontend == "webui" else request.tags
        tag_text = read_tags(tags_text, profile)
    caption_text = read_caption(request.nl_prompt, profile)
    nl = caption_text.text
    if not profile.blank_nl_counts_as_given and not nl.strip():
        nl = ""
    return UserInput(tags_text, tag_text, caption_text, nl, classify(tag_text.tags, index), webui_weighting,
                     extras_suffix)


def user_prompt(user: UserInput, meta: dict, general: str, length: str, template: str, profile: Profile,
                index: TagIndex) -> str:
    """The node's user_prompt: the user's own input written as a TIPO document (no model), parsed back
    and formatted like the result."""
    document = build_prompt(meta, general, user.nl, "short_to_tag_to_long", length, True, gen_meta=True,
                            raw_user_text=profile.raw_user_text)
    user_map = parse_output(document, index, profile)
    return with_extras(user, apply_format(weighted(user, user_map, profile), template, profile))


def node_outputs(user: UserInput, final_map: dict, new_tags: list[str], new_nl: str, template: str,
                 profile: Profile, user_prompt_text: str) -> NodeOutputs:
    """The TIPO node's four strings (docs/REFERENCE.md §4.4)."""
    added = weighted(user, {"tags": new_tags, "nl": new_nl}, profile)
    return NodeOutputs(
        prompt=with_extras(user, apply_format(weighted(user, final_map, profile), template, profile)),
        user_prompt=user_prompt_text,
        unformatted_prompt=unformatted(user.tags_text, added["tags"], added["nl"], profile),
        unformatted_user_prompt=user.tags_text + user.caption_text.text,
    )


def operation_maps(user: UserInput, request: TipoRequest, final_map: dict, new_tags: list[str], new_nl: str,
                   profile: Profile) -> tuple[dict, dict]:
    """The TIPO Single Operation node's full_output and addon_output maps (weights applied)."""
    addon_map = weighted(user, {"tags": new_tags, "nl": new_nl}, profile)
    addon_map["user_tags"] = request.tags
    addon_map["user_nl"] = request.nl_prompt
    return weighted(user, final_map, profile), addon_map


def operation_strings(user: UserInput, full_map: dict, new_tags: list[str], new_nl: str, template: str,
                      profile: Profile, index: TagIndex) -> NodeOutputs:
    """The four strings the TIPO Format node makes of a single operation's maps: the user's own prompt
    is written with default lengths and no aspect ratio."""
    plan = plan_request(user.user_map, user.nl)
    return NodeOutputs(
        prompt=with_extras(user, apply_format(full_map, template, profile)),
        user_prompt=user_prompt(user, plan.meta, plan.general, DEFAULT_LENGTH, template, profile, index),
        unformatted_prompt=unformatted(user.tags_text, new_tags, new_nl, profile),
        unformatted_user_prompt=user.tags_text + user.caption_text.text,
    )


def webui_outputs(user: UserInput, request: TipoRequest, final_map: dict, new_tags: list[str], new_nl: str,
                  template: str, profile: Profile) -> NodeOutputs:
    """The WebUI script's single string, in `prompt` (and the unformatted one in unformatted_prompt)."""
    if user.webui_weighting:  # kgen: the script's own weighting, bugs included
        def weigh(tag_map: dict) -> dict:
            return webui.apply_webui_weights(tag_map, user.tag_text, user.caption_text.weighted)
        extras = user.extras_suffix
    else:
        def weigh(tag_map: dict) -> dict:
            return weighted(user, tag_map, profile)
        extras = "".join(f" {token}" for token in user.tag_text.extras)
    added = weigh({"tags": new_tags, "nl": new_nl})
    unformatted_prompt = unformatted(user.tags_text, added["tags"], added["nl"], profile)
    formatted = apply_format(weigh(final_map), template, profile).replace("BREAK,", "BREAK")
    final = unformatted_prompt if request.no_formatting else formatted
    return NodeOutputs(
        prompt=final + "\n" + extras,
        user_prompt="",
        unformatted_prompt=unformatted_prompt,
        unformatted_user_prompt=user.tags_text + user.caption_text.text,
    )


def weighted(user: UserInput, tag_map: dict, profile: Profile) -> dict:
    return apply_weights(tag_map, user.tag_text, user.caption_text, profile)


def with_extras(user: UserInput, prompt: str) -> str:
    """fixed: extra networks and prompt-editing tokens the user wrote are re-appended verbatim."""
    if not user.tag_text.extras:
        return prompt
    return prompt + "\n" + ", ".join(user.tag_text.extras)
