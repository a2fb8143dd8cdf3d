"""Overload at 10x the admission bound on the real vLLM CPU engine (the session's shared engine, tiny
random model) through a real server on 127.0.0.1.

With 2 slots and 2 queue places, waves of 40 concurrent requests may only get 200 (admitted: runs to
the end with a full answer) or 429 (refused at once, with Retry-After); nothing else, nothing hangs,
and the memory of the serving process stays flat from wave to wave.
"""

from __future__ import annotations

import asyncio
import collections
import gc

import httpx
import psutil
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import serve, wait_ready
from tests.shared import client_limits

IN_FLIGHT, QUEUE = 2, 2
CONCURRENT = 10 * (IN_FLIGHT + QUEUE)
WAVES = 6
SMALL = {"tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 24}


@pytest.fixture(scope="module")
def small_server(engine_thread, tag_index):
    # A queue wait far longer than the load lasts: a queued request is served, never timed out (503).
    settings = Settings(engine="vllm", max_in_flight=IN_FLIGHT, adaptive_limit=False, max_queue=QUEUE,
                        queue_timeout_s=300, request_timeout_s=300)
    app = create_app(settings, engine=engine_thread.engine, tag_index=tag_index)
    with serve(app, engine_thread.loop) as base_url:
        wait_ready(base_url)
        yield base_url


def rss_mib() -> tuple[float, float]:
    """(this process: the server and vLLM's front end, vLLM's processes: EngineCore and Worker), in MiB."""
    me = psutil.Process()
    engine = [child for child in me.children(recursive=True) if child.name().startswith("VLLM::")]
    return me.memory_info().rss / 2**20, sum(process.memory_info().rss for process in engine) / 2**20


async def one_wave(client: httpx.AsyncClient, wave: int) -> list[httpx.Response]:
    bodies = [{"tags": f"1girl, solo, tag{i}", "seed": 1000 * wave + i, **SMALL} for i in range(CONCURRENT)]
    return await asyncio.gather(*(client.post("/v1/tipo", json=body) for body in bodies))


async def test_only_200_and_429_every_admitted_request_completes_and_memory_stays_flat(small_server, engine_settings):
    statuses: collections.Counter = collections.Counter()
    rss_after: list[float] = []
    async with httpx.AsyncClient(base_url=small_server, timeout=300, limits=client_limits(CONCURRENT)) as client:
        for wave in range(WAVES):
            answers = await one_wave(client, wave)
            statuses.update(answer.status_code for answer in answers)
            assert {answer.status_code for answer in answers} <= {200, 429}, [a.text for a in answers]
            admitted = [answer for answer in answers if answer.status_code == 200]
            assert len(admitted) >= IN_FLIGHT + QUEUE  # the bound is used, not only refused
            for answer in admitted:  # a full answer: the optimized prompt and its model calls
                body = answer.json()
                assert body["prompt"] and body["usage"]["model_calls"] >= 1 and body["usage"]["completion_tokens"] > 0
            for refused in (a for a in answers if a.status_code == 429):
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["type"] == "rate_limit_error"
            gc.collect()
            rss_after.append(rss_mib())
        metrics = (await client.get("/metrics")).text

    assert "tipo_requests_in_flight 0.0" in metrics and "tipo_requests_waiting 0.0" in metrics
    assert "tipo_engine_unfinished_requests 0.0" in metrics  # nothing left behind in vLLM
    server_rss = [server for server, _ in rss_after]
    engine_rss = [engine for _, engine in rss_after]
    print(f"\nFIGURES overload: {WAVES} waves x {CONCURRENT} concurrent = {sum(statuses.values())} requests; "
          f"answers {dict(statuses)}; lost 0; RSS after each wave (MiB): server {[round(r) for r in server_rss]}, "
          f"vLLM processes {[round(r) for r in engine_rss]}")
    # Wave 0 warms caches; afterwards the serving process must not grow with the load. vLLM's worker
    # touches more pages of its preallocated KV cache as block ids rotate: bounded by kv_cache_gib.
    assert max(server_rss[1:]) - server_rss[1] < 32, server_rss
    assert max(engine_rss) - engine_rss[0] < 1024 * engine_settings.kv_cache_gib, engine_rss
