"""make-tiny: a random TIPO-shaped model that the real loaders accept."""

from __future__ import annotations

import json

from model_store.manifest import load_manifest
from model_store.tiny import DEMO_MARKER, TIPO_ADDED_TOKENS, build_random_model, is_demo_model


def test_directory_has_the_hub_layout_and_the_demo_marker(tiny_model):
    files = {path.name for path in tiny_model.path.iterdir()}
    assert files == set(load_manifest().files) | {DEMO_MARKER}
    assert is_demo_model(tiny_model.path)
    # REFERENCE.md §1.2: TIPO's added_tokens.json is 372 bytes: these 13 tokens with ids 32000..32012.
    assert (tiny_model.path / "added_tokens.json").stat().st_size == 372
    added = json.loads((tiny_model.path / "added_tokens.json").read_text())
    assert [added[token] for token in TIPO_ADDED_TOKENS] == list(range(32000, 32013))


def test_config_is_tipo_shaped(tiny_model):
    config = json.loads((tiny_model.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        32013, 1, 2, 2)
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vLLM CPU attention needs it
    generation = json.loads((tiny_model.path / "generation_config.json").read_text())
    # TIPO's recommended sampling: the default of raw completions here and in vLLM's own server (the
    # reference passes its own GenerationConfig, so the file does not change what it generates).
    assert {key: generation[key] for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")} == {
        "temperature": 0.5, "top_p": 0.95, "top_k": 80, "min_p": 0.05, "repetition_penalty": 1.17}


def test_transformers_loads_the_tokenizer_with_tipo_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    assert len(tokenizer) == 32013
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_tokens_to_ids(list(TIPO_ADDED_TOKENS)) == list(range(32000, 32013))
    assert tokenizer.decode([32003, 32005]) == "<|long|><|tag_to_long|>"


def test_same_seed_same_weights_and_existing_models_are_kept(tiny_model, tmp_path):
    again = build_random_model(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_model.path / "model.safetensors").read_bytes()
    before = (again / "model.safetensors").stat().st_mtime_ns
    assert build_random_model(again, seed=0) == again  # already built: nothing rewritten
    assert (again / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary directory left behind
