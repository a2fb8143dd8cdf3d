"""service/server.py over real sockets: slow clients are cut by the header and body timeouts.

Each test talks to a real uvicorn server on 127.0.0.1 built with `uvicorn_config` (timeouts of 1 s)
serving a tiny app, for each protocol (httptools, h11) and for httptools on uvloop (what
`python -m service` runs). Clients are raw asyncio streams, so a test controls every byte.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
import uvloop
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from service.server import H11TimeoutsProtocol, HttpToolsTimeoutsProtocol, http_protocol, uvicorn_config
from service.settings import Settings

TIMEOUT_S = 1.0
STREAM_CHUNKS, STREAM_EVERY_S = 6, 0.5  # a 3 s response, longer than both timeouts
SLOW_HEADERS = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 200


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health/live")
    async def live():
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/stream")
    async def stream():
        async def ticks():
            for i in range(STREAM_CHUNKS):
                await asyncio.sleep(STREAM_EVERY_S)
                yield f"tick {i}\n".encode()
        return StreamingResponse(ticks(), media_type="text/plain")

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["httptools", "h11", "httptools-uvloop"])
def port(request) -> Iterator[int]:
    """A server on its own loop thread, with both timeouts of 1 s; yields its port."""
    kind, _, loop_kind = request.param.partition("-")
    settings = Settings(port=free_port(), header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S)
    config = uvicorn_config(tiny_app(), settings, http=http_protocol(settings, kind), log_level="warning",
                            lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield settings.port
    server.should_exit = True
    thread.join(timeout=10)
    loop.close()


async def read_all(reader: asyncio.StreamReader, limit_s: float) -> bytes:
    """Everything the server sends until it closes (a reset ends it too), within limit_s."""
    received = b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received


async def send_slowly(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.2) -> None:
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed the connection: what the test waits for


async def dribble(port: int, data: bytes = SLOW_HEADERS, limit_s: float = TIMEOUT_S + 5) -> tuple[bytes, float]:
    """Send `data` a byte every 0.2 s; -> (what the server answered, seconds until it closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    sender = asyncio.create_task(send_slowly(writer, data))
    try:
        answer = await read_all(reader, limit_s)
        return answer, time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()


def assert_408(answer: bytes, phase: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert error["param"] is None and phase in error["message"]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length body, from a keep-alive connection."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
        return int(lines[0].split()[1]), await reader.readexactly(length)


async def get_live(port: int) -> tuple[int, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _ = await read_response(reader)
        return status, time.monotonic() - started
    finally:
        writer.close()


def test_http_protocol_picks_the_class_and_binds_the_timeouts():
    settings = Settings(header_timeout_s=2.5, body_timeout_s=7)
    for kind, base in (("auto", HttpToolsTimeoutsProtocol), ("httptools", HttpToolsTimeoutsProtocol),
                       ("h11", H11TimeoutsProtocol)):
        cls = http_protocol(settings, kind)
        assert issubclass(cls, base) and (cls.header_timeout_s, cls.body_timeout_s) == (2.5, 7)
    config = uvicorn_config(FastAPI(), Settings(max_connections=7, port=9999), timeout_graceful_shutdown=3)
    assert (config.limit_concurrency, config.port, config.timeout_graceful_shutdown) == (7, 9999, 3)
    assert issubclass(config.http, HttpToolsTimeoutsProtocol)


async def test_dribbled_headers_are_cut_with_408(port):
    answer, elapsed_s = await dribble(port)
    assert_408(answer, "headers")
    assert TIMEOUT_S - 0.1 <= elapsed_s <= TIMEOUT_S + 1


async def test_a_connection_that_sends_nothing_is_closed(port):
    answer, elapsed_s = await dribble(port, data=b"")
    assert_408(answer, "headers")
    assert TIMEOUT_S - 0.1 <= elapsed_s <= TIMEOUT_S + 1


@pytest.mark.parametrize("then", ["stall", "dribble"])
async def test_a_stalled_or_dribbled_body_is_cut_with_408(port, then):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        sender = asyncio.create_task(send_slowly(writer, b"y" * 90 if then == "dribble" else b""))
        answer = await read_all(reader, TIMEOUT_S + 5)
        elapsed_s = time.monotonic() - started
        sender.cancel()
    finally:
        writer.close()
    assert_408(answer, "body")
    assert TIMEOUT_S - 0.1 <= elapsed_s <= TIMEOUT_S + 1


async def test_a_complete_body_is_answered(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000)
        status, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 200 and json.loads(body) == {"bytes": 5000}


async def test_200_dribblers_are_all_cut_and_a_probe_still_answers_at_once(port):
    started = time.monotonic()
    dribblers = [asyncio.create_task(dribble(port)) for _ in range(200)]
    await asyncio.sleep(0.5)  # all connected and dribbling
    status, probe_s = await get_live(port)
    assert status == 200 and probe_s < 1, probe_s
    results = await asyncio.wait_for(asyncio.gather(*dribblers), TIMEOUT_S + 10)
    assert time.monotonic() - started <= TIMEOUT_S + 3
    for answer, elapsed_s in results:
        assert_408(answer, "headers")
        assert elapsed_s <= TIMEOUT_S + 3


async def test_keep_alive_idle_is_not_cut_but_a_dribbled_next_request_is(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        # Idle longer than the header timeout: keep-alive (5 s) rules here, not the header timeout.
        await asyncio.sleep(TIMEOUT_S + 0.5)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.5)
        # The third request's headers are dribbled: cut one timeout after their first byte.
        started = time.monotonic()
        sender = asyncio.create_task(send_slowly(writer, SLOW_HEADERS))
        answer = await read_all(reader, TIMEOUT_S + 5)
        elapsed_s = time.monotonic() - started
        sender.cancel()
    finally:
        writer.close()
    assert_408(answer, "headers")
    assert TIMEOUT_S - 0.1 <= elapsed_s <= TIMEOUT_S + 1


async def test_a_slow_streaming_response_longer_than_the_timeouts_is_not_cut(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await read_all(reader, STREAM_CHUNKS * STREAM_EVERY_S + 5)
    finally:
        writer.close()
    assert time.monotonic() - started >= STREAM_CHUNKS * STREAM_EVERY_S - 0.1
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"0\r\n\r\n")  # the chunked body's end: the stream finished
    for i in range(STREAM_CHUNKS):
        assert f"tick {i}\n".encode() in answer
