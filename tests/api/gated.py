"""A scripted engine whose calls wait on gates the test opens ("loading", "busy", "too slow" without
timing), and the script its servers replay. The `gated` fixture lives in tests/api/conftest.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from service.engine.base import EngineError
from service.engine.scripted import ScriptedEngine

TAGS_PROMPT = "aspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl"
# 40 tags meet the `long` target in one call; the "tag only" format asks for no caption pass.
TAGS_REQUEST = {"tags": "1girl", "seed": 5, "format": "tag only (DTG mode)"}
SCRIPT = [
    {"prompt": TAGS_PROMPT, "completion": "".join(f", tag{i}" for i in range(40))},
    # NL made only of dots: the reference crashes after this call (docs/REFERENCE.md §7-16)
    {"prompt": "aspect_ratio: 1.0\ntarget: <|very_short|> <|long_to_tag|>\nlong: ...",
     "completion": " A girl smiles.\ntag: 1girl, solo, smile, hat, sky, tree"},
    {"prompt": "hello", "completion": " world"},
]


class GatedEngine(ScriptedEngine):
    """The scripted engine, but calls wait until the test opens a gate; aborts are recorded."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, fail_warmup: bool = False):
        super().__init__(path)
        self.loop = loop
        self.warmup_gate = asyncio.Event()
        self.call_gate = asyncio.Event()
        self.fail_warmup = fail_warmup
        self.waiting_calls = 0
        self.aborted: list[str] = []
        self.dead = False

    async def generate(self, prompt, sampling, request_id, segments=None):
        if request_id == "warmup":
            await self.warmup_gate.wait()
            if self.fail_warmup:
                raise EngineError("model weights are corrupt")
        else:
            self.waiting_calls += 1
            try:
                await self.call_gate.wait()
            finally:
                self.waiting_calls -= 1
        return await super().generate(prompt, sampling, request_id)

    async def abort(self, request_id):
        self.aborted.append(request_id)

    @property
    def alive(self) -> bool:
        return not self.dead

    def open(self, gate: asyncio.Event) -> None:
        self.loop.call_soon_threadsafe(gate.set)


def wait_for(predicate, what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"gave up waiting: {what}")
