"""Fixtures shared by the whole test suite.

* `tiny_model` - a random TIPO-shaped model (model_store make-tiny --random), built once per session.
* `demo_model` - the trained demo model (model_store make-tiny), built once per machine.
* `engine_thread` - ONE real vLLM engine (CPU) for the whole session. vLLM starts an EngineCore
  process (~30 s), so tests share it. It lives on an asyncio loop in a background thread:
  `engine_thread.run(coro)` runs a coroutine there and returns its result. HTTP tests can serve an
  app on the same loop (`engine_thread.loop`) with the same engine.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from model_store.resolve import ResolvedModel
from model_store.tiny import build_random_model

# vLLM on CPU reserves most of the machine's memory for the KV cache unless this is set.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class EngineThread:
    """An asyncio event loop running in a daemon thread, holding one started engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # A loop holds its tasks only weakly. A task left pending by a test (a server stopped mid-start)
        # can become garbage, and the garbage collector then closes its coroutines in whichever
        # thread it runs in, the main one, while this loop's thread may still wake the task:
        # a segfault in CPython 3.11. Strong references until done keep every task on its own thread.
        self._tasks: set[asyncio.Task] = set()

        def keep_task(loop, coro, **kwargs):
            task = asyncio.Task(coro, loop=loop, **kwargs)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return task

        self.loop.set_task_factory(keep_task)
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)
        self._thread.start()
        self.engine = None

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 300) -> Any:
        """Run `coro` on the engine loop and return its result (the timeout only guards against hangs)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.engine is not None:
            self.run(self.engine.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ResolvedModel:
    """A tiny random TIPO-shaped model (hidden 64, 2 layers, TIPO's tokenizer), built in ~4 s."""
    path = build_random_model(tmp_path_factory.mktemp("models") / "tiny-test", shape="tiny", seed=0)
    return ResolvedModel(path=Path(path), name="tiny-test", is_demo=True)


@pytest.fixture(scope="session")
def demo_model() -> ResolvedModel:
    """The trained demo model where `python -m service` looks for it (model_store/models/tiny-demo),
    built once (about 2 minutes) unless a current one is there; the first-run test then finds it."""
    from model_store.demo import build_demo_model
    from model_store.manifest import DEFAULT_MODELS_DIR
    from model_store.resolve import DEMO_MODEL_NAME

    path = build_demo_model(DEFAULT_MODELS_DIR / DEMO_MODEL_NAME)
    return ResolvedModel(path=Path(path).resolve(), name=DEMO_MODEL_NAME, is_demo=True)


@pytest.fixture(scope="session")
def engine_settings():
    from service.settings import Settings

    return Settings(engine="vllm", kv_cache_gib=1, enforce_eager=True, max_model_len=1024, max_num_seqs=64)


@pytest.fixture(scope="session")
def engine_thread(tiny_model: ResolvedModel, engine_settings) -> Iterator[EngineThread]:
    """One started VllmEngine on the tiny model, on its own event loop thread, for the session."""
    from service.engine.vllm import VllmEngine

    thread = EngineThread()
    engine = VllmEngine(engine_settings, tiny_model)
    try:
        thread.run(engine.start())
        thread.engine = engine
        yield thread
    finally:
        thread.close()


@pytest.fixture(scope="session")
def tag_index():
    """The real tag index (tipo-kgen's lists), loaded once per session."""
    from tests.shared import shared_tag_index

    return shared_tag_index()


@pytest.fixture(scope="session")
def server_loop() -> Iterator[EngineThread]:
    """A background event loop for servers that do not use the shared vLLM engine."""
    thread = EngineThread()
    yield thread
    thread.close()
