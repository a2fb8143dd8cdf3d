"""The texts the tokenizer tests run on: every TIPO prompt in the reference vectors plus edge cases.

Also a script: run it with a transformers 4.x interpreter (which still has the slow SentencePiece
`LlamaTokenizer`) to record the reference ids into slow_tokenizer_ids.json:

    python -m venv /tmp/tf4 && /tmp/tf4/bin/pip install "transformers<5" sentencepiece protobuf
    /tmp/tf4/bin/python tests/engine/data/tokenizer_corpus.py MODEL_DIR > tests/engine/data/slow_tokenizer_ids.json

MODEL_DIR is a `python -m model_store make-tiny` directory (its tokenizer files are all that is read).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "data" / "vectors.json"

EDGE_CASES = [
    "",
    " ",
    "a",
    " leading space",
    "trailing space ",
    "two  spaces",
    "\n",
    "line\nbreaks\n\nand\r\nwindows",
    "\ttab",
    "▁literal underline ▁",
    "<|short|>short",
    "<|short|> short",
    "<|long|>",
    "<|long|>\ntag: 1girl",
    "target: <|long|> <|tag_to_long|>\ntag: 1girl, twintails\nlong:",
    "target:<|very_long|><|short_to_tag_to_long|><|gen_meta|>",
    "short: <|empty|>\nlong: <|empty|>",
    "<s>",
    "<s>hello",
    "text </s> more",
    "<unk> unknown",
    "<|long",
    "<|Long|>",
    "<<|long|>>",
    "<|short_to_long|><|short_to_long_to_tag|>",
    "tag: (masterpiece:1.2), \\(artist\\), [A:B:0.5], <lora:x:0.8>, BREAK",
    "héllo wörld – naïve café",
    "日本語のキャプション。\n中文标题",
    "emoji 🎨🖌️ and zero\u200bwidth",
    "combining e\u0301 and ﬁ ligature",
    "1girl, long_hair, ask_(askzy), :d, ^_^, >_<, o_o",
    "numbers 1234567890 3.14 0.7",
    "aspect_ratio: 1.0\ntarget: <|very_short|>\ntag: scenery, no humans, sky",
]


# Building blocks of the generated cases: markers, words, whitespace, unicode, look-alikes.
MIX_PIECES = [
    "<|long|>", "<|short|>", "<|empty|>", "<|tag_to_long|>", "<|gen_meta|>", "<s>", "</s>",
    "tag:", "long:", "target:", " ", "  ", "\n", "\n\n", "\t", ",", ", ", ".", ":", "▁",
    "1girl", "long hair", "twintails", "A girl", "smiles", "(masterpiece:1.2)", "\\(x\\)",
    "é", "日本", "🎨", "\u200b", "<|", "|>", "<", ">", "_", "0.7",
]


def generated_cases(count: int = 200, seed: int = 0) -> list[str]:
    """Deterministic random concatenations of MIX_PIECES (1 to 8 pieces each)."""
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(MIX_PIECES) for _ in range(rng.randint(1, 8))) for _ in range(count)]


def corpus() -> list[str]:
    texts = list(EDGE_CASES) + generated_cases()
    if VECTORS.is_file():
        for vector in json.loads(VECTORS.read_text(encoding="utf-8")):
            if vector["group"] == "template":
                texts.append(vector["expected"])
            elif isinstance(vector.get("expected"), dict):
                texts.extend(call["prompt"] for call in vector["expected"].get("model_calls", []))
    unique: dict[str, None] = dict.fromkeys(texts)
    return list(unique)


def main(model_dir: str) -> None:
    import transformers
    from transformers import LlamaTokenizer  # the slow one in transformers 4.x

    assert transformers.__version__.startswith("4."), "run with transformers 4.x (slow LlamaTokenizer)"
    result = {"transformers": transformers.__version__, "model_dir_tokenizer": "make-tiny", "cases": []}
    tokenizers = {legacy: LlamaTokenizer.from_pretrained(model_dir, legacy=legacy) for legacy in (False, True)}
    for text in corpus():
        case = {"text": text}
        for legacy, tokenizer in tokenizers.items():
            case[f"legacy_{str(legacy).lower()}"] = tokenizer(text)["input_ids"]
        result["cases"].append(case)
    json.dump(result, sys.stdout, ensure_ascii=False, indent=None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
