"""build_engine picks and configures the engine TIPO_ENGINE names (engines are not started here)."""

from __future__ import annotations

import json

import pytest

from service.engine import build_engine
from service.engine.base import EngineError
from service.settings import Settings


def test_vllm_engine_on_a_model_directory(tiny_model):
    from service.engine.vllm import VllmEngine

    engine = build_engine(Settings(engine="vllm", model=str(tiny_model.path)))
    assert isinstance(engine, VllmEngine)
    assert engine.model.path == tiny_model.path and engine.model.is_demo
    assert engine.model_name == tiny_model.path.name
    assert engine.count_tokens("target: <|long|>") == 5  # BOS, target, :, ▁, <|long|>


def test_served_model_name_wins(tiny_model):
    engine = build_engine(Settings(engine="vllm", model=str(tiny_model.path), served_model_name="TIPO-200M"))
    assert engine.model_name == "TIPO-200M"


def test_remote_engine_sends_token_ids_only_with_a_local_model(tiny_model):
    from service.engine.remote import RemoteEngine

    with_ids = build_engine(Settings(engine="remote", remote_url="http://x/v1", model=str(tiny_model.path)))
    as_text = build_engine(Settings(engine="remote", remote_url="http://x/v1", model="auto"))
    assert isinstance(with_ids, RemoteEngine) and with_ids.tokenizer is not None
    assert as_text.tokenizer is None


def test_scripted_engine(tmp_path):
    from service.engine.scripted import ScriptedEngine

    path = tmp_path / "s.json"
    path.write_text(json.dumps([]))
    assert isinstance(build_engine(Settings(engine="scripted", scripted_path=str(path))), ScriptedEngine)
    with pytest.raises(EngineError, match="TIPO_SCRIPTED_PATH"):
        build_engine(Settings(engine="scripted", scripted_path=""))
