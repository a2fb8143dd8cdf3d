import kgen.metainfo as reference  # no torch: metainfo is plain data

from service.tipo.constants import (
    DEFAULT_FORMAT,
    FORMAT_PRESETS,
    LENGTHS,
    MAX_SENTENCES,
    MAX_TAGS,
    MIN_SENTENCES,
    MIN_TAGS,
    MODE_TOKENS,
)
from tests.shared import load_vectors


def test_length_targets_are_the_references():
    assert MIN_TAGS == reference.TARGET_TIPO
    assert MAX_TAGS == reference.TARGET_TIPO_MAX
    assert MIN_SENTENCES == reference.TARGET_TIPO_NL
    assert MAX_SENTENCES == reference.TARGET_TIPO_NL_MAX
    assert set(LENGTHS) == set(MIN_TAGS)


def test_presets_are_the_references_templates():
    for name, template in reference.TIPO_DEFAULT_FORMAT.items():
        assert FORMAT_PRESETS[name] == template


def test_presets_match_the_vectors():
    by_vector_name = {"comfy node default": "ComfyUI node default"}
    for vector in load_vectors("format"):
        name = by_vector_name.get(vector["inputs"]["format_name"], vector["inputs"]["format_name"])
        if name in FORMAT_PRESETS:
            assert FORMAT_PRESETS[name] == vector["inputs"]["format"]
    assert DEFAULT_FORMAT == load_vectors("e2e_comfy")[0]["inputs"]["format"]


def test_mode_tokens_are_the_13_added_tokens_minus_lengths_empty_and_gen_meta():
    assert len(MODE_TOKENS) == 13 - 4 - 2
