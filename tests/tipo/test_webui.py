import pytest

from service.tipo.profile import ReferenceFailure
from service.tipo.syntax import read_tags_like_reference
from service.tipo.webui import apply_webui_weights, cut_extra_networks


def read_webui_tags(text: str):
    return read_tags_like_reference(text, break_marks_previous_tag=True)


def test_extra_networks_are_cut_and_rebuilt_grouped_by_name():
    text, rebuilt = cut_extra_networks("1girl, <lora:a:0.8>, solo <hypernet:h:1> <lora:b:1>")
    assert text == "1girl, , solo  "
    assert rebuilt == " <lora:a:0.8> <lora:b:1> <hypernet:h:1>"


def test_break_marks_the_previous_tag_and_is_not_a_tag():
    tags = read_webui_tags("1girl, solo, BREAK, (outdoors:1.2)")
    assert tags.tags == ["1girl", "solo", "outdoors"]
    assert tags.breaks_after == ["solo"] and tags.weights == {"outdoors": 1.2}
    with pytest.raises(ReferenceFailure, match="BREAK before any tag"):
        read_webui_tags("BREAK, 1girl")


def test_break_is_written_back_after_its_tag():
    tags = read_webui_tags("solo, BREAK, smile")
    assert apply_webui_weights({"general": ["smile", "solo", "a (b)"]}, tags, []) == {
        "general": ["smile", "solo", "BREAK", "a \\(b\\)"]}


def test_caption_weights_are_written_and_a_caption_missing_them_reuses_the_previous_one():
    tags = read_webui_tags("1girl")
    weighted = [("red", 1.2)]
    result = apply_webui_weights({"extended": "A red hat", "generated": "A blue hat"}, tags, weighted)
    assert result == {"extended": "A (red:1.2) hat", "generated": "A (red:1.2) hat"}  # REFERENCE.md §2.3
    with pytest.raises(ReferenceFailure, match="UnboundLocalError"):
        apply_webui_weights({"generated": "A blue hat"}, tags, weighted)
