"""The manifest of known TIPO models (manifest.json beside this file), read into plain dataclasses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.json"
# Where `fetch` and `make-tiny` write by default and where model='auto' looks. Git-ignored.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # e.g. "TIPO-200M"; also the directory name under models/
    repo_id: str  # Hugging Face hub repo
    license: str
    shape: str  # key into Manifest.shapes
    note: str = ""


@dataclass(frozen=True)
class Manifest:
    files: tuple[str, ...]  # the files a model directory needs (fetched; written by make-tiny)
    models: tuple[ModelEntry, ...]  # in order of preference for model='auto'
    shapes: dict[str, dict]  # shape name -> LlamaConfig size fields
    common_config: dict  # LlamaConfig fields every TIPO v1 model shares

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name.lower() == name.lower():
                return entry
        known = ", ".join(entry.name for entry in self.models)
        raise KeyError(f"unknown model {name!r}; known models: {known}")

    def llama_config(self, shape: str) -> dict:
        """All LlamaConfig fields of a shape (sizes + the shared fields)."""
        if shape not in self.shapes:
            raise KeyError(f"unknown shape {shape!r}; use one of {sorted(self.shapes)}")
        return {**self.common_config, **self.shapes[shape]}


def load_manifest(path: Path = MANIFEST_PATH) -> Manifest:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Manifest(
        files=tuple(raw["files"]),
        models=tuple(ModelEntry(**entry) for entry in raw["models"]),
        shapes=dict(raw["shapes"]),
        common_config=dict(raw["common_config"]),
    )
