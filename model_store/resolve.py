"""Turn the `model` setting into a local model directory. Never downloads.

* a directory path: used as is (it must hold config.json);
* "auto": the first manifest model present under the models directory (manifest order), else the
  demo model (model_store/demo.py: a tiny LLaMA trained on synthetic TIPO documents), built on first
  use into `<models dir>/tiny-demo` and flagged `is_demo` so the service warns loudly that it is a demo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from model_store.manifest import DEFAULT_MODELS_DIR, load_manifest
from model_store.tiny import is_demo_model

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "tiny-demo"


class ModelNotFoundError(FileNotFoundError):
    """The `model` setting names no usable model directory."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # directory with config.json, weights and tokenizer files
    name: str  # the name the API reports by default (the directory name)
    is_demo: bool  # random weights (make-tiny): outputs are random text


def resolve_model(setting: str, models_dir: Path = DEFAULT_MODELS_DIR) -> ResolvedModel:
    if setting.strip().lower() == "auto":
        return _resolve_auto(Path(models_dir))
    path = Path(setting).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model directory {str(path)!r} does not exist; use a local model directory, 'auto', or "
            f"fetch one first: python -m model_store fetch TIPO-200M"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    path = path.resolve()
    return ResolvedModel(path=path, name=path.name, is_demo=is_demo_model(path))


def _resolve_auto(models_dir: Path) -> ResolvedModel:
    for entry in load_manifest().models:
        candidate = models_dir / entry.name
        if (candidate / "config.json").is_file():
            return ResolvedModel(path=candidate.resolve(), name=entry.name, is_demo=is_demo_model(candidate))
    demo = models_dir / DEMO_MODEL_NAME
    from model_store.demo import build_demo_model, is_current_demo_model  # torch only when building

    if not is_current_demo_model(demo):
        log.warning("no TIPO model under %s; building the demo model into %s (trained on synthetic TIPO "
                    "documents, about 2 minutes on 2 cores, once)", models_dir, demo)
        build_demo_model(demo)
    return ResolvedModel(path=demo.resolve(), name=DEMO_MODEL_NAME, is_demo=True)
