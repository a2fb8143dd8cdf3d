from service.tipo.template import build_prompt, slots_of, target_slot

META = {"meta": "", "rating": None, "artist": None, "characters": None, "copyrights": None, "quality": "",
        "aspect_ratio": "1.0"}


def test_slots_follow_the_mode_name():
    assert slots_of(None) == ["tag"]
    assert slots_of("short_to_tag_to_long") == ["short", "tag", "long"]
    assert target_slot("long_to_tag") == "tag"
    assert target_slot(None) == "tag"


def test_expand_ends_with_the_given_content_and_fill_with_the_bare_key():
    assert build_prompt(META, "1girl", "", None, "long", True) == "aspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl"
    assert build_prompt(META, "1girl", "", "tag_to_long", "long", False).endswith("\ntag: 1girl\nlong:")


def test_meta_lines_follow_the_mapping_and_skip_empty_values():
    meta = {"rating": "safe", "artist": "", "quality": None, "aspect_ratio": "0.7"}
    assert build_prompt(meta, "", "", None, "short", True) == "rating: safe\naspect_ratio: 0.7\ntarget: <|short|>"


def test_blank_content_is_skipped_but_a_blank_middle_slot_is_written():
    prompt = build_prompt(META, "   ", "A girl.", "short_to_tag_to_long", "long", False)
    assert prompt.endswith("short: A girl.\ntag: \nlong:")
    # A blank last slot is not written at all; expand then trims the trailing newline.
    assert build_prompt(META, "  ", "", None, "long", True) == "aspect_ratio: 1.0\ntarget: <|long|>"


def test_nl_goes_to_short_only_when_the_mode_mentions_short():
    assert "\nlong: A girl." in build_prompt(META, "1girl", "A girl.", "tag_to_long", "long", True)
    assert "\nshort: A girl." in build_prompt(META, "1girl", "A girl.", "short_to_tag", "long", True)
    # Without a mode the NL is placed in `long`, which is not a slot of plain tag expansion: dropped.
    assert "A girl" not in build_prompt(META, "1girl", "A girl.", None, "long", True)


def test_target_tokens_without_length_and_with_gen_meta():
    assert "\ntarget: <|tag_to_long|>\n" in build_prompt(META, "1girl", "", "tag_to_long", "", False)
    assert "\ntarget: <|long|> <|gen_meta|>\n" in build_prompt(META, "1girl", "", None, "long", False, True)
