from service.tipo.parse import clean_model_text, parse_output
from service.tipo.profile import FIXED, KGEN


def test_kgen_strips_characters_not_markers():
    # str.strip("<s>") strips the characters <, s, >: the last tag loses its "s" (docs/REFERENCE.md §7-1).
    assert clean_model_text("tag: 1girl, twintails", KGEN) == "tag: 1girl, twintail"
    # ... with or without the EOS marker (the strip goes on past "</").
    assert clean_model_text("<s> tag: 1girl, twintails</s>", KGEN) == "tag: 1girl, twintail"
    assert clean_model_text("long: <|empty|>", KGEN) == "long: <|empty|"


def test_fixed_removes_only_the_bos_and_eos_markers():
    assert clean_model_text("tag: 1girl, twintails", FIXED) == "tag: 1girl, twintails"
    assert clean_model_text("<s> tag: 1girl, twintails</s>", FIXED) == "tag: 1girl, twintails"
    assert clean_model_text("long: <|empty|>", FIXED) == "long: <|empty|>"


def test_final_empty_marker_is_kept_as_text_in_kgen_and_dropped_in_fixed(tag_index):
    text = "target: <|long|>\ntag: 1girl\nlong: <|empty|>"
    assert parse_output(text, tag_index, KGEN)["generated"] == "<|empty|"
    assert "generated" not in parse_output(text, tag_index, FIXED)


def test_fields_lists_captions_and_first_occurrence(tag_index):
    text = (
        "rating: safe\ntarget: <|long|>\ntag: sensitive, 1girl, long_hair, hatsune miku\n"
        "long: A girl.\nShe sings.\nNote: a caption line with a colon.\nlong: ignored\ntag: ignored"
    )
    parsed = parse_output(text, tag_index, KGEN)
    assert parsed["rating"] == ["safe", "sensitive"]  # the tag line's rating is merged into the meta line's
    assert parsed["general"] == ["long hair"]
    assert parsed["characters"] == ["hatsune miku"]
    assert parsed["generated"] == "A girl.\nShe sings."  # continuation lines belong to the field
    assert parsed["Note"] == ["a caption line with a colon."]  # a line with "key:" starts a new field
    assert parsed["tag"] == ["sensitive", "1girl", "long_hair", "hatsune miku"]


def test_empty_short_and_long_are_dropped(tag_index):
    parsed = parse_output("short: <|empty|>\ntag: 1girl\nlong:", tag_index, FIXED)
    assert "extended" not in parsed and "generated" not in parsed
