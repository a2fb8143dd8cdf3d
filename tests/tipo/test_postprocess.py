import random

import pytest

from service.tipo.errors import InputError
from service.tipo.postprocess import (
    BanList,
    InvalidBanTag,
    meets_target,
    postprocess,
    sentence_count,
)
from service.tipo.profile import FIXED, KGEN, ReferenceFailure
from service.tipo.request import ban_entries

NO_BAN = BanList.of(())


def parsed_tags(general, special=("1girl",)):
    return {"special": list(special), "general": list(general), "tag": list(special) + list(general)}


def test_ban_entry_is_a_substring_or_a_regex_anchored_at_the_start():
    ban = BanList.of(ban_entries(" sky , .*hair,, official "))
    assert ban.entries == ("sky", ".*hair", "official")
    assert [t for t in ["blue sky", "long hair", "hairband", "unofficial", "smile", "cloud"] if not ban.bans(t)] == [
        "smile", "cloud"]
    assert not BanList.of(["^h"]).bans("shirt") and BanList.of(["^h"]).bans("hat")


@pytest.mark.parametrize("profile", [KGEN, FIXED])
def test_invalid_ban_regex_is_a_clear_input_error_naming_the_entry_and_field(profile):
    with pytest.raises(InvalidBanTag, match=r"'\(unclosed'") as caught:
        BanList.of(["sky", "(unclosed"])
    assert isinstance(caught.value, InputError) and caught.value.entry == "(unclosed"
    assert caught.value.field == "ban_tags"


@pytest.mark.parametrize("entry", ["(a+)+", "(\\w*)*$", "x(y{1,}){2,}"])
def test_a_ban_regex_with_nested_quantifiers_is_refused_before_it_can_hang(entry):
    with pytest.raises(InvalidBanTag, match="exponential time"):
        BanList.of([entry])


def test_ban_regexes_without_nested_quantifiers_are_accepted():
    BanList.of(["(a+)?"])  # accepted (it matches the empty start of every tag, as in the reference)
    bans = BanList.of(["(ab|cd)+", ".*hair", "\\(a+\\)+"])
    assert bans.keep(["long hair", "cdcd x", "smile"]) == ["smile"]


def test_ban_applies_to_every_list_including_user_tags_but_not_captions():
    parsed = {"rating": ["sensitive"], "special": ["1girl"], "general": ["blue sky", "smile"],
              "extended": "The sky is blue", "tag": ["blue sky"]}
    result = postprocess(parsed, "1girl, blue sky", "The sky is blue.", "short_to_tag", "long",
                         BanList.of(["sky", "sens"]), random.Random(0), KGEN)
    assert result["general"] == ["smile"] and result["rating"] == [] and result["tag"] == []
    assert result["extended"] == "The sky is blue"


def test_input_tags_first_then_new_tags_shuffled_with_the_requests_rng():
    parsed = parsed_tags(["a1", "solo", "a2", "a3", "a4", "smile"])
    result = postprocess(parsed, "1girl, solo, smile", "", None, "long", NO_BAN, random.Random(5), KGEN)
    new = ["a1", "a2", "a3", "a4"]
    random.Random(5).shuffle(new)
    assert result["general"] == ["solo", "smile"] + new


def test_rng_is_not_touched_for_zero_or_one_new_item():
    rng = random.Random(1)
    postprocess(parsed_tags(["solo", "new"]), "1girl, solo", "", None, "long", NO_BAN, rng, KGEN)
    assert rng.random() == random.Random(1).random()


def test_kgen_tag_cap_is_the_sentence_cap_and_fixed_uses_the_tag_cap():
    parsed = parsed_tags([f"t{i}" for i in range(60)])
    kgen = postprocess(parsed, "1girl", "", None, "long", NO_BAN, random.Random(0), KGEN)
    fixed = postprocess(parsed, "1girl", "", None, "long", NO_BAN, random.Random(0), FIXED)
    assert len(kgen["general"]) == 8  # TARGET_TIPO_NL_MAX["long"]
    assert len(fixed["general"]) == 54  # TARGET_TIPO_MAX["long"]


def test_continued_sentence_replaces_the_last_input_sentence_and_no_final_period():
    parsed = {"general": [], "extended": "A girl. She walks in the park. It rains. The end."}
    result = postprocess(parsed, "", "A girl. She walks", "short_to_tag", "long", NO_BAN, random.Random(0), KGEN)
    assert result["extended"].startswith("A girl. She walks in the park. ")
    assert result["extended"].endswith("The end")


def test_generated_becomes_extended_when_it_continues_user_text():
    parsed = {"general": [], "generated": "A girl. She smiles."}
    result = postprocess(parsed, "", "A girl.", "tag_to_long", "long", NO_BAN, random.Random(0), KGEN)
    assert "generated" not in result and result["extended"] == "A girl. She smiles"


@pytest.mark.parametrize("nl", ["", "   ", "...", "."])
def test_short_caption_without_user_sentences(nl):
    parsed = {"general": [], "extended": "A girl sings. Loudly."}
    with pytest.raises(ReferenceFailure, match="IndexError"):
        postprocess(parsed, "", nl, "tag_to_short_to_long", "long", NO_BAN, random.Random(0), KGEN)
    fixed = postprocess(parsed, "", nl, "tag_to_short_to_long", "long", NO_BAN, random.Random(0), FIXED)
    assert fixed["extended"] == "A girl sings. Loudly"


def test_a_caption_line_parsed_as_a_list():
    parsed = {"general": [], "extended": ["a", "b"]}
    with pytest.raises(ReferenceFailure, match="AttributeError"):
        postprocess(parsed, "", "x", "short_to_tag", "long", NO_BAN, random.Random(0), KGEN)
    assert postprocess(parsed, "", "x", "short_to_tag", "long", NO_BAN, random.Random(0), FIXED)["extended"] == "x. a, b"


def test_retry_criterion_counts_like_the_reference():
    assert sentence_count("") == 1 and sentence_count("A. B") == 2 and sentence_count("A. B.") == 3
    assert meets_target({"extended": ""}, "short", "very_short")  # "" counts as one sentence
    assert not meets_target({"special": ["1girl"], "general": ["a"] * 34}, "tag", "long")
    assert meets_target({"special": ["1girl"], "general": ["a"] * 35}, "tag", "long")
    # target long without a generated caption falls back to the extended one
    assert meets_target({"extended": "A. B. C. D"}, "long", "long")
