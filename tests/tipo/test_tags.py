
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.tipo.tags import (
    CATEGORY_ORDER,
    CLASSIFY_KEYS,
    QUALITY_TAGS,
    RATING_TAGS,
    SPECIAL_TAGS,
    TagIndex,
    classify,
)
from tests.shared import load_vectors, vector



@pytest.fixture(scope="module")
def index(tag_index):
    return tag_index


@pytest.fixture(scope="module")
def reference():
    """tipo-kgen's own classifier (kgen.formatter imports no torch); the oracle."""
    from kgen import formatter, metainfo

    return formatter, metainfo


def test_hard_coded_lists_match_kgen_metainfo(reference):
    _, metainfo = reference
    assert list(SPECIAL_TAGS) == metainfo.SPECIAL
    assert list(QUALITY_TAGS) == metainfo.POSSIBLE_QUALITY_TAGS
    assert list(RATING_TAGS) == metainfo.RATING_TAGS
    assert (len(SPECIAL_TAGS), len(QUALITY_TAGS), len(RATING_TAGS)) == (22, 26, 6)


def test_sizes(index):
    assert index.sizes() == {
        "copyrights": 52594, "meta": 939, "artist": 580988, "characters": 322737,
        "special": 22, "quality": 26, "rating": 6,
    }  # fmt: skip


@pytest.mark.parametrize("case", load_vectors("classify"),
                         ids=lambda v: v["id"])
def test_classify_vectors(index, case):
    result = classify(case["inputs"]["tags"], index)
    assert result == case["expected"]
    assert list(result) == list(CLASSIFY_KEYS)


def test_category(index):
    assert index.category("hatsune miku") == "characters"
    assert index.category("Hatsune Miku") is None  # case-sensitive
    assert index.category("hatsune_miku") is None  # exact: classify tries the spaced form
    assert index.category("ask (askzy)") == "artist"
    assert index.category("general") == "rating"
    assert index.category("score_9") == "quality"
    assert index.category("") is None
    assert index.category("hatsune miku\nvocaloid") is None


def test_every_sampled_list_entry_is_found(index, reference):
    formatter, _ = reference
    for category in CATEGORY_ORDER:
        entries = sorted(formatter.tag_lists[category])
        for tag in entries[:: max(1, len(entries) // 3000)] + entries[-3:]:
            assert index.category(tag) == category, tag
            assert index.contains(category, tag)


def test_small_index_from_tags():
    small = TagIndex.from_tags({"artist": ["b", "a", "c d"], "meta": ["highres"]})
    assert small.sizes()["artist"] == 3 and small.sizes()["characters"] == 0
    assert [small.category(t) for t in ["a", "b", "c d", "c", "", "highres", "1girl"]] == [
        "artist", "artist", "artist", None, None, "meta", "special"
    ]
    assert classify(["c_d", " x_y ", "a_bcd"], small)["artist"] == ["c d"]
    with pytest.raises(ValueError):
        TagIndex.from_tags({"general": ["x"]})


def test_list_files_with_any_newline():
    index = TagIndex.from_list_files([("copyrights", b"b\r\na\r\n\r\nc\rd\ne\r\n")])
    assert [index.contains("copyrights", t) for t in "abcde"] == [True] * 5
    assert not index.contains("copyrights", "")


@pytest.fixture(scope="module")
def real_tag_samples(reference):
    formatter, _ = reference
    samples = []
    for category in CATEGORY_ORDER:
        entries = sorted(formatter.tag_lists[category])
        samples += entries[:: max(1, len(entries) // 400)]
    return samples


def variants(tag: str):
    return st.sampled_from([
        tag, tag.replace(" ", "_"), tag.upper(), tag.title(), f"  {tag} ", tag + "s", tag[:-1], tag[:3],
    ])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_classify_matches_seperate_tags(index, reference, real_tag_samples, data):
    formatter, _ = reference
    tags = data.draw(st.lists(
        st.one_of(
            st.sampled_from(real_tag_samples).flatmap(variants),
            st.text(alphabet="ab_ ^<>-()", max_size=6),
            st.sampled_from(["", " ", "^_^", ">_<", "o_o", "score_9", "score 9", "source_anime", "1girl", "general"]),
        ),
        max_size=20,
    ))
    expected = formatter.seperate_tags(tags)
    ours = classify(tags, index)
    assert ours == expected  # same lists, same order of values
    assert set(ours) == set(expected)


@pytest.mark.parametrize("vector_id", ["e2e_comfy-05", "e2e_comfy-10"])
def test_node_tag_line_from_raw_input(index, vector_id):
    """read_tags (kgen) + classify reproduce the `tag:` line and meta of the node's first model call."""
    from service.tipo.profile import KGEN
    from service.tipo.syntax import read_tags

    case = vector(vector_id)
    tag_map = classify(read_tags(case["inputs"]["tags"], KGEN).tags, index)
    prompt = case["expected"]["model_calls"][0]["prompt"]
    assert prompt.endswith("\ntag: " + ", ".join(tag_map["special"] + tag_map["general"]))
    for category in ("meta", "characters", "copyrights", "artist", "rating", "quality"):
        line = f"\n{category}: " if category != "meta" else "meta: "
        assert (line + ", ".join(tag_map[category]) in prompt) == bool(tag_map[category])
