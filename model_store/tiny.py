"""Build a random TIPO-shaped model offline: `python -m model_store make-tiny --random`.

No TIPO weights can be downloaded on CI machines, yet the real loading code (vLLM, our tokenizer)
must run. This writes a directory laid out like a TIPO hub repo (manifest `files`): a random
`LlamaForCausalLM` with TIPO's config, and a LLaMA-style 32k SentencePiece tokenizer plus TIPO's 13
added tokens (ids 32000..32012, vocab 32013). The tokenizer model is Mistral's v1 vocabulary that
ships in the `mistral_common` wheel (same format and BOS/EOS/UNK ids as LLaMA, other piece ids).

A marker file (DEMO_MARKER) tells the service this is a demo model: this random one writes random
text. `model_store.demo` builds the trained demo model (the default of `make-tiny` and of
`TIPO_MODEL=auto`) in the same layout; this random one is for tests and benchmarks (`--random`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from model_store.manifest import load_manifest

DEMO_MARKER = "tipo_demo.json"

# TIPO's added tokens in the training code's order (docs/REFERENCE.md §1.2): their ids are 32000 + index.
TIPO_ADDED_TOKENS = (
    "<|empty|>",
    "<|very_short|>",
    "<|short|>",
    "<|long|>",
    "<|very_long|>",
    "<|tag_to_long|>",
    "<|long_to_tag|>",
    "<|short_to_tag|>",
    "<|short_to_long|>",
    "<|tag_to_short_to_long|>",
    "<|short_to_tag_to_long|>",
    "<|short_to_long_to_tag|>",
    "<|gen_meta|>",
)
BASE_VOCAB_SIZE = 32000
SPECIAL_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>"}


def bundled_sentencepiece_model() -> Path:
    """The 32k LLaMA-style SentencePiece model shipped as data in the mistral_common wheel."""
    path = Path(str(resources.files("mistral_common") / "data" / "tokenizer.model.v1"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install mistral-common (a vllm dependency)")
    return path


def _token_entry(content: str, special: bool) -> dict:
    # The fields transformers 4.x writes for each added token (tokenizer_config.json).
    return {
        "content": content,
        "lstrip": False,
        "normalized": not special,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def write_tokenizer_files(dest: Path) -> None:
    """tokenizer.model + the three JSON files a transformers-4 `LlamaTokenizer.save_pretrained` writes."""
    shutil.copyfile(bundled_sentencepiece_model(), dest / "tokenizer.model")

    added = {token: BASE_VOCAB_SIZE + index for index, token in enumerate(TIPO_ADDED_TOKENS)}
    decoder = {str(token_id): _token_entry(text, special=True) for token_id, text in SPECIAL_TOKENS.items()}
    decoder.update({str(token_id): _token_entry(text, special=False) for text, token_id in added.items()})
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        # Explicit, like LLaMA-2's hub config: no "▁" is prepended to text that follows an added token.
        "legacy": False,
        "model_max_length": 1024,
        "pad_token": "</s>",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    special_map = {
        "bos_token": _token_entry("<s>", special=True),
        "eos_token": _token_entry("</s>", special=True),
        "pad_token": "</s>",
        "unk_token": _token_entry("<unk>", special=True),
    }
    for entry in special_map.values():
        if isinstance(entry, dict):
            entry.pop("special")
    _write_json(dest / "tokenizer_config.json", tokenizer_config)
    _write_json(dest / "special_tokens_map.json", special_map)
    # Serialised the way transformers does (docs/REFERENCE.md §1.2: the real file is 372 bytes).
    (dest / "added_tokens.json").write_text(
        json.dumps(added, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def tipo_generation_config() -> dict:
    """generation_config.json with TIPO's recommended sampling (the ComfyUI node's defaults): what
    vLLM's server and this service's /v1/completions use when a request names no sampling."""
    from service.tipo.sampling import Sampling

    default = Sampling()
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "do_sample": True,
            "temperature": default.temperature, "top_p": default.top_p, "top_k": default.top_k,
            "min_p": default.min_p, "repetition_penalty": default.repetition_penalty}


def write_generation_config(dest: Path) -> None:
    """Write (or complete) dest/generation_config.json with TIPO's sampling; keys already there win."""
    path = Path(dest) / "generation_config.json"
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = {}
    _write_json(path, {**tipo_generation_config(), **existing})


def write_random_model(dest: Path, shape: str, seed: int) -> None:
    """config.json, generation_config.json, model.safetensors of a randomly initialised model."""
    import torch  # lazily: only make-tiny needs torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**load_manifest().llama_config(shape))
    config.dtype = "float32"  # TIPO's weights are fp32
    torch.manual_seed(seed)  # the same seed gives the same weights, so demo outputs are reproducible
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    write_generation_config(dest)


def build_random_model(dest: Path, shape: str = "tiny", seed: int = 0, overwrite: bool = False) -> Path:
    """Write a complete TIPO-shaped model directory with random weights at `dest` and return it: `shape`
    "tiny" (hidden 64, 2 layers, for tests) or a real TIPO shape ("200m", "500m": full size).

    Built in a temporary sibling directory and renamed into place, so a half-written model is never
    seen (another process may be building the same one). An existing complete model is kept unless
    `overwrite`.
    """
    marker = {
        "demo": True,
        "shape": shape,
        "seed": seed,
        "warning": "random weights: outputs are random text, not TIPO prompts",
        "built_by": "python -m model_store make-tiny --random",
    }
    return build_model_dir(dest, lambda work: write_random_model(work, shape, seed), marker, overwrite)


def build_model_dir(dest: Path, write_weights, marker: dict, overwrite: bool = False) -> Path:
    """The tokenizer files, `write_weights(directory)` (which may return more marker fields), then the
    marker, in a temporary sibling directory renamed to `dest` (see build_random_model)."""
    dest = Path(dest)
    if (dest / DEMO_MARKER).is_file() and not overwrite:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write_tokenizer_files(work)
        facts = write_weights(work) or {}
        _write_json(work / DEMO_MARKER, {**marker, **facts})  # written last: its presence means "complete"
        if overwrite and dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(work, dest)
        except OSError:
            if not (dest / DEMO_MARKER).is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def read_marker(path: Path) -> dict:
    """The demo marker's fields ({} when there is none or it is unreadable)."""
    try:
        return json.loads((Path(path) / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_demo_model(path: Path) -> bool:
    return (Path(path) / DEMO_MARKER).is_file()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
