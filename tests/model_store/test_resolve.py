"""resolve_model: a directory as is, or 'auto' = first manifest model present, else the demo model."""

from __future__ import annotations

import shutil

import pytest

from model_store.resolve import DEMO_MODEL_NAME, ModelNotFoundError, resolve_model
from model_store.tiny import DEMO_MARKER


def fake_real_model(tiny_model, models_dir, name):
    """A copy of the tiny model without the demo marker, standing for a fetched TIPO model."""
    target = models_dir / name
    shutil.copytree(tiny_model.path, target)
    (target / DEMO_MARKER).unlink()
    return target


def test_a_directory_is_used_as_is(tiny_model):
    resolved = resolve_model(str(tiny_model.path))
    assert resolved.path == tiny_model.path.resolve() and resolved.name == tiny_model.path.name
    assert resolved.is_demo


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_auto_prefers_manifest_order(tiny_model, tmp_path):
    fake_real_model(tiny_model, tmp_path, "TIPO-200M")
    assert resolve_model("auto", models_dir=tmp_path).name == "TIPO-200M"
    fake_real_model(tiny_model, tmp_path, "TIPO-200M-ft2")
    resolved = resolve_model("auto", models_dir=tmp_path)
    assert resolved.name == "TIPO-200M-ft2" and not resolved.is_demo


def test_auto_without_models_builds_the_demo_once(tmp_path):
    resolved = resolve_model("auto", models_dir=tmp_path)
    assert resolved.is_demo and resolved.name == DEMO_MODEL_NAME
    assert (resolved.path / DEMO_MARKER).is_file() and (resolved.path / "model.safetensors").is_file()
    built = (resolved.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("AUTO", models_dir=tmp_path).path == resolved.path
    assert (resolved.path / "model.safetensors").stat().st_mtime_ns == built
