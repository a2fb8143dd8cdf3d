"""The manifest lists the TIPO models with REFERENCE.md §5's facts."""

from __future__ import annotations

import pytest

from model_store.manifest import load_manifest


def test_known_models_and_their_facts():
    manifest = load_manifest()
    by_name = {entry.name: entry for entry in manifest.models}
    assert set(by_name) == {"TIPO-200M", "TIPO-200M-ft", "TIPO-200M-ft2", "TIPO-500M", "TIPO-500M-ft"}
    for entry in manifest.models:
        assert entry.repo_id == f"KBlueLeaf/{entry.name}"
    assert by_name["TIPO-200M"].license == "apache-2.0"
    assert by_name["TIPO-200M-ft"].license == by_name["TIPO-500M"].license == "kohaku-license-1.0"
    assert {by_name[n].shape for n in ("TIPO-200M", "TIPO-200M-ft", "TIPO-200M-ft2")} == {"200m"}
    assert {by_name[n].shape for n in ("TIPO-500M", "TIPO-500M-ft")} == {"500m"}


def test_expected_files():
    assert set(load_manifest().files) == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}


@pytest.mark.parametrize("shape, parameters", [("200m", 200e6), ("500m", 500e6)])
def test_shapes_have_the_advertised_size(shape, parameters):
    """Build the real shapes on the meta device (no memory) and count their parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**load_manifest().llama_config(shape))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - parameters) / parameters < 0.05
    assert config.vocab_size == 32013 and config.hidden_size // config.num_attention_heads == 64
    assert not config.tie_word_embeddings


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="TIPO-200M"):
        load_manifest().model("TIPO-9B")
    assert load_manifest().model("tipo-200m-ft2").name == "TIPO-200M-ft2"  # case-insensitive
