"""The scripted engine replays recorded completions by prompt (and seed)."""

from __future__ import annotations

import json

import pytest

from service.engine.base import Sampling, UnknownPromptError
from service.engine.scripted import ScriptedEngine

PROMPT = "aspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl"


def script(tmp_path, entries) -> ScriptedEngine:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(entries))
    return ScriptedEngine(path)


async def test_answers_by_prompt_and_seed(tmp_path):
    engine = script(tmp_path, [
        {"prompt": PROMPT, "completion": ", any seed"},
        {"prompt": PROMPT, "completion": ", seed 7", "seed": 7},
    ])
    assert (await engine.generate(PROMPT, Sampling(seed=7), "a")).text == ", seed 7"
    assert (await engine.generate(PROMPT, Sampling(seed=8), "b")).text == ", any seed"
    assert (await engine.generate(PROMPT, Sampling(seed=None), "c")).text == ", any seed"
    assert engine.calls == 3


async def test_seeded_entries_only_answer_their_seed(tmp_path):
    engine = script(tmp_path, [{"prompt": PROMPT, "completion": ", x", "seed": 1}])
    with pytest.raises(UnknownPromptError) as error:
        await engine.generate(PROMPT, Sampling(seed=2), "a")
    assert "seed 2" in str(error.value) and "target: <|long|>" in str(error.value)


async def test_unknown_prompt_names_the_first_200_characters(tmp_path):
    engine = script(tmp_path, [])
    long_prompt = "tag: " + "x" * 500
    with pytest.raises(UnknownPromptError) as error:
        await engine.generate(long_prompt, Sampling(seed=3), "a")
    message = str(error.value)
    assert repr(long_prompt[:200]) in message and "x" * 201 not in message and "truncated" in message


async def test_stream_gives_the_recorded_text(tmp_path):
    engine = script(tmp_path, [{"prompt": PROMPT, "completion": ", smile"}])
    assert [piece.text async for piece in engine.generate_stream(PROMPT, Sampling(), "s")] == [", smile"]


@pytest.mark.parametrize("content, message", [
    ("{}", "JSON list"),
    ("[{\"prompt\": 1, \"completion\": \"x\"}]", "entry 0"),
    ("[{\"prompt\": \"p\", \"completion\": \"x\", \"seed\": \"1\"}]", "seed must be an integer"),
    ("[{\"prompt\": \"p\", \"completion\": \"x\"}, {\"prompt\": \"p\", \"completion\": \"y\"}]", "entry 1 repeats"),
    ("not json", "not valid JSON"),
])
def test_bad_script_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        ScriptedEngine(path)


def test_missing_script_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="TIPO_SCRIPTED_PATH"):
        ScriptedEngine(tmp_path / "nope.json")
