"""Replays recorded completions: tests and differential checks without a model.

The file is a JSON list of `{"prompt": <exact template text>, "completion": <text the model
appends>, "seed": <optional int>}`. A call is answered by the entry with the same prompt and the
same seed; an entry without a seed answers that prompt for any seed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from service.engine.base import (
    Completion,
    Engine,
    EngineStats,
    InvalidPromptError,
    Prompt,
    Sampling,
    Segments,
    UnknownPromptError,
)


class ScriptedEngine(Engine):
    def __init__(self, path: str | Path, model_name: str = "scripted", delay_s: float = 0.0) -> None:
        self.path = Path(path)
        self.model_name = model_name
        self.delay_s = delay_s  # each call waits this long first (load and shutdown tests)
        # (prompt, seed) -> completion; seed None = any seed
        self._answers = _load_script(self.path)
        self.calls = 0  # how many completions were served (tests read it)

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        if not isinstance(prompt, str):
            raise InvalidPromptError("the scripted engine replays text prompts only, not token ids")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = self._answers.get((prompt, sampling.seed))
        if text is None:
            text = self._answers.get((prompt, None))
        if text is None:
            raise UnknownPromptError(
                f"{self.path.name}: no recorded completion for seed {sampling.seed} and prompt "
                f"{prompt[:200]!r}{' (truncated)' if len(prompt) > 200 else ''}"
            )
        self.calls += 1
        return Completion(text=text, finish_reason="stop")

    def stats(self) -> EngineStats:
        return EngineStats(extra={"entries": float(len(self._answers))})


def _load_script(path: Path) -> dict[tuple[str, int | None], str]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"scripted engine: {path} does not exist (TIPO_SCRIPTED_PATH)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"scripted engine: {path} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"scripted engine: {path} must hold a JSON list of {{prompt, completion, seed?}}")

    answers: dict[tuple[str, int | None], str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) \
                or not isinstance(entry.get("completion"), str):
            raise ValueError(f"scripted engine: {path} entry {index} needs string 'prompt' and 'completion'")
        seed = entry.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"scripted engine: {path} entry {index}: seed must be an integer")
        key = (entry["prompt"], seed)
        if key in answers and answers[key] != entry["completion"]:
            raise ValueError(f"scripted engine: {path} entry {index} repeats a prompt/seed with another completion")
        answers[key] = entry["completion"]
    return answers
