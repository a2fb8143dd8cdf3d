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


def test_auto_without_models_serves_the_current_demo_and_does_not_rebuild_it(demo_model, tmp_path):
    shutil.copytree(demo_model.path, tmp_path / DEMO_MODEL_NAME)
    built = (tmp_path / DEMO_MODEL_NAME / "model.safetensors").stat().st_mtime_ns
    resolved = resolve_model("AUTO", models_dir=tmp_path)
    assert resolved.is_demo and resolved.name == DEMO_MODEL_NAME
    assert resolved.path == (tmp_path / DEMO_MODEL_NAME).resolve()
    assert (resolved.path / "model.safetensors").stat().st_mtime_ns == built


def test_a_random_model_is_not_a_current_demo(tiny_model, tmp_path):
    # `auto` rebuilds a random model (or a demo of another builder version) found where the demo
    # belongs; the build itself is what the `demo_model` fixture does.
    from model_store.demo import is_current_demo_model

    shutil.copytree(tiny_model.path, tmp_path / DEMO_MODEL_NAME)
    assert not is_current_demo_model(tmp_path / DEMO_MODEL_NAME)