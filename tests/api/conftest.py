"""HTTP test helpers: a real uvicorn server on 127.0.0.1 serving an app on a background event loop.

* `serve(app, loop)` - context manager: start uvicorn on a free port, wait until it listens, yield
  its base URL, stop it (lifespan shutdown included).
* `scripted_server(entries)` - fixture factory: a server with the scripted engine replaying
  `entries` ({prompt, completion, seed?}), on its own loop thread.
* `vllm_server` - the shared vLLM CPU engine (tests/conftest.py `engine_thread`) behind a server on
  the engine's loop, ready (warm-up done).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.api.gated import SCRIPT, GatedEngine
from tests.conftest import EngineThread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app, loop: asyncio.AbstractEventLoop) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    running = asyncio.run_coroutine_threadsafe(server.serve(), loop)
    deadline = time.monotonic() + 60
    while not server.started:
        if running.done():
            running.result()  # raises the start-up error
            raise RuntimeError("uvicorn exited before listening")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 60 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        running.result(timeout=60)


def wait_ready(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{base_url}/health/ready", timeout=10)
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout_s} s: {response.text}")
        time.sleep(0.02)


@pytest.fixture
def scripted_server(tmp_path: Path, server_loop: EngineThread, tag_index) -> Iterator[Callable[..., str]]:
    """`scripted_server(entries, **settings)` -> base URL of a ready server replaying `entries`."""
    with_servers = []

    def start(entries: list[dict], ready: bool = True, **settings) -> str:
        script = tmp_path / f"script-{len(with_servers)}.json"
        script.write_text(json.dumps(entries))
        app = create_app(Settings(engine="scripted", scripted_path=str(script), **settings), tag_index=tag_index)
        context = serve(app, server_loop.loop)
        base_url = context.__enter__()
        with_servers.append(context)
        if ready:
            wait_ready(base_url)
        return base_url

    yield start
    for context in reversed(with_servers):
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def vllm_server(engine_thread, tag_index) -> Iterator[str]:
    settings = Settings(engine="vllm", max_in_flight=64, request_timeout_s=300)
    app = create_app(settings, engine=engine_thread.engine, tag_index=tag_index)
    with serve(app, engine_thread.loop) as base_url:
        wait_ready(base_url)
        yield base_url


@pytest.fixture
def gated(tmp_path, server_loop, tag_index):
    """(engine, base_url, settings-overrides) of a server whose engine the test controls."""
    servers = []

    def start(fail_warmup: bool = False, warm: bool = False, **settings):
        script = tmp_path / "script.json"
        script.write_text(json.dumps(SCRIPT))
        engine = GatedEngine(script, server_loop.loop, fail_warmup=fail_warmup)
        if warm:  # the warm-up passes at once (before the server's loop uses the gate)
            engine.warmup_gate.set()
        app = create_app(Settings(engine="scripted", **settings), engine=engine, tag_index=tag_index)
        context = serve(app, server_loop.loop)
        servers.append(context)
        return engine, context.__enter__()

    yield start
    for context in servers:
        context.__exit__(None, None, None)
