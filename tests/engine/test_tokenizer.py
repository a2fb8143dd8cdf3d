"""Our prompt tokenizer gives the reference's ids.

The reference tokenises with transformers 4's slow SentencePiece `LlamaTokenizer`. Its ids for 266
texts (every TIPO prompt of the reference vectors, edge cases, 200 generated mixes) were recorded
with transformers 4.57.6 in data/slow_tokenizer_ids.json (see data/tokenizer_corpus.py), for both
values of the tokenizer's `legacy` flag. transformers 5, which vLLM loads, differs on some of them:
that is why the engines send token ids.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from model_store.tiny import TIPO_ADDED_TOKENS
from service.engine.tokenizer import Marker, PromptTokenizer
from tests.engine.data.tokenizer_corpus import VECTORS, corpus

SLOW_IDS = Path(__file__).parent / "data" / "slow_tokenizer_ids.json"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(SLOW_IDS.read_text(encoding="utf-8"))


def tokenizer_dir_with(tmp_path: Path, model_dir: Path, **config_changes) -> Path:
    """A copy of the tiny model's tokenizer files with tokenizer_config.json keys changed (None = removed)."""
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        shutil.copyfile(model_dir / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("legacy", [False, True])
def test_ids_equal_the_slow_transformers4_tokenizer(recorded, tiny_model, tmp_path, legacy):
    tokenizer = PromptTokenizer.from_model_dir(tokenizer_dir_with(tmp_path, tiny_model.path, legacy=legacy))
    assert tokenizer.legacy is legacy
    mismatches = [case["text"] for case in recorded["cases"]
                  if tokenizer.encode_template(case["text"]) != case[f"legacy_{str(legacy).lower()}"]]
    assert mismatches == []
    assert len(recorded["cases"]) > 250


def test_recorded_ids_cover_the_current_corpus(recorded):
    if not VECTORS.is_file():
        pytest.skip(f"{VECTORS} not present")
    assert [case["text"] for case in recorded["cases"]] == corpus()
    assert recorded["transformers"].startswith("4.")


def test_tipo_markers_are_single_tokens_in_training_order(tiny_model):
    tokenizer = PromptTokenizer.from_model_dir(tiny_model.path)
    for index, marker in enumerate(TIPO_ADDED_TOKENS):
        assert tokenizer.encode_template(marker)[-1] == 32000 + index
    assert tokenizer.vocab_size == 32013
    ids = tokenizer.encode_template("target: <|long|> <|tag_to_long|>\ntag: 1girl\nlong:")
    assert ids[0] == 1 and ids.count(1) == 1  # BOS once, first
    assert 32003 in ids and 32005 in ids and 2 not in ids  # no EOS appended


def test_text_after_a_marker_gets_no_prefix_space_unless_legacy(tiny_model, tmp_path):
    """RUNTIMES.md: HF gives `<|short|>short` -> [32002, "short"]; llama.cpp [32002, "▁short"]."""
    modern = PromptTokenizer.from_model_dir(tiny_model.path)  # the tiny model's config says legacy=false
    legacy = PromptTokenizer.from_model_dir(tokenizer_dir_with(tmp_path, tiny_model.path, legacy=True))
    short_piece = modern.encode_template("x short")[-1]  # "▁short"
    assert modern.encode_template("target: <|short|>short")[-1] != short_piece
    assert legacy.encode_template("target: <|short|>short")[-1] == short_piece


def test_missing_legacy_key_means_the_slow_tokenizers_default(tiny_model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        tokenizer = PromptTokenizer.from_model_dir(tokenizer_dir_with(tmp_path, tiny_model.path, legacy=None))
    assert tokenizer.legacy is True
    assert "legacy" in caplog.text


def test_templates_match_transformers5_which_vllm_loads(tiny_model):
    """For TIPO templates (legacy=false) transformers 5 agrees; for edge cases it does not."""
    from transformers import AutoTokenizer

    ours = PromptTokenizer.from_model_dir(tiny_model.path)
    theirs = AutoTokenizer.from_pretrained(tiny_model.path)
    templates = [text for text in corpus() if text.startswith(("meta:", "rating:", "aspect_ratio:", "quality:",
                                                               "characters:", "artist:", "copyrights:"))]
    assert len(templates) >= 30
    for text in templates:
        assert ours.encode_template(text) == theirs(text)["input_ids"], text
    # Known differences of transformers 5 from the slow tokenizer (why we never let vLLM tokenise):
    for text in [" leading space", "two  spaces", "<|long|>\ntag: 1girl"]:
        assert ours.encode_template(text) != theirs(text)["input_ids"], text


def test_user_text_can_be_kept_literal(tiny_model):
    tokenizer = PromptTokenizer.from_model_dir(tiny_model.path)
    template = "target: <|long|>\ntag: 1girl, <|short|> sneaky"
    parsed = tokenizer.encode_template(template)
    assert parsed.count(32002) == 1  # the reference turns the user's <|short|> into the token

    parts = ["target: ", Marker("<|long|>"), "\ntag: ", "1girl, <|short|> sneaky"]
    literal = tokenizer.encode_parts(parts, parse_added_in_text=False)
    assert 32003 in literal and 32002 not in literal
    assert tokenizer.encode_parts(parts) == parsed  # parsing on: same ids as the whole string
    # Splitting a string into parts never changes its ids.
    assert tokenizer.encode_parts(["target: <|lo", "ng|>\ntag: 1girl, <|short|> sneaky"]) == parsed


def test_count_tokens_includes_bos(tiny_model):
    tokenizer = PromptTokenizer.from_model_dir(tiny_model.path)
    assert tokenizer.count_tokens("") == 1
    assert tokenizer.count_tokens("<|long|>") == len(tokenizer.encode_template("<|long|>"))


def test_missing_tokenizer_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        PromptTokenizer.from_model_dir(tmp_path)


def test_segments_keep_user_text_literal_and_equal_the_reference_otherwise(tiny_model, tag_index):
    """The runner's ModelCall.segments, encoded by the engines: in `fixed` a `<|long|>` typed by a user
    is no added token, the template's own is; in `kgen` (raw_user_text) the typed one is the marker
    token too, as in the reference; prompts without typed markers get the reference's ids in both."""
    from service.tipo.request import TipoRequest
    from service.tipo.runner import TipoRunner

    tokenizer = PromptTokenizer.from_model_dir(tiny_model.path)
    added_ids = {32000 + index for index in range(len(TIPO_ADDED_TOKENS))} | {1, 2, 0}
    long_id = tokenizer.added_tokens["<|long|>"].id
    for profile in ("kgen", "fixed"):
        typed = TipoRequest(tags="1girl, <|long|>, <|very_long|> </s>", nl_prompt="A girl.\n<|short|>\ntarget: x",
                            seed=2, profile=profile)
        call = TipoRunner(typed, tag_index).next_call()
        ids = tokenizer.encode_segments(call.segments)
        assert call.prompt.count("<|long|>") == 2  # the template's and the user's
        as_reference = tokenizer.encode_template(call.prompt)
        assert as_reference.count(long_id) == 2  # the reference reads both
        if profile == "kgen":
            assert ids == as_reference and ids.count(long_id) == 2
            assert tokenizer.added_tokens["<|short|>"].id in ids and tokenizer.eos_id in ids
        else:
            template_markers = [tokenizer.added_tokens[m].id for m in ("<|long|>", "<|short_to_tag|>")]
            assert [i for i in ids if i in added_ids] == [1, *template_markers]  # BOS, then the target line only
            assert ids.count(long_id) == 1

        plain = TipoRequest(tags="1girl, solo, long hair", nl_prompt="A girl.\nShe smiles.", seed=2, profile=profile)
        call = TipoRunner(plain, tag_index).next_call()
        assert tokenizer.encode_segments(call.segments) == tokenizer.encode_template(call.prompt)
