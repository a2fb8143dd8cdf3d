"""The simulated GPU engine (TIPO_ENGINE=simulated): continuous batching on a cost model, the client's CPU
charge, abort, and answers that the TIPO core parses (through /v1/tipo)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from service.app import create_app
from service.engine.base import EngineError, Sampling
from service.engine.simulated import CostModel, SimulatedEngine
from service.settings import Settings
from tests.api.conftest import serve, wait_ready

PROMPT = "aspect_ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl"
FAST = CostModel(step_fixed_ms=0.2, decode_us_per_seq=0.0, decode_us_per_context_token=0.0, prefill_us_per_token=0.0)


async def started(tiny_model, cost: CostModel = FAST, **options) -> SimulatedEngine:
    engine = SimulatedEngine(tiny_model.path, cost=cost, **options)
    await engine.start()
    return engine


async def test_concurrent_sequences_share_steps(tiny_model):
    engine = await started(tiny_model)
    try:
        completions = await asyncio.gather(*(
            engine.generate(PROMPT, Sampling(seed=seed, max_new_tokens=512), f"r{seed}") for seed in range(16)))
        tokens = [completion.completion_tokens for completion in completions]
        steps = engine.counters.steps
        # One step per token of the longest answer (+ its prefill step at most), not one per token of all of them.
        assert max(tokens) <= steps <= max(tokens) + 2 < sum(tokens)
        assert engine.counters.generated_tokens == sum(tokens)
        assert engine.stats().extra["mean_batch"] > 4
        assert all(completion.finish_reason == "stop" and completion.text for completion in completions)
    finally:
        await engine.shutdown()


def test_step_time_follows_the_cost_model():
    cost = CostModel(step_fixed_ms=1.0, decode_us_per_seq=10.0, decode_us_per_context_token=0.1,
                     prefill_us_per_token=2.0)
    assert cost.step_s(0, 0, 0) == pytest.approx(1e-3)
    assert cost.step_s(100, 20_000, 0) == pytest.approx((1000 + 1000 + 2000) / 1e6)
    assert cost.step_s(1, 0, 500) == pytest.approx((1000 + 10 + 1000) / 1e6)


async def test_bigger_batches_take_longer_steps(tiny_model):
    cost = CostModel(step_fixed_ms=0.5, decode_us_per_seq=50.0, decode_us_per_context_token=0.0,
                     prefill_us_per_token=0.0)
    engine = await started(tiny_model, cost)
    try:
        sampling = Sampling(seed=1, max_new_tokens=20, ignore_eos=True)
        await engine.generate(PROMPT, sampling, "one")
        single = engine.counters.busy_s / engine.counters.steps
        engine.reset_counters()
        began = time.monotonic()
        await asyncio.gather(*(engine.generate(PROMPT, sampling, f"b{i}") for i in range(40)))
        wall = time.monotonic() - began
        batched = engine.counters.busy_s / engine.counters.steps
        assert batched == pytest.approx(single + 39 * 50e-6, rel=0.2)
        assert wall >= engine.counters.busy_s * 0.9  # the simulated GPU's time passes for real (asleep)
    finally:
        await engine.shutdown()


async def test_max_tokens_ignore_eos_and_streams_add_up(tiny_model):
    engine = await started(tiny_model)
    try:
        whole = await engine.generate(PROMPT, Sampling(seed=5, max_new_tokens=512), "w")
        short = await engine.generate(PROMPT, Sampling(seed=5, max_new_tokens=7), "s")
        assert short.finish_reason == "length" and short.completion_tokens == 7 and whole.text.startswith(short.text)
        forced = await engine.generate(PROMPT, Sampling(seed=5, max_new_tokens=300, ignore_eos=True), "f")
        assert forced.completion_tokens == 300 and forced.finish_reason == "length"
        pieces = [piece async for piece in engine.generate_stream(PROMPT, Sampling(seed=5, max_new_tokens=512), "st")]
        assert "".join(piece.text for piece in pieces) == whole.text
        assert sum(piece.completion_tokens for piece in pieces) == whole.completion_tokens
        assert [piece.finish_reason for piece in pieces][-1] == "stop" and len(pieces) > 10
    finally:
        await engine.shutdown()


async def test_abort_and_cancel_free_the_batch(tiny_model):
    engine = await started(tiny_model, CostModel(step_fixed_ms=5.0))
    try:
        sampling = Sampling(seed=1, max_new_tokens=500, ignore_eos=True)
        aborted = asyncio.create_task(engine.generate(PROMPT, sampling, "gone"))
        cancelled = asyncio.create_task(engine.generate(PROMPT, sampling, "cancelled"))
        await asyncio.sleep(0.05)
        assert engine.stats().running == 2
        await engine.abort("gone")
        with pytest.raises(EngineError, match="aborted"):
            await aborted
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert engine.stats().running == 0 and engine.stats().waiting == 0
    finally:
        await engine.shutdown()


async def test_client_cpu_is_charged_per_token_and_request(tiny_model):
    engine = await started(tiny_model, client_cpu_us_per_token=200.0, client_cpu_us_per_request=2000.0)
    try:
        began = time.thread_time()
        completion = await engine.generate(PROMPT, Sampling(seed=2, max_new_tokens=50, ignore_eos=True), "cpu")
        spent = time.thread_time() - began
        expected = 50 * 200e-6 + 2000e-6
        assert completion.completion_tokens == 50
        assert engine.counters.client_cpu_s >= expected * 0.99
        assert spent >= expected * 0.99
    finally:
        await engine.shutdown()


def test_tipo_requests_parse_through_the_service(tiny_model, server_loop, tag_index):
    settings = Settings(engine="simulated", model=str(tiny_model.path), sim_step_fixed_ms=0.2,
                        sim_client_cpu_us_per_token=0, sim_client_cpu_us_per_request=0)
    app = create_app(settings, tag_index=tag_index)
    with serve(app, server_loop.loop) as base_url:
        wait_ready(base_url)
        for kind in ({"tags": "1girl, hatsune miku, vocaloid", "nl_prompt": ""},
                     {"tags": "", "nl_prompt": "A girl in a field."},
                     {"tags": "1boy, solo", "nl_prompt": "He walks in the rain.", "tag_length": "short"}):
            answer = httpx.post(f"{base_url}/v1/tipo", json={**kind, "seed": 11, "return_trace": True}, timeout=30)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["trace"] and body["usage"]
            if kind["tags"]:
                assert body["new_tags"], body  # the synthetic answer's tags were parsed and added
            if kind["nl_prompt"]:
                assert any(body["captions"].values()), body
        completion = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "seed": 1},
                                timeout=30).json()
        assert completion["usage"]["completion_tokens"] == 16 and completion["choices"][0]["finish_reason"] == "length"
