import pytest

from service.tipo.plan import (
    Operation,
    UnknownOperation,
    carry_over,
    general_from_tags,
    meta_from_tags,
    plan_request,
    plan_single_operation,
)

TAGS = {"special": ["1girl"], "general": ["solo"], "rating": ["safe"], "quality": [], "meta": ["highres"]}


def ops(plan):
    return [op.as_list() for op in plan.operations]


def test_meta_and_general_from_a_classified_map():
    assert general_from_tags(TAGS) == "1girl, solo"
    assert list(meta_from_tags(TAGS).items()) == [
        ("meta", "highres"), ("rating", "safe"), ("artist", None), ("characters", None), ("copyrights", None),
        ("quality", ""),
    ]


@pytest.mark.parametrize(
    "tags, nl, flags, expected",
    [
        ({}, "", {}, [[None, "short", True], ["tag_to_long", "very_long", True]]),
        (TAGS, "", {}, [[None, "short", True], ["tag_to_long", "very_long", False]]),
        (TAGS, "", {"expand_tags": False}, [["tag_to_long", "very_long", False]]),
        ({}, "A girl.", {"expand_prompt": False},
         [["long_to_tag", "short", False], ["short_to_tag_to_long", "very_long", False]]),
        (TAGS, "A girl.", {"expand_tags": False, "expand_prompt": False}, [["short_to_tag_to_long", "very_long", False]]),
        (TAGS, "A girl.", {"expand_prompt": False},
         [["short_to_tag", "short", True], ["short_to_tag_to_long", "very_long", False],
          ["short_to_tag_to_long", "very_long", False]]),
        (TAGS, "A girl.", {"expand_tags": False},
         [["tag_to_long", "short", True], ["tag_to_short_to_long", "very_long", False],
          ["tag_to_short_to_long", "very_long", False]]),
        (TAGS, "A girl.", {},
         [["short_to_tag", "short", True], ["tag_to_long", "very_long", True],
          ["short_to_tag_to_long", "very_long", False]]),
        (TAGS, "A girl.", {"tag_first": False},
         [["tag_to_long", "very_long", True], ["long_to_tag", "short", True],
          ["tag_to_short_to_long", "very_long", False]]),
        (TAGS, "   ", {}, [[None, "short", True], ["tag_to_long", "very_long", False]]),  # blank NL = no NL
    ],
)
def test_plan_table(tags, nl, flags, expected):
    assert ops(plan_request(tags, nl, tag_length="short", nl_length="very_long", **flags)) == expected


def test_extra_caption_pass_is_optional_and_lengths_default_to_long():
    assert ops(plan_request(TAGS, "", extra_caption=False)) == [[None, "long", True]]


@pytest.mark.parametrize(
    "operation, expected",
    [("None", [None, "short", True]), ("long_to_tag", ["long_to_tag", "short", True]),
     ("tag_to_short", ["tag_to_short", "very_long", True]), ("tag_to_long", ["tag_to_long", "very_long", True])],
)
def test_single_operation_always_expands_and_picks_the_length_of_its_output(operation, expected):
    assert ops(plan_single_operation(TAGS, "", operation, tag_length="short", nl_length="very_long")) == [expected]


def test_unknown_single_operation_is_rejected():
    with pytest.raises(UnknownOperation, match="short_to_long"):
        plan_single_operation(TAGS, "", "short_to_long")


def test_carry_over_renames_a_caption_that_continues_the_users_text():
    parsed = {"special": ["1girl"], "general": ["solo", "smile"], "extended": "", "generated": "A girl. She smiles"}
    assert carry_over(parsed, "A girl.") == ("1girl, solo, smile", "A girl. She smiles")
    assert "generated" not in parsed and parsed["extended"] == "A girl. She smiles"
    parsed = {"general": ["solo"], "extended": "", "generated": " A cat "}
    assert carry_over(parsed, "") == ("solo", "A cat")  # no user text: the caption is carried as generated


def test_operation_target():
    assert Operation("short_to_tag_to_long", "long", False).target == "long"
    assert Operation(None, "long", True).target == "tag"
