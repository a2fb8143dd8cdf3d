import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.tipo.profile import FIXED, KGEN, ReferenceFailure
from service.tipo.syntax import (
    CaptionText,
    TagText,
    apply_weights,
    escape_tag,
    parse_attention,
    read_caption,
    read_tags,
)
from tests.shared import vector


# ---------------------------------------------------------------------------------------------------
# Third-party test oracle (Apache-2.0): copied verbatim from z-tipo-extension nodes/tipo.py
# (commit b217ac6b129c74b8343d13b23c42f019977c1684, same algorithm as d6bbb86), which itself copies
# A1111's parse_prompt_attention. Used ONLY here, to check our own implementation against it.
# ---------------------------------------------------------------------------------------------------
attn_syntax = (
    r"\\\(|"
    r"\\\)|"
    r"\\\[|"
    r"\\]|"
    r"\\\\|"
    r"\\|"
    r"\(|"
    r"\[|"
    r":\s*([+-]?[.\d]+)\s*\)|"
    r"\)|"
    r"]|"
    r"[^\\()\[\]:]+|"
    r":"
)
re_attention = re.compile(
    attn_syntax,
    re.X,
)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    res = []
    round_brackets = []
    square_brackets = []

    round_bracket_multiplier = 1.1
    square_bracket_multiplier = 1 / 1.1

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        text = m.group(0)
        weight = m.group(1)

        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and round_brackets:
            multiply_range(round_brackets.pop(), round_bracket_multiplier)
        elif text == "]" and square_brackets:
            multiply_range(square_brackets.pop(), square_bracket_multiplier)
        else:
            parts = re.split(re_break, text)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, round_bracket_multiplier)

    for pos in square_brackets:
        multiply_range(pos, square_bracket_multiplier)

    if len(res) == 0:
        res = [["", 1.0]]

    # merge runs of identical weights
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1

    return res


def apply_strength(tag_map, strength_map, strength_map_nl):
    for cate in tag_map.keys():
        new_list = []
        # Skip natural language output at first
        if isinstance(tag_map[cate], str):
            # Ensure all the parts in the strength_map are in the prompt
            if all(part in tag_map[cate] for part, strength in strength_map_nl):
                org_prompt = tag_map[cate]
                new_prompt = ""
                for part, strength in strength_map_nl:
                    before, org_prompt = org_prompt.split(part, 1)
                    new_prompt += before.replace("(", "\\(").replace(")", "\\)")
                    part = part.replace("(", "\\(").replace(")", "\\)")
                    new_prompt += f"({part}:{strength})"
                new_prompt += org_prompt
            else:
                # Fix: ensure fallback if new_prompt is not constructed
                tag_map[cate] = tag_map[cate]
            continue

        for org_tag in tag_map[cate]:
            tag = org_tag.replace("(", "\\(").replace(")", "\\)")
            if org_tag in strength_map:
                new_list.append(f"({tag}:{strength_map[org_tag]})")
            else:
                new_list.append(tag)
        tag_map[cate] = new_list
    return tag_map


def node_read_boxes(tags, nl_prompt):
    """The node's TIPO.execute lines that turn the two boxes into tags / weights / NL."""
    prompt_parse_strength = parse_prompt_attention(tags)
    nl_prompt_parse_strength = parse_prompt_attention(nl_prompt)
    nl_prompt = ""
    strength_map_nl = []
    for part, strength in nl_prompt_parse_strength:
        nl_prompt += part
        if strength == 1:
            continue
        strength_map_nl.append((part, strength))
    all_tags = []
    strength_map = {}
    for part, strength in prompt_parse_strength:
        part_tags = [tag.strip() for tag in part.strip().split(",") if tag.strip()]
        all_tags.extend(part_tags)
        if strength == 1:
            continue
        for tag in part_tags:
            strength_map[tag] = strength
    return all_tags, strength_map, nl_prompt, strength_map_nl


# --- end of third-party oracle ----------------------------------------------------------------------


def as_runs(oracle_result):
    """Oracle lists -> our tuples, with the weights' repr (so int -1 vs -1.0 is caught)."""
    return [(text, repr(weight)) for text, weight in oracle_result]


def ours(text):
    return [(chunk, repr(weight)) for chunk, weight in parse_attention(text)]


# The node's doctests.
@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_parse_attention_doctests(text, expected):
    assert parse_attention(text) == expected


def test_break_is_a_run_of_int_minus_one():
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1), ("b", 1.0)]
    assert repr(parse_attention("a BREAK b")[1][1]) == "-1"
    assert parse_attention("") == [("", 1.0)]
    assert parse_attention("((x))") == [("x", 1.2100000000000002)]


def test_unreadable_weight_is_a_reference_failure():
    with pytest.raises(ValueError):
        parse_prompt_attention("(a:1.2.3)")
    with pytest.raises(ReferenceFailure):
        parse_attention("(a:1.2.3)")
    # Without an open group the same token is plain text, in both.
    assert ours("a:1.2.3)") == as_runs(parse_prompt_attention("a:1.2.3)"))


FRAGMENTS = [
    "a", "b", "cat", " ", "  ", ",", ", ", "(", ")", "[", "]", ":", "\\", "\\(", "\\)", "\\[",
    "\\]", "\\\\", ".", "1", "0.5", ":1.2)", ":0)", ": -1.5 )", "BREAK", " BREAK ", "xBREAK", "_",
    "<lora:x:0.8>", "|", "\n", "\t",
]
prompt_text = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(prompt_text, st.text(max_size=40)))
@example("(BREAK)")
@example("a (BREAK:1)")
@example("[(x BREAK y:0.5)]")
def test_parse_attention_matches_the_node(text):
    try:
        expected = as_runs(parse_prompt_attention(text))
    except ValueError:
        with pytest.raises(ReferenceFailure):
            parse_attention(text)
        return
    assert ours(text) == expected


@settings(max_examples=800, deadline=None)
@given(prompt_text, prompt_text)
def test_kgen_boxes_match_the_node(tags_text, nl_text):
    try:
        all_tags, strength_map, nl_prompt, strength_map_nl = node_read_boxes(tags_text, nl_text)
    except ValueError:
        with pytest.raises(ReferenceFailure):
            read_tags(tags_text, KGEN)
            read_caption(nl_text, KGEN)
        return
    tag_text = read_tags(tags_text, KGEN)
    caption = read_caption(nl_text, KGEN)
    assert tag_text.tags == all_tags
    assert {k: repr(v) for k, v in tag_text.weights.items()} == {k: repr(v) for k, v in strength_map.items()}
    assert tag_text.extras == []
    assert caption.text == nl_prompt
    assert caption.weighted == strength_map_nl


@settings(max_examples=800, deadline=None)
@given(prompt_text, prompt_text, st.lists(st.sampled_from(["a", "b(c)", "x)", "(y", "cat", "BREAK"]), max_size=6))
def test_kgen_apply_weights_matches_apply_strength(tags_text, nl_text, model_tags):
    try:
        _, strength_map, nl_prompt, strength_map_nl = node_read_boxes(tags_text, nl_text)
    except ValueError:
        return
    tag_text = read_tags(tags_text, KGEN)
    caption = read_caption(nl_text, KGEN)
    tag_map = {"general": tag_text.tags + model_tags, "extended": nl_prompt, "generated": "a (b) cat"}
    try:
        expected = apply_strength(json.loads(json.dumps(tag_map)), strength_map, strength_map_nl)
    except ValueError:
        with pytest.raises(ReferenceFailure):
            apply_weights(tag_map, tag_text, caption, KGEN)
        return
    before = json.dumps(tag_map)
    assert apply_weights(tag_map, tag_text, caption, KGEN) == expected
    assert json.dumps(tag_map) == before  # returns a new map


def test_kgen_caption_weights_crash_like_the_node():
    # Both parts are in the caption, but "b" only before "a": the node's split() unpack fails.
    caption = read_caption("(b) and (a)", KGEN)
    tag_text = read_tags("", KGEN)
    with pytest.raises(ReferenceFailure):
        apply_weights({"extended": "a then b"}, tag_text, caption, KGEN)
    # In order, the node computes the weighted text and drops it.
    assert apply_weights({"extended": "b and a"}, tag_text, caption, KGEN) == {"extended": "b and a"}


def test_escape_tag():
    assert escape_tag("ask (askzy)") == "ask \\(askzy\\)"
    assert escape_tag("\\(^o^)/") == "\\\\(^o^\\)/"


# --- the recorded e2e vectors -----------------------------------------------------------------------


def test_vector_comfy_05_kgen():
    inputs = vector("e2e_comfy-05")["inputs"]
    tag_text = read_tags(inputs["tags"], KGEN)
    assert tag_text.tags == ["1girl", "hatsune_miku", "looking_at_viewer", "^_^", "ask_", "askzy", "highres"]
    assert tag_text.weights == {"askzy": 1.1}
    written = apply_weights({"general": ["looking at viewer", "^_^", "ask", "askzy"]}, tag_text,
                            read_caption("", KGEN), KGEN)
    # user_prompt: "...looking at viewer, ^_^, ask, (askzy:1.1),..."
    assert ", ".join(written["general"]) in vector("e2e_comfy-05")["expected"]["user_prompt"]


def test_vector_comfy_10_kgen_and_fixed():
    case = vector("e2e_comfy-10")
    tag_text = read_tags(case["inputs"]["tags"], KGEN)
    assert tag_text.tags == ["1girl", "smile", "blue eyes", "long_hair", "shrug (clothing)"]
    assert tag_text.weights == {"smile": 0.9090909090909091, "blue eyes": 1.2100000000000002, "long_hair": 1.2}
    general = ["smile", "blue eyes", "long hair", "shrug (clothing)"]  # as classified
    written = ", ".join(apply_weights({"general": general}, tag_text, read_caption("", KGEN), KGEN)["general"])
    assert written == "(smile:0.9090909090909091), (blue eyes:1.2100000000000002), long hair, shrug \\(clothing\\)"
    assert written in case["expected"]["user_prompt"]

    fixed = read_tags(case["inputs"]["tags"], FIXED)
    assert fixed.tags == tag_text.tags
    written = ", ".join(apply_weights({"general": general}, fixed, read_caption("", FIXED), FIXED)["general"])
    assert written == (
        "(smile:0.9090909090909091), (blue eyes:1.2100000000000002), (long hair:1.2), shrug \\(clothing\\)"
    )


# --- fixed profile ----------------------------------------------------------------------------------


def test_fixed_keeps_qualifiers_extras_and_break():
    text = "1girl, ask_(askzy), shrug (clothing), march 7th (honkai: star rail), <lora:x:0.8>, solo BREAK " \
           "outdoors, [A:B:0.5], [cat|dog], [day:night:5], ([red:blue:0.3]:1.2), (smile), [frown], BREAK"
    tag_text = read_tags(text, FIXED)
    assert tag_text.tags == ["1girl", "ask_(askzy)", "shrug (clothing)", "march 7th (honkai: star rail)", "solo",
                             "outdoors", "smile", "frown"]
    assert tag_text.extras == ["<lora:x:0.8>", "[A:B:0.5]", "[cat|dog]", "[day:night:5]", "([red:blue:0.3]:1.2)"]
    assert tag_text.weights == {"smile": 1.1, "frown": 1 / 1.1}
    assert tag_text.breaks_after == ["solo", "frown"]


def test_fixed_qualifier_rule():
    # `(x)` right after tag text in the same piece is a qualifier; at the start of a piece it is emphasis.
    assert read_tags("(smile), a (b)", FIXED).tags == ["smile", "a (b)"]
    assert read_tags("(smile), a (b)", FIXED).weights == {"smile": 1.1}
    # With a weight it is emphasis, as in A1111.
    assert read_tags("ask_(askzy:1.2)", FIXED).tags == ["ask_", "askzy"]
    # Nested in an emphasis group: the outer group weights the qualified tag.
    assert read_tags("(ask_(askzy):1.3)", FIXED).weights == {"ask_(askzy)": 1.3, "ask (askzy)": 1.3}
    # Escaped parentheses keep working.
    assert read_tags("shrug \\(clothing\\)", FIXED).tags == ["shrug (clothing)"]
    # An unclosed `(` stays A1111 emphasis.
    assert read_tags("a, (b", FIXED).weights == {"b": 1.1}


def test_fixed_underscore_weights_and_breaks():
    tag_text = read_tags("(long_hair:1.2) BREAK, long_hair, blue_eyes", FIXED)
    assert tag_text.weights == {"long_hair": 1.2, "long hair": 1.2}
    out = apply_weights({"general": ["long hair", "blue eyes"]}, tag_text, read_caption("", FIXED), FIXED)
    assert out == {"general": ["(long hair:1.2)", "BREAK", "blue eyes"]}
    # The renamed form of one tag never steals the weight of a tag the user wrote that way.
    assert read_tags("(long_hair:1.2), long hair", FIXED).weights == {"long_hair": 1.2}


def test_fixed_bad_weight_is_text_not_a_crash():
    assert read_tags("(a:1.2.3), b", FIXED).tags == ["a:1.2.3)", "b"]


def test_caption_kgen_drops_break_spacing_fixed_keeps_syntax():
    text = "A (girl) BREAK walks <lora:x:1> [a:b:0.5] ((fast))."
    assert read_caption(text, KGEN) == CaptionText(
        "A girlBREAKwalks <lora:x:1> a:b:0.5 fast.",
        [("girl", 1.1), ("BREAK", -1), ("a:b:0.5", 1 / 1.1), ("fast", 1.2100000000000002)],
    )
    fixed = read_caption(text, FIXED)
    assert fixed == CaptionText("A girl BREAK walks <lora:x:1> [a:b:0.5] fast.",
                                [("girl", 1.1), ("fast", 1.2100000000000002)])
    out = apply_weights({"extended": fixed.text + " A (note)."}, read_tags("", FIXED), fixed, FIXED)
    assert out == {"extended": "A (girl:1.1) BREAK walks <lora:x:1> [a:b:0.5] (fast:1.2100000000000002). A \\(note\\)."}
    # A caption that lost the weighted parts' order gets no weights (and no crash).
    assert apply_weights({"extended": "fast (girl)"}, read_tags("", FIXED), fixed, FIXED) == {
        "extended": "fast \\(girl\\)"
    }


# Round trip: read (fixed) -> write back -> read again gives the same tags, weights, extras, BREAKs.
words = st.text(alphabet="abcxyz ", min_size=1, max_size=8).map(str.strip).filter(bool)
plain_tag = words
qualified_tag = st.tuples(words, st.sampled_from([" ", "_", ""]), words).map(lambda t: f"{t[0]}{t[1]}({t[2]})")
extra = st.one_of(
    st.tuples(st.sampled_from(["lora", "lyco", "hypernet"]), words.map(lambda w: w.replace(" ", "_")),
              st.sampled_from(["0.8", "1", "-0.5"])).map(lambda t: f"<{t[0]}:{t[1]}:{t[2]}>"),
    st.tuples(words, words, st.sampled_from(["0.5", "5", "0.25"])).map(lambda t: f"[{t[0]}:{t[1]}:{t[2]}]"),
    st.tuples(words, words).map(lambda t: f"[{t[0]}|{t[1]}]"),
)
weight = st.sampled_from(["1.2", "0.8", "1.5", "0.05"])
item = st.one_of(
    plain_tag.map(lambda t: ("tag", t, t)),
    qualified_tag.map(lambda t: ("tag", t, t)),
    st.tuples(st.one_of(plain_tag, qualified_tag), weight).map(lambda t: ("tag", t[0], f"({t[0]}:{t[1]})")),
    plain_tag.map(lambda t: ("tag", t, f"(({t}))")),
    plain_tag.map(lambda t: ("tag", t, f"[{t}]")),
    extra.map(lambda e: ("extra", e, e)),
    st.just(("break", "BREAK", "BREAK")),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(item, max_size=12))
def test_fixed_round_trip(items):
    text = ", ".join(written for _, _, written in items)
    tag_text = read_tags(text, FIXED)
    expected_tags = [value for kind, value, _ in items if kind == "tag"]
    assert tag_text.tags == expected_tags
    assert tag_text.extras == [value for kind, value, _ in items if kind == "extra"]

    written = apply_weights({"general": tag_text.tags}, tag_text, read_caption("", FIXED), FIXED)["general"]
    output = ", ".join(written + tag_text.extras)
    again = read_tags(output, FIXED)
    assert again.tags == tag_text.tags
    assert again.extras == tag_text.extras
    assert again.weights == tag_text.weights
    # Same BREAKs after the same tags (with a repeated tag they gather after its first copy).
    assert sorted(again.breaks_after) == sorted(tag_text.breaks_after)
    if len(set(tag_text.tags)) == len(tag_text.tags):
        assert again.breaks_after == tag_text.breaks_after
    for extra_token in tag_text.extras:
        assert extra_token in output


caption_piece = st.one_of(
    words,
    extra,
    st.tuples(words, weight).map(lambda t: f"({t[0]}:{t[1]})"),
    words.map(lambda w: f"{w} \\(note\\)"),
    st.just(" BREAK "),
    st.just(". "),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(caption_piece, max_size=10).map(" ".join))
def test_fixed_caption_round_trip(text):
    caption = read_caption(text, FIXED)
    output = apply_weights({"extended": caption.text}, read_tags("", FIXED), caption, FIXED)["extended"]
    again = read_caption(output, FIXED)
    assert again.text == caption.text
    assert [w for _, w in again.weighted] == [w for _, w in caption.weighted]


def test_tag_text_defaults():
    assert TagText(tags=[], weights={}, extras=[]).breaks_after == []


fixed_fragments = st.lists(
    st.sampled_from(FRAGMENTS + ["[a:b:0.5]", "[a|b]", "x (y)", "<hypernet:h:1>", "\ue000", "\ue001"]),
    max_size=30,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(fixed_fragments, st.text(max_size=40)), st.one_of(fixed_fragments, st.text(max_size=40)))
def test_fixed_never_fails(tags_text, nl_text):
    tag_text = read_tags(tags_text, FIXED)
    caption = read_caption(nl_text, FIXED)
    written = apply_weights({"general": tag_text.tags, "extended": caption.text}, tag_text, caption, FIXED)
    assert len(written["general"]) == len(tag_text.tags) + len(tag_text.breaks_after)
