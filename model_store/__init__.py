"""TIPO model files: the manifest of known models, `fetch` from the hub, `make-tiny`, and resolution
of the `model` setting to a local directory (`resolve_model`). CLI: `python -m model_store --help`.

Imports of torch, transformers and huggingface_hub happen only inside the commands that need them.
"""

from model_store.manifest import DEFAULT_MODELS_DIR, Manifest, ModelEntry, load_manifest
from model_store.resolve import ModelNotFoundError, ResolvedModel, resolve_model
from model_store.tiny import DEMO_MARKER, TIPO_ADDED_TOKENS, build_random_model, is_demo_model

__all__ = [
    "DEFAULT_MODELS_DIR",
    "DEMO_MARKER",
    "TIPO_ADDED_TOKENS",
    "Manifest",
    "ModelEntry",
    "ModelNotFoundError",
    "ResolvedModel",
    "build_random_model",
    "is_demo_model",
    "load_manifest",
    "resolve_model",
]
