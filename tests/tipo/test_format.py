import pytest

from service.tipo.constants import FORMAT_PRESETS
from service.tipo.format import UnknownFormat, addon_of, apply_format, resolve_format, unformatted, with_final_period
from service.tipo.profile import FIXED, KGEN

BOTH = FORMAT_PRESETS["Both + generated NL"]
DEFAULT = FORMAT_PRESETS["ComfyUI node default"]
TAGS = {"special": ["1girl"], "characters": [], "copyrights": [], "artist": [], "general": ["solo", "smile"],
        "quality": [], "meta": [], "rating": ["safe"]}


def test_resolve_format_by_name_or_template():
    assert resolve_format("NL only (Tag to NL)", FIXED) == "<|extended|>."
    assert resolve_format("<|general|>!", FIXED) == "<|general|>!"
    with pytest.raises(UnknownFormat, match="Both, tag first"):
        resolve_format("Both, tag first", FIXED)  # a misspelt preset, not a template


def test_kgen_prints_a_format_without_placeholders_literally():
    assert resolve_format("Both, tag first", KGEN) == "Both, tag first"
    assert apply_format(TAGS, resolve_format("just this", KGEN), KGEN) == "just this"


def test_kgen_prints_the_caption_twice_and_fixed_once():
    tag_map = {**TAGS, "generated": "A girl", "extended": ""}
    assert apply_format(tag_map, BOTH, KGEN).count("A girl") == 2
    assert apply_format(tag_map, BOTH, FIXED).count("A girl") == 1


def test_kgen_doubles_a_final_period_and_fixed_does_not():
    tag_map = {**TAGS, "extended": "A girl in a library."}
    assert "library..\n" in apply_format(tag_map, DEFAULT, KGEN)
    assert "library.\n" in apply_format(tag_map, DEFAULT, FIXED)
    assert apply_format({"extended": "Is she happy?"}, "<|extended|>.", FIXED) == "Is she happy?"
    assert apply_format({"extended": "A girl"}, "<|extended|>.", FIXED) == "A girl."


def test_kgen_leaves_a_lone_period_for_an_empty_caption_and_fixed_does_not():
    tag_map = {**TAGS, "extended": ""}
    assert apply_format(tag_map, DEFAULT, KGEN) == "1girl, \n\nsolo, smile,\n\n.\n\nsafe"
    assert apply_format(tag_map, DEFAULT, FIXED) == "1girl, \n\nsolo, smile,\n\nsafe"


def test_empty_values_take_their_comma_and_leftover_placeholders_vanish():
    form = "<|special|>, <|artist|>, <|general|>, <|nothing|>"
    assert apply_format({"special": ["1girl"], "artist": [], "general": ["solo"]}, form, KGEN) == "1girl, solo"


@pytest.mark.parametrize("text, expected", [("", ""), ("A girl", "A girl."), ("A girl.", "A girl."), ("Why?", "Why?")])
def test_with_final_period(text, expected):
    assert with_final_period(text) == expected


def test_addon_new_tags_per_category_and_the_caption():
    user = {"special": ["1girl"], "general": ["solo"], "rating": []}
    final = {"rating": ["safe"], "special": ["1girl", "2girls"], "general": ["solo", "smile"], "tag": ["x"],
             "generated": "A girl", "extended": ""}
    kgen = addon_of(final, user, KGEN)
    assert kgen.tags == ["safe", "2girls", "smile"]
    assert kgen.nl == ""  # the empty extended, visited last, overwrites the generated caption
    assert addon_of(final, user, FIXED).nl == "A girl"


def test_unformatted_prompt_joins():
    assert unformatted("", ["smile"], "A girl", KGEN) == ", smile\nA girl"
    assert unformatted("", ["smile"], "A girl", FIXED) == "smile\nA girl"
    assert unformatted("1girl", [], "", FIXED) == "1girl\n"
