"""uvicorn with read timeouts: a slow client cannot hold a connection open for ever.

uvicorn only times out idle keep-alive connections. A client that sends its request headers (or
its body) one byte at a time keeps its connection, and its place under `limit_concurrency`, as
long as it likes: a few hundred such clients fill the server ("slowloris"). The protocols here add
two deadlines to uvicorn's own (httptools and h11):

* header timeout: from the connection's start, or from the first byte of the next request on a
  keep-alive connection, until the request headers are complete;
* body timeout: from the headers until the whole request body is received.

Past a deadline the client gets `408 Request Timeout` (JSON error body) unless something was
already answered on that request, and the connection is closed. The deadlines concern only what
the client sends: while the server itself holds the client back (reading paused by flow control,
a response still being written, `Expect: 100-continue` not yet answered) a deadline is pushed back,
so streaming responses are never cut.

`uvicorn_config(app, settings)` builds the service's `uvicorn.Config` (`python -m service`, tests).
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None


def response_408(phase: str, timeout_s: float, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps({"error": {
        "message": f"request {phase} not received within {timeout_s:g} s",
        "type": "invalid_request_error", "param": None, "code": "request_timeout",
    }}).encode()
    headers = [*default_headers, (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    return b"".join([b"HTTP/1.1 408 Request Timeout\r\n",
                     *(name + b": " + value + b"\r\n" for name, value in headers), b"\r\n", body])


class ReadTimeouts:
    """Mixin for uvicorn's HTTP protocols: one timer, for the headers then for the body of a request."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    _read_timer: asyncio.TimerHandle | None = None
    _read_phase: str = ""  # "headers" or "body" while the timer runs
    _read_timeouts_off = False  # after a WebSocket upgrade the connection is not ours any more

    def _arm_read_timer(self, phase: str) -> None:
        self._cancel_read_timer()
        if not self._read_timeouts_off:
            delay = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self._read_phase = phase
            self._read_timer = self.loop.call_later(delay, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._read_phase = None, ""

    def _read_timed_out(self) -> None:
        phase, cycle = self._read_phase, self.cycle
        self._read_timer = None
        if self.transport.is_closing():
            return
        if phase == "headers":  # a new request; `cycle` is the previous one, if any
            servers_turn = cycle is not None and not cycle.response_complete
        else:
            servers_turn = cycle.waiting_for_100_continue or (cycle.response_started and not cycle.response_complete)
        if self.flow.read_paused or servers_turn:
            self._arm_read_timer(phase)  # not the client's fault: try again later
            return
        if phase == "headers" or not cycle.response_started:
            timeout_s = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            self.transport.write(response_408(phase, timeout_s, self.server_state.default_headers))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() answers http.disconnect, its send() is dropped
            cycle.message_event.set()
        self.transport.close()

    # Shared hooks (both uvicorn protocols have these methods).
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_read_timer("headers")

    def connection_lost(self, exc) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *args) -> None:
        self._cancel_read_timer()
        self._read_timeouts_off = True
        super().handle_websocket_upgrade(*args)


if HttpToolsProtocol is not None:
    class HttpToolsTimeoutsProtocol(ReadTimeouts, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header and body timeouts (parser callbacks drive them)."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._read_timer is None:  # first byte of a keep-alive connection's next request
                self._arm_read_timer("headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm_read_timer("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._cancel_read_timer()


class H11TimeoutsProtocol(ReadTimeouts, H11Protocol):
    """uvicorn's h11 protocol with the header and body timeouts (h11's state after each event batch drives them)."""

    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._read_phase != "body":
                self._arm_read_timer("body")
        elif state is h11.IDLE:
            if self._read_timer is None and self.conn.trailing_data[0]:  # part of the next request's headers
                self._arm_read_timer("headers")
        else:  # request received (DONE, MUST_CLOSE), connection closed or broken
            self._cancel_read_timer()


def http_protocol(settings: Settings, kind: str = "auto") -> type:
    """The protocol class for `uvicorn.Config(http=...)` with the settings' timeouts bound.

    kind: "auto" (httptools when installed, else h11), "httptools" or "h11".
    """
    if kind == "httptools" or (kind == "auto" and HttpToolsProtocol is not None):
        if HttpToolsProtocol is None:
            raise RuntimeError("httptools is not installed")
        base = HttpToolsTimeoutsProtocol
    elif kind in ("auto", "h11"):
        base = H11TimeoutsProtocol
    else:
        raise ValueError(f"unknown HTTP protocol kind {kind!r}")
    return type(base.__name__, (base,), {"header_timeout_s": settings.header_timeout_s,
                                         "body_timeout_s": settings.body_timeout_s})


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """The service's uvicorn.Config: address, log level, the protocol with timeouts, connection cap."""
    options = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                   http=http_protocol(settings), limit_concurrency=settings.max_connections,
                   timeout_keep_alive=settings.keep_alive_s)
    return uvicorn.Config(app, **{**options, **overrides})
