"""Edges of streams and shutdown (issue "Bounded cost", rows 9 and 10), on a real uvicorn server on
127.0.0.1 run by the service's own `DrainingServer`.

`EndlessEngine` streams 64 KiB pieces for as long as it is read, and its non-streamed calls never
answer (except the script's `hello`), so "longer than the grace" and "a reader that stopped" are
reached without timing the engine.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.__main__ import LAST_ANSWERS_S, DrainingServer
from service.app import create_app
from service.engine.base import Completion
from service.engine.scripted import ScriptedEngine
from service.settings import Settings
from tests.api.conftest import free_port, wait_ready
from tests.api.gated import SCRIPT, TAGS_REQUEST, wait_for

PIECE = "x" * 65536


class EndlessEngine(ScriptedEngine):
    def __init__(self, path: Path):
        super().__init__(path)
        self.streams_open = 0

    async def generate(self, prompt, sampling, request_id, segments=None):
        if prompt == "hello" or request_id == "warmup":
            return await super().generate(prompt, sampling, request_id)
        await asyncio.Event().wait()  # never answers

    async def generate_stream(self, prompt, sampling, request_id, segments=None):
        self.streams_open += 1
        try:
            while True:
                yield Completion(text=PIECE, completion_tokens=1, finish_reason=None)
                await asyncio.sleep(0.005)
        finally:
            self.streams_open -= 1


@pytest.fixture
def draining_server(tmp_path, server_loop, tag_index):
    """start(**settings) -> (engine, base_url, server, serve_future) of a DrainingServer."""
    started = []

    def start(**settings):
        script = tmp_path / "script.json"
        script.write_text(json.dumps(SCRIPT))
        engine = EndlessEngine(script)
        settings = Settings(engine="scripted", **settings)
        app = create_app(settings, engine=engine, tag_index=tag_index)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        server = DrainingServer(config, app, settings.shutdown_grace_s)
        running = asyncio.run_coroutine_threadsafe(server.serve(), server_loop.loop)
        started.append((server, running))
        base_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: server.started or running.done(), "server listening")
        wait_ready(base_url)
        return engine, base_url, server, running

    yield start
    for server, running in started:
        server.should_exit = True  # not force_exit: that skips the app's lifespan shutdown (tasks left pending)
        running.result(timeout=30)


def _metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def test_a_stream_reader_that_stops_reading_loses_its_permit_at_the_timeout(draining_server):
    timeout_s = 1.5
    engine, base_url, _, _ = draining_server(request_timeout_s=timeout_s, max_in_flight=1, adaptive_limit=False)
    port = int(base_url.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "endless", "stream": True, "max_tokens": 1000}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        started = time.monotonic()
        assert reader.recv(64).startswith(b"HTTP/1.1 200")  # then it stops reading, connection open
        wait_for(lambda: _metric(base_url, "tipo_requests_in_flight") == 0, "the permit is given back")
        freed_after = time.monotonic() - started
        assert engine.streams_open == 0  # the engine stream was closed (its request aborted)
        # The only permit is free: another request is served while the slow reader still holds its socket.
        assert httpx.post(f"{base_url}/v1/completions", json={"prompt": "hello"}, timeout=10).status_code == 200
    print(f"slow reader's permit freed {freed_after:.2f} s after the request (timeout {timeout_s} s)")
    assert timeout_s - 0.2 <= freed_after <= timeout_s + 3


def test_sigterm_past_the_grace_answers_every_request_in_its_proper_shape(draining_server):
    engine, base_url, server, running = draining_server(shutdown_grace_s=1.0, max_in_flight=64, adaptive_limit=False)
    answers: dict[str, object] = {}

    def post(name: str, path: str, body: dict) -> None:
        answers[name] = httpx.post(f"{base_url}{path}", json=body, timeout=30)

    def stream(name: str, path: str, body: dict) -> None:
        events = []
        with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=30) as response:
            answers[name + "_status"] = response.status_code
            for line in response.iter_lines():
                if line.startswith("data:") and not line.startswith('data: {"id"'):
                    events.append(line)
        answers[name] = events

    threads = [
        threading.Thread(target=post, args=("tipo", "/v1/tipo", TAGS_REQUEST)),
        threading.Thread(target=post, args=("batch", "/v1/tipo/batch", {"requests": [TAGS_REQUEST], "n": 2})),
        # A chat stream sends its role chunk once admitted, so it has started, like the completion stream.
        threading.Thread(target=stream, args=("chat_stream", "/v1/chat/completions",
                                              {"messages": [{"role": "user", "content": "1girl"}], "stream": True})),
        threading.Thread(target=stream, args=("completion_stream", "/v1/completions",
                                              {"prompt": "endless", "stream": True})),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: engine.streams_open == 1 and _metric(base_url, "tipo_requests_in_flight") == 5,
             "every request running")
    signalled = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
    for thread in threads:
        thread.join(timeout=30)
    running.result(timeout=30)
    stopped_after = time.monotonic() - signalled

    for name in ("tipo", "batch"):
        answer = answers[name]
        assert answer.status_code == 503, (name, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert "shutting down" in answer.json()["error"]["message"]
    for name in ("chat_stream", "completion_stream"):
        assert answers[name + "_status"] == 200
        last = answers[name]
        assert last[-1] == "data: [DONE]", name
        assert "shutting down" in json.loads(last[-2][len("data: "):])["error"]["message"]
    assert stopped_after <= 1.0 + LAST_ANSWERS_S + 3
