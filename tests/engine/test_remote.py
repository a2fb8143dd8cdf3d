"""The remote engine against a real HTTP server on 127.0.0.1.

The server is a minimal OpenAI-compatible completions server (stdlib http.server in a thread) that
can be told to fail, stall or hold its answer, so retries, timeouts and aborts are exercised over
real sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.engine.base import EngineError, EngineUnavailable, Sampling
from service.engine.remote import RemoteEngine
from service.engine.tokenizer import PromptTokenizer
from service.settings import Settings

STREAM_PIECES = [" long", " hair", ", smile"]


@dataclass
class Script:
    """What the fake server does next; tests change it."""

    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests, popped in order
    delay_s: float = 0.0  # wait before answering (timeouts)
    hold: threading.Event | None = None  # wait for this before answering (aborts)
    break_stream_after: int | None = None  # close the connection after this many stream pieces (body cut short)
    drop_requests: bool = False  # close the connection without answering (an overloaded upstream)
    received: list[dict] = field(default_factory=list)  # {"path", "headers", "body"} of every request
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _record(self, body: dict | None) -> None:
            with script.lock:
                # Header names are case-insensitive (the openai client sends them in lower case).
                headers = httpx.Headers(self.headers.items())
                script.received.append({"path": self.path, "headers": headers, "body": body})

        def _json(self, status: int, data: dict) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._record(None)
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": "tipo-fake", "object": "model"}]})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._record(body)
            with script.lock:
                status = script.fail_with.pop(0) if script.fail_with else 200
            if script.drop_requests:
                self.close_connection = True  # no status line: "server disconnected without a response"
                return
            if script.hold is not None:
                script.hold.wait(timeout=30)
            if script.delay_s:
                threading.Event().wait(script.delay_s)
            if status != 200:
                self._json(status, {"error": {"message": f"scripted failure {status}"}})
                return
            if self.path != "/v1/completions":
                self._json(404, {"error": {"message": "not found"}})
                return
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if script.break_stream_after is not None:
                    self.send_header("Content-Length", "100000")  # more than is sent: the body is cut short
                self.end_headers()
                # Like vLLM's server: the last piece carries the finish reason, then the usage event.
                for number, piece in enumerate(STREAM_PIECES, 1):
                    reason = "length" if number == len(STREAM_PIECES) else None
                    event = {"choices": [{"index": 0, "text": piece, "finish_reason": reason}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if number == script.break_stream_after:
                        return
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 11, "completion_tokens": len(STREAM_PIECES), "total_tokens": 14}
                    self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                return
            self._json(200, {
                "id": "cmpl-1", "object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": f" answer for seed {body.get('seed')}", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            })

    return Handler


@pytest.fixture
def server():
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    if script.hold is not None:
        script.hold.set()
    httpd.shutdown()
    httpd.server_close()


def remote(url: str, tokenizer=None, **settings) -> RemoteEngine:
    return RemoteEngine(Settings(engine="remote", remote_url=url, **settings), tokenizer=tokenizer)


SAMPLING = Sampling(temperature=0.5, top_p=0.95, top_k=80, min_p=0.05, repetition_penalty=1.17,
                    max_new_tokens=64, seed=1234)


async def test_completion_with_all_tipo_sampling_fields(server):
    engine = remote(server.url)
    await engine.start()  # finds the model: the server's first
    completion = await engine.generate("target: <|long|>\ntag: 1girl", SAMPLING, "req-1")
    await engine.shutdown()

    assert completion.text == " answer for seed 1234"
    assert (completion.prompt_tokens, completion.completion_tokens, completion.finish_reason) == (11, 4, "length")
    request = server.received[-1]
    assert request["path"] == "/v1/completions"
    assert request["headers"]["X-Request-Id"] == "req-1"
    assert "Authorization" not in request["headers"]  # no key configured: no Authorization header at all
    body = request["body"]
    assert body["model"] == "tipo-fake" and body["prompt"] == "target: <|long|>\ntag: 1girl"
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repeat_penalty",
                                 "max_tokens", "seed", "stream")} == {
        "temperature": 0.5, "top_p": 0.95, "top_k": 80, "min_p": 0.05, "repetition_penalty": 1.17,
        "repeat_penalty": 1.17, "max_tokens": 64, "seed": 1234, "stream": False}


async def test_prompt_goes_as_the_reference_token_ids_when_the_tokenizer_is_known(server, tiny_model):
    tokenizer = PromptTokenizer.from_model_dir(tiny_model.path)
    engine = remote(server.url, tokenizer=tokenizer, remote_model="m", remote_api_key="secret")
    await engine.generate("target: <|long|>\ntag: 1girl", SAMPLING, "ids")
    await engine.shutdown()
    request = server.received[-1]
    assert request["body"]["prompt"] == tokenizer.encode_template("target: <|long|>\ntag: 1girl")
    assert request["headers"]["Authorization"] == "Bearer secret"


async def test_server_errors_are_retried_with_backoff(server):
    server.fail_with = [500, 503]
    engine = remote(server.url, remote_model="m", remote_retries=2)
    completion = await engine.generate("p", SAMPLING, "retry")
    await engine.shutdown()
    assert completion.text == " answer for seed 1234"
    assert len(server.received) == 3


async def test_retries_give_up_with_a_clear_error(server):
    server.fail_with = [500, 500, 500]
    engine = remote(server.url, remote_model="m", remote_retries=1)
    with pytest.raises(EngineError, match=r"failed after 2 attempt\(s\): HTTP 500"):
        await engine.generate("p", SAMPLING, "give-up")
    await engine.shutdown()
    assert len(server.received) == 2


async def test_rate_limits_are_retried(server):
    # The openai client retries 408/409/429 too: for a vLLM upstream (or its proxy) they mean "busy".
    server.fail_with = [429]
    engine = remote(server.url, remote_model="m", remote_retries=1)
    completion = await engine.generate("p", SAMPLING, "busy")
    await engine.shutdown()
    assert completion.text == " answer for seed 1234"
    assert len(server.received) == 2


async def test_client_errors_are_not_retried(server):
    server.fail_with = [400]
    engine = remote(server.url, remote_model="m", remote_retries=3)
    with pytest.raises(EngineError, match="HTTP 400"):
        await engine.generate("p", SAMPLING, "bad")
    await engine.shutdown()
    assert len(server.received) == 1
    assert engine.alive  # the server answered: it is reachable


async def test_unreachable_server(server):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = remote(f"http://127.0.0.1:{port}/v1", remote_model="m", remote_retries=1)
    with pytest.raises(EngineUnavailable, match="cannot connect"):  # it may come back: not "dead"
        await engine.generate("p", SAMPLING, "down")
    with pytest.raises(EngineUnavailable):
        await engine.check()
    assert engine.alive  # liveness never depends on the upstream
    await engine.shutdown()


async def test_timeout(server):
    server.delay_s = 2.0
    engine = remote(server.url, remote_model="m", remote_retries=0, remote_timeout_s=0.2)
    with pytest.raises(EngineError, match="timed out"):
        await engine.generate("p", SAMPLING, "slow")
    await engine.shutdown()


async def test_a_connection_lost_in_mid_answer_fails_the_call_but_is_not_unreachable(server):
    """An upstream that is only slow or overloaded still answers others: marking it unreachable would make
    the gateway fail every call in flight (docs/BENCHMARKS.md, GPU simulation findings)."""
    server.drop_requests = True
    engine = remote(server.url, remote_model="m", remote_retries=1)
    with pytest.raises(EngineError, match="connection lost") as caught:
        await engine.generate("p", SAMPLING, "dropped")
    assert not isinstance(caught.value, EngineUnavailable)
    assert len(server.received) == 2  # retried once by the client first
    await engine.check()  # the upstream answers: ready
    await engine.shutdown()


async def test_stream_yields_the_server_pieces(server):
    engine = remote(server.url, remote_model="m")
    pieces = [piece async for piece in engine.generate_stream("p", SAMPLING, "stream")]
    await engine.shutdown()
    assert [piece.text for piece in pieces if piece.text] == STREAM_PIECES
    assert [piece.finish_reason for piece in pieces if piece.finish_reason] == ["length"]
    # The upstream's own counts (its usage event), summed over the pieces as the service does.
    assert sum(piece.completion_tokens for piece in pieces) == len(STREAM_PIECES)
    assert max(piece.prompt_tokens for piece in pieces) == 11
    assert server.received[-1]["body"]["stream"] is True
    assert server.received[-1]["body"]["stream_options"] == {"include_usage": True}


async def test_stream_retries_before_the_first_piece(server):
    server.fail_with = [502]
    engine = remote(server.url, remote_model="m", remote_retries=1)
    pieces = [piece async for piece in engine.generate_stream("p", SAMPLING, "stream-retry")]
    await engine.shutdown()
    assert [piece.text for piece in pieces if piece.text] == STREAM_PIECES
    assert len(server.received) == 2


async def test_a_started_stream_is_never_retried(server):
    server.break_stream_after = 1
    engine = remote(server.url, remote_model="m", remote_retries=2)
    pieces = []
    with pytest.raises(EngineError, match="stream broke after it started"):
        async for piece in engine.generate_stream("p", SAMPLING, "stream-broken"):
            pieces.append(piece)
    await engine.shutdown()
    assert [piece.text for piece in pieces] == STREAM_PIECES[:1]  # no piece twice
    assert len(server.received) == 1


async def test_abort_stops_the_call(server):
    server.hold = threading.Event()
    engine = remote(server.url, remote_model="m")
    task = asyncio.ensure_future(engine.generate("p", SAMPLING, "held"))
    while not server.received:
        await asyncio.sleep(0.01)
    assert engine.stats().running == 1
    await engine.abort("held")
    with pytest.raises(EngineError, match="aborted"):
        await task
    assert engine.stats().running == 0
    await engine.shutdown()


async def test_cancelling_the_caller_cancels_the_call(server):
    server.hold = threading.Event()
    engine = remote(server.url, remote_model="m")
    task = asyncio.ensure_future(engine.generate("p", SAMPLING, "cancelled"))
    while not server.received:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats().running == 0
    await engine.shutdown()


def test_remote_needs_a_url():
    with pytest.raises(EngineError, match="TIPO_REMOTE_URL"):
        RemoteEngine(Settings(engine="remote", remote_url=""))
