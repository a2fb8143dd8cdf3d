"""A1111 / ComfyUI prompt syntax: reading the user's tag and caption boxes, writing weights back.

The reference (the z-tipo-extension ComfyUI node, REFERENCE.md §2.1 and §2.3) runs the A1111 emphasis
grammar over both boxes:

    (x)  weight x 1.1        ((x))  1.1 * 1.1        (x:1.3)  weight 1.3
    [x]  weight / 1.1        \\( \\) \\[ \\] \\\\  literal characters
    BREAK  becomes the run ("BREAK", -1)

`parse_attention` is that algorithm, float products included. On top of it:

* profile `kgen` (`naive_prompt_syntax`) reads the boxes exactly like the node. So `ask_(askzy)`
  splits into `ask_` and `askzy` (weight 1.1), `[A:B:0.5]` is mangled and `BREAK` is sent to the
  model as a tag weighted -1.
* profile `fixed` protects what A1111 users actually write before applying the grammar:
  - extra-network tokens `<lora:name:0.8>` (any `<word:...>`) and prompt editing / alternation
    `[A:B:0.5]`, `[A:B:5]`, `[A|B]` are not tags: they go to `TagText.extras`, in input order,
    verbatim (wrapped as `(token:w)` when an emphasis group around a prompt-editing token gave it a
    weight), so the caller can re-append them to the final prompt;
  - a `(...)` group without `:weight` that directly follows tag text in the same comma-separated
    piece is a booru qualifier (`shrug (clothing)`, `ask_(askzy)`), kept as literal parentheses;
  - `BREAK` is a keyword, not a tag. `TagText.breaks_after` records the tag it followed and
    `apply_weights` writes `BREAK` back right after that tag, wherever the tag ends up (the WebUI
    script's approach). A `BREAK` before the first tag has nothing to follow and is dropped;
  - weights survive underscore normalisation: `(long_hair:1.2)` also weights `long hair`;
  - on output every `\\`, `(`, `)`, `[`, `]` inside a tag or caption is escaped, so reading the
    output again gives the same tags, weights and extras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service.tipo.profile import Profile, ReferenceFailure

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
# The reference stores BREAK with the *int* -1, so it prints as `(BREAK:-1)`, not `-1.0`.
BREAK_WEIGHT = -1

# One token of the A1111 emphasis grammar. Alternatives are tried in this order.
_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]              # escaped literal: \( \) \[ \] \\
    | \\                        # any other backslash: dropped
    | \(                        # opens an emphasis group
    | \[                        # opens a de-emphasis group
    | :\s*([+-]?[.\d]+)\s*\)    # `:1.3)` closes an emphasis group with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+             # plain text
    | :
    """,
    re.X,
)
_BREAK_IN_TEXT = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (chunk, weight) runs exactly like A1111's `parse_prompt_attention`.

    Adjacent runs of equal weight are merged. A weight the grammar accepts but `float` does not
    (`(a:1.2.3)`) crashes the reference; here it raises `ReferenceFailure`.
    """
    return _parse_runs(text, bad_weight_is_text=False)


def _parse_runs(text: str, *, bad_weight_is_text: bool) -> list[tuple[str, float]]:
    runs: list[list] = []  # [chunk, weight]; lists because weights are multiplied in place
    open_round: list[int] = []  # index of the first run inside each open `(`
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, explicit_weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(runs))
        elif token == "[":
            open_square.append(len(runs))
        elif explicit_weight is not None and open_round:
            try:
                factor = float(explicit_weight)
            except ValueError:
                if not bad_weight_is_text:
                    raise ReferenceFailure(
                        f"prompt syntax: weight {explicit_weight!r} is not a number "
                        "(the reference crashes with ValueError)"
                    ) from None
                _append_text(runs, token)
            else:
                scale_from(open_round.pop(), factor)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            _append_text(runs, token)

    # Unclosed groups still count, round ones first (the order matters for float products).
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    if not runs:
        return [("", 1.0)]
    merged = [runs[0]]
    for chunk, weight in runs[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += chunk
        else:
            merged.append([chunk, weight])
    return [(chunk, weight) for chunk, weight in merged]


def _append_text(runs: list[list], text: str) -> None:
    """Plain text; every BREAK in it becomes its own run of weight -1."""
    for i, part in enumerate(_BREAK_IN_TEXT.split(text)):
        if i > 0:
            runs.append(["BREAK", BREAK_WEIGHT])
        runs.append([part, 1.0])


# --- fixed profile: protecting extra networks, prompt editing, qualifiers and BREAK ---------------

# Private-use characters stand in for protected tokens while the A1111 grammar runs; the grammar
# sees them as plain text. User input never keeps them (they are removed first).
_PROTECTED_MARK = "\ue001"
_BREAK_MARK = "\ue000"
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network token: <name:args>
_BREAK_WORD = re.compile(r"(?<!\w)BREAK(?!\w)")
_EDIT_WHEN = re.compile(r":\s*[+-]?[\d.]+\s*$")  # `[A:B:0.5]`, `[B:5]`: ends in `:number`
_GROUP_WEIGHT = re.compile(r":\s*[+-]?[.\d]+\s*$")  # `(x:1.2)`: ends in `:number`
_LONGEST_PROTECTED_GROUP = 256


@dataclass
class _Protected:
    text: str  # input with protected tokens replaced by marks
    tokens: list[str]  # the protected tokens, in input order
    is_extra_network: list[bool]


def _match_brackets(text: str) -> dict[int, int]:
    """Index of each `(` / `[` -> index of the bracket closing it, honouring nesting and escapes.

    Crossed brackets (`( [ ) ]`) close nothing: the groups open at that point stay unmatched and are
    left to the A1111 grammar. One pass, so long inputs stay linear.
    """
    closing = {"(": ")", "[": "]"}
    matches: dict[int, int] = {}
    open_groups: list[int] = []
    for i, char in _brackets(text):
        if char in closing:
            open_groups.append(i)
        elif open_groups:
            if char == closing[text[open_groups[-1]]]:
                matches[open_groups.pop()] = i
            else:
                open_groups.clear()
    return matches


# A `\\x` escape (a lone `\\` at the end too) or a bracket: the one bracket scanner (_brackets).
_ESCAPE_OR_BRACKET = re.compile(r"\\.?|[()\[\]]", re.S)


def _brackets(text: str):
    """(index, bracket) of every `(`, `)`, `[`, `]` that is not escaped, in order (the regex engine scans,
    so long texts cost little)."""
    for match in _ESCAPE_OR_BRACKET.finditer(text):
        if match.group(0)[0] != "\\":
            yield match.start(), match.group(0)


def _top_level_chars(inner: str) -> str:
    """The characters of `inner` outside nested brackets, escapes removed."""
    kept, depth, start = [], 0, 0
    for i, char in _brackets(inner):
        if depth == 0:
            kept.append(inner[start:i])
        if char in "([":
            depth += 1
        elif depth:
            depth -= 1
        elif depth == 0:
            kept.append(char)  # a closing bracket with nothing open is text
        start = i + 1
    if depth == 0:
        kept.append(inner[start:])
    return _ESCAPE.sub("", "".join(kept))


_ESCAPE = re.compile(r"\\.?", re.S)


def bracket_depth(text: str) -> int:
    """Deepest nesting of `(` and `[` together, as the A1111 grammar sees it: `\\(` is escaped, a
    closing bracket without an open one is text, and brackets never closed still count (the grammar's
    work grows with text length x this depth: the server bounds it)."""
    open_count = {"(": 0, "[": 0}
    opener = {")": "(", "]": "["}
    deepest = 0
    for _, char in _brackets(text):
        if char in open_count:
            open_count[char] += 1
            deepest = max(deepest, open_count["("] + open_count["["])
        elif open_count[opener[char]]:
            open_count[opener[char]] -= 1
    return deepest


def _is_prompt_editing(group: str) -> bool:
    """`[A:B:0.5]`, `[B:5]`, `[A::0.5]`, `[A|B]`; not `[x]` nor `[honkai: star rail]`."""
    top = _top_level_chars(group[1:-1])
    return "|" in top or bool(_EDIT_WHEN.search(top))


def _escape_all_parens(group: str) -> str:
    out, i = [], 0
    while i < len(group):
        if group[i] == "\\":
            out.append(group[i : i + 2])
            i += 2
            continue
        out.append("\\" + group[i] if group[i] in "()" else group[i])
        i += 1
    return "".join(out)


def _protect(text: str, *, for_tags: bool) -> _Protected:
    """Replace what the A1111 grammar would mangle with marks (or escapes, for qualifiers).

    For tags the marks are surrounded by commas so each becomes its own comma-separated piece.
    """
    text = text.replace(_PROTECTED_MARK, "").replace(_BREAK_MARK, "")
    mark = f",{_PROTECTED_MARK}," if for_tags else _PROTECTED_MARK
    out: list[str] = []
    tokens: list[str] = []
    is_extra_network: list[bool] = []
    piece_has_text = False  # tag text seen since the last comma or bracket
    group_ends = _match_brackets(text)
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i : i + 2])
            piece_has_text = True
            i += 2
            continue
        if char == "<" and (m := EXTRA_NETWORK.match(text, i)):
            out.append(mark)
            tokens.append(m.group(0))
            is_extra_network.append(True)
            i = m.end()
            piece_has_text = False
            continue
        if char == "B" and (m := _BREAK_WORD.match(text, i)):
            if for_tags:
                out.append(f",{_BREAK_MARK},")
            else:
                out.append(mark)
                tokens.append(m.group(0))
                is_extra_network.append(False)
            i = m.end()
            piece_has_text = False
            continue
        if char in "([":
            end = group_ends.get(i, len(text))
            # Qualifiers and prompt-editing tokens are short; a long group is left to A1111's
            # grammar (this also keeps deeply nested input from costing quadratic time).
            group = text[i : end + 1] if end - i <= _LONGEST_PROTECTED_GROUP else ""
            if char == "[" and group and _is_prompt_editing(group):
                out.append(mark)
                tokens.append(group)
                is_extra_network.append(False)
                i = end + 1
                piece_has_text = False
                continue
            if (
                for_tags
                and char == "("
                and group
                and piece_has_text
                and not _GROUP_WEIGHT.search(group[1:-1])
                and not EXTRA_NETWORK.search(group)
                and not _BREAK_WORD.search(group)
            ):
                out.append(_escape_all_parens(group))  # a qualifier: literal parentheses
                i = end + 1
                continue
        out.append(char)
        if char in ",()[]":
            piece_has_text = False
        elif not char.isspace():
            piece_has_text = True
        i += 1
    return _Protected("".join(out), tokens, is_extra_network)


# --- tags ------------------------------------------------------------------------------------------


@dataclass
class TagText:
    """The tag box, read.

    tags: the tags to classify and send to the model, in input order.
    weights: tag -> weight for weighted tags, keyed by the raw tag text (fixed: also by its
        underscore-normalised form, so a tag renamed by classification keeps its weight).
    extras: fixed only: extra-network and prompt-editing tokens, verbatim, to re-append to the
        final prompt.
    breaks_after: fixed only: the tag before each `BREAK` of the input (raw text, once per
        BREAK); `apply_weights` writes `BREAK` after that tag (or its underscore-normalised form).
    """

    tags: list[str]
    weights: dict[str, float]
    extras: list[str]
    breaks_after: list[str] = field(default_factory=list)


def read_tags(text: str, profile: Profile) -> TagText:
    """Tags of the tag box: each run stripped and split on commas, pieces stripped, empties dropped."""
    if profile.naive_prompt_syntax:
        return read_tags_like_reference(text)
    return _read_tags_fixed(text)


def _split_run(chunk: str) -> list[str]:
    return [piece.strip() for piece in chunk.strip().split(",") if piece.strip()]


def read_tags_like_reference(text: str, *, break_marks_previous_tag: bool = False) -> TagText:
    """The reference's loop over the emphasis runs. The ComfyUI node keeps `BREAK` as a tag weighted -1;
    the SD-WebUI script (`break_marks_previous_tag`) records the tag before it in `breaks_after`."""
    tags: list[str] = []
    weights: dict[str, float] = {}
    breaks_after: list[str] = []
    for chunk, weight in parse_attention(text):
        pieces = _split_run(chunk)
        if break_marks_previous_tag and chunk == "BREAK" and weight == BREAK_WEIGHT:
            if not tags:
                raise ReferenceFailure("WebUI: BREAK before any tag (the reference crashes with IndexError)")
            breaks_after.append(tags[-1])
            continue
        tags.extend(pieces)
        if weight != 1:
            for tag in pieces:
                weights[tag] = weight
    return TagText(tags=tags, weights=weights, extras=[], breaks_after=breaks_after)


def _read_tags_fixed(text: str) -> TagText:
    protected = _protect(text, for_tags=True)
    tokens = iter(zip(protected.tokens, protected.is_extra_network))
    tags: list[str] = []
    weights: dict[str, float] = {}
    extras: list[str] = []
    breaks_after: list[str] = []
    for chunk, weight in _parse_runs(protected.text, bad_weight_is_text=True):
        for piece in _split_run(chunk):
            if piece == _BREAK_MARK:
                if tags:
                    breaks_after.append(tags[-1])
            elif piece == _PROTECTED_MARK:
                token, is_extra_network = next(tokens)
                keep_verbatim = weight == 1 or is_extra_network
                extras.append(token if keep_verbatim else f"({token}:{_format_weight(weight)})")
            else:
                tags.append(piece)
                if weight != 1:
                    weights[piece] = weight
    raw_tags = set(tags)
    for tag, weight in list(weights.items()):
        renamed = tag.replace("_", " ")
        if renamed not in raw_tags and renamed not in weights:
            weights[renamed] = weight
    return TagText(tags=tags, weights=weights, extras=extras, breaks_after=breaks_after)


# --- captions --------------------------------------------------------------------------------------


@dataclass
class CaptionText:
    """The natural-language box, read: its plain text and the runs the user weighted."""

    text: str
    weighted: list[tuple[str, float]]


def read_caption(text: str, profile: Profile) -> CaptionText:
    """kgen: the runs' text concatenated (the node computes the weights but never applies them).

    fixed: the same, except extra networks, prompt editing and BREAK stay verbatim in the text;
    the weights are written back by `apply_weights`.
    """
    if profile.naive_prompt_syntax:
        runs = parse_attention(text)
    else:
        protected = _protect(text, for_tags=False)
        remaining = iter(protected.tokens)

        def restore(chunk: str) -> str:
            parts = chunk.split(_PROTECTED_MARK)
            return parts[0] + "".join(next(remaining) + part for part in parts[1:])

        runs = [
            (restore(chunk), weight)
            for chunk, weight in _parse_runs(protected.text, bad_weight_is_text=True)
        ]
    return CaptionText(
        text="".join(chunk for chunk, _ in runs),
        weighted=[(chunk, weight) for chunk, weight in runs if weight != 1],
    )


# --- writing back ----------------------------------------------------------------------------------


def escape_tag(tag: str) -> str:
    """Every `(` / `)` -> `\\(` / `\\)` (what the reference does to every output tag)."""
    return tag.replace("(", "\\(").replace(")", "\\)")


def _format_weight(weight: float) -> str:
    """Python's repr like the reference, but never an exponent the A1111 grammar cannot read."""
    text = repr(weight)
    if "e" in text:
        text = f"{weight:.20f}".rstrip("0").rstrip(".")
    return text


def _escape_literal(text: str) -> str:
    """Escape everything the A1111 grammar would read as syntax (fixed profile)."""
    return re.sub(r"([\\()\[\]])", r"\\\1", text)


def weave_like_reference(text: str, weighted: list[tuple[str, float]]) -> str:
    """The front ends' caption weighting: each weighted part, found in order, becomes `(part:w)`; the
    rest after the last part stays unescaped. A part that is empty or not found after the previous one
    crashes the reference (ValueError from `str.split`): `ReferenceFailure`."""
    out: list[str] = []
    rest = text
    for part, weight in weighted:
        before, found, rest_after = rest.partition(part) if part else (rest, "", "")
        if not found:
            raise ReferenceFailure(f"caption weights: weighted caption part {part!r} cannot be placed in order "
                                   "(the reference crashes with ValueError)")
        out.append(escape_tag(before) + f"({escape_tag(part)}:{weight})")
        rest = rest_after
    return "".join(out) + rest


def _write_caption(text: str, weighted: list[tuple[str, float]]) -> str:
    """fixed: escape the caption and wrap each weighted part, found in order, as `(part:w)`.

    Extra-network, prompt-editing and BREAK tokens are left intact and never matched inside. A
    caption that does not hold every weighted part in order is not the user's caption: it is only
    escaped (partial matches would weight random words).
    """
    protected = _protect(text, for_tags=False)  # tokens -> marks, so parts cannot match inside them
    out: list[str] = []
    rest = protected.text
    for part, weight in weighted:
        marked_part = _protect(part, for_tags=False).text
        before, found, rest_after = rest.partition(marked_part) if marked_part else (rest, "", "")
        if not found:
            out, rest = [], protected.text
            break
        out.append(_escape_literal(before) + f"({_escape_literal(marked_part)}:{_format_weight(weight)})")
        rest = rest_after
    pieces = ("".join(out) + _escape_literal(rest)).split(_PROTECTED_MARK)
    tokens = iter(protected.tokens)
    return pieces[0] + "".join(next(tokens) + piece for piece in pieces[1:])


def apply_weights(tag_map: dict, tags: TagText, caption: CaptionText, profile: Profile) -> dict:
    """A new map with every tag escaped and weighted tags written `(<escaped tag>:<weight>)`.

    kgen: the node's `apply_strength`. String values (captions) are returned unchanged because the
    node drops the NL weights; it still crashes in two cases (a weighted caption part that is
    empty, or present but out of order), which raise `ReferenceFailure` here.
    fixed: tags also find their weights through underscore normalisation, `BREAK` is written back
    after the tag it followed, and captions get their weights back when they still hold every
    weighted part in order (else they are only escaped).
    """
    if profile.naive_prompt_syntax:
        return _apply_weights_like_node(tag_map, tags, caption)
    result: dict = {}
    for key, value in tag_map.items():
        if isinstance(value, str):
            result[key] = _write_caption(value, caption.weighted)
        elif isinstance(value, list):
            breaks_left = list(tags.breaks_after)  # each BREAK once per list, after the tag's first copy
            written = []
            for tag in value:
                weight = tags.weights.get(tag)
                escaped = _escape_literal(tag)
                written.append(escaped if weight is None else f"({escaped}:{_format_weight(weight)})")
                follows_tag = [raw for raw in breaks_left if tag in (raw, raw.replace("_", " "))]
                written += ["BREAK"] * len(follows_tag)
                breaks_left = [raw for raw in breaks_left if raw not in follows_tag]
            result[key] = written
        else:
            result[key] = value
    return result


def _apply_weights_like_node(tag_map: dict, tags: TagText, caption: CaptionText) -> dict:
    result: dict = {}
    for key, value in tag_map.items():
        if isinstance(value, str):
            if all(part in value for part, _ in caption.weighted):
                weave_like_reference(value, caption.weighted)  # the node computes it (and may crash), then drops it
            result[key] = value
        elif isinstance(value, list):
            result[key] = [
                f"({escape_tag(tag)}:{tags.weights[tag]})" if tag in tags.weights else escape_tag(tag)
                for tag in value
            ]
        else:
            result[key] = value
    return result
