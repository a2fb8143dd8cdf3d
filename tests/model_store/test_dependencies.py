"""What model_store reads from other distributions is declared in pyproject (the cpu and gpu extras)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from model_store.tiny import bundled_sentencepiece_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def declared(extra: str) -> set[str]:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("-", "_")
            for requirement in extras[extra]}


def test_the_bundled_tokenizer_comes_from_a_declared_distribution():
    wheel = metadata.distribution("mistral_common")
    assert bundled_sentencepiece_model().resolve() in {Path(wheel.locate_file(file)).resolve() for file in wheel.files}
    for extra in ("cpu", "gpu"):
        assert {"mistral_common", "transformers"} <= declared(extra), extra
