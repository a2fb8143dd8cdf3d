"""The server's input limits (README settings table): each breach is a 422 naming the field.

They bound the CPU and memory one request can cost before any model call, and the size of its
answer (docs/RELIABILITY.md "Cost limits").
"""

from __future__ import annotations

from collections.abc import Callable

from service.api.errors import ApiError
from service.api.tipo.protocol import TipoRequestBody
from service.regex_budget import budget_for
from service.settings import Settings
from service.tipo.constants import FORMAT_PRESETS
from service.tipo.format import PLACEHOLDER
from service.tipo.request import TipoRequest
from service.tipo.syntax import bracket_depth


def check_input_limits(body: TipoRequestBody, settings: Settings) -> None:
    """The server's input limits (README settings table); each breach is a 422 naming the field.

    They bound the CPU one request costs before any model call: the A1111 weight parser's work grows
    with text length x bracket depth (an 8000-character line of unclosed `(` took seconds).
    """
    if len(body.tags) > settings.max_tag_chars:
        raise ApiError(422, f"tags too long: {len(body.tags)} characters; the server allows at most "
                       f"{settings.max_tag_chars}", param="tags")
    tag_count = len([t for t in body.tags.split(",") if t.strip()])
    if tag_count > settings.max_tags:
        raise ApiError(422, f"too many tags: {tag_count}; the server allows at most {settings.max_tags}",
                       param="tags")
    if len(body.nl_prompt) > settings.max_caption_chars:
        raise ApiError(422, f"nl_prompt too long: {len(body.nl_prompt)} characters; the server allows at most "
                       f"{settings.max_caption_chars}", param="nl_prompt")
    for name, text in (("tags", body.tags), ("nl_prompt", body.nl_prompt)):
        depth = bracket_depth(text)
        if depth > settings.max_bracket_depth:
            raise ApiError(422, f"{name}: brackets nested {depth} deep (unclosed ones count); the server allows "
                           f"at most {settings.max_bracket_depth}", param=name)
    check_ban_limits(body, settings)
    check_format_limits(body.format, settings)


def check_ban_limits(body: TipoRequestBody, settings: Settings) -> None:
    """Every ban entry is tried on every tag of every model call, and its regex is compiled."""
    ban = body.ban_tags
    chars = len(ban) if isinstance(ban, str) else sum(len(entry) for entry in ban)
    if chars > settings.max_ban_chars:
        raise ApiError(422, f"ban_tags too long: {chars} characters; the server allows at most "
                       f"{settings.max_ban_chars}", param="ban_tags")
    count = len(body.ban_list())
    if count > settings.max_ban_entries:
        raise ApiError(422, f"too many ban_tags entries: {count}; the server allows at most "
                       f"{settings.max_ban_entries}", param="ban_tags")


def check_format_limits(format: str, settings: Settings) -> None:
    """A placeholder repeats a whole tag list or caption: the answer grows with their count."""
    if format in FORMAT_PRESETS:
        return
    if len(format) > settings.max_format_chars:
        raise ApiError(422, f"format too long: {len(format)} characters; the server allows at most "
                       f"{settings.max_format_chars}", param="format")
    placeholders = len(PLACEHOLDER.findall(format))
    if placeholders > settings.max_format_placeholders:
        raise ApiError(422, f"too many placeholders in format: {placeholders} <|...|>; the server allows at most "
                       f"{settings.max_format_placeholders}", param="format")


def ban_compiler(request: TipoRequest, settings: Settings) -> Callable:
    """The runner's `compile_pattern`: ban regexes on a time budget of regex_budget_ms for the request
    (service/regex_budget.py), tried on the request's own tags first."""
    return budget_for(request, settings.regex_budget_ms).compile
