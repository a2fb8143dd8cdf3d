"""Goodput under overload on the real vLLM CPU engine (issue "Bounded cost", row 5).

The session's shared engine (tiny random model, 2 cores) serves about 2 TIPO requests at once at
full speed. Closed-loop clients that honour Retry-After hit a fresh server with default admission
settings and a 10 s timeout: first 2 clients, then 100. With deadline-aware admission and the
adaptive limit, the rate of 200s at 100 clients stays at least 0.6 x the rate at 2 clients, and every
answer is 200, 429, 503 or 504. A burst of 200 at once (no retries) gets 200s too, not a collapse.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import serve, wait_ready
from tests.shared import client_limits

SMALL = {"tags": "1girl, solo", "tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 24,
         "format": "tag only (DTG mode)"}
TIMEOUT_S = 10.0
PHASE_S = 30.0
ALLOWED = {200, 429, 503, 504}


@pytest.fixture
def fresh_server(engine_thread, tag_index):
    """A new app (fresh admission state, default limits) on the shared engine, per phase."""
    def start():
        app = create_app(Settings(engine="vllm", request_timeout_s=TIMEOUT_S), engine=engine_thread.engine,
                         tag_index=tag_index)
        context = serve(app, engine_thread.loop)
        base_url = context.__enter__()
        wait_ready(base_url)
        return context, base_url
    return start


async def closed_loop(base_url: str, clients: int, seconds: float) -> tuple[collections.Counter, float]:
    statuses: collections.Counter = collections.Counter()
    end = time.monotonic() + seconds
    limits = client_limits(clients + 10)

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            answer = await http.post("/v1/tipo", json=SMALL)
            if time.monotonic() > end:
                return  # finished after the window: not counted
            statuses[answer.status_code] += 1
            if answer.status_code in (429, 503):
                await asyncio.sleep(min(float(answer.headers.get("retry-after", 1)), max(end - time.monotonic(), 0)))

    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return statuses, statuses[200] / seconds


def test_goodput_holds_at_50x_the_engine_capacity(fresh_server):
    rates = {}
    for clients in (2, 100):
        context, base_url = fresh_server()
        try:
            statuses, rates[clients] = asyncio.run(closed_loop(base_url, clients, PHASE_S))
        finally:
            context.__exit__(None, None, None)
        print(f"{clients} clients: {dict(statuses)}, {rates[clients]:.2f} x 200/s")
        assert set(statuses) <= ALLOWED, statuses
    assert rates[2] > 0
    print(f"goodput ratio 100 vs 2 clients: {rates[100] / rates[2]:.2f}")
    assert rates[100] >= 0.6 * rates[2]


def test_a_burst_of_200_gets_answers_not_a_collapse(fresh_server):
    context, base_url = fresh_server()
    try:
        async def burst() -> collections.Counter:
            limits = client_limits(220)
            async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
                answers = await asyncio.gather(*(http.post("/v1/tipo", json=SMALL) for _ in range(200)))
            return collections.Counter(answer.status_code for answer in answers)

        started = time.monotonic()
        statuses = asyncio.run(burst())
        took = time.monotonic() - started
    finally:
        context.__exit__(None, None, None)
    print(f"burst of 200: {dict(statuses)} in {took:.1f} s")
    assert set(statuses) <= ALLOWED, statuses
    assert statuses[200] >= 1  # served, not collapsed: 1-5 on a loaded 2-core machine, the rest refused at once
    assert took < TIMEOUT_S + 15
