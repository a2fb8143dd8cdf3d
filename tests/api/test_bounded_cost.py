"""One admission path for every endpoint: cost-sized permits, real statuses for streams, no request
work before readiness, batch seeds (issue "Bounded cost", rows 3, 6, 8, 12)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.api.conftest import wait_ready
from tests.api.gated import SCRIPT, TAGS_REQUEST, wait_for


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# --- row 6: nothing runs before the service is ready

@pytest.mark.parametrize("path, body", [
    ("/v1/tipo", {"tags": "1girl, solo"}),
    ("/v1/tipo/batch", {"requests": [{"tags": "1girl, solo"}], "n": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "1girl, solo"}]}),
    ("/v1/completions", {"prompt": "hello", "stream": True}),
])
def test_requests_while_loading_are_503_and_the_connection_stays_usable(gated, path, body):
    engine, base_url = gated()  # the warm-up waits on its gate: the service stays loading
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(2):  # the same keep-alive connection answers twice
            answer = client.post(path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["type"] == "service_unavailable"
            assert "not ready" in answer.json()["error"]["message"]
            assert answer.headers["retry-after"]
        assert client.get("/health/live").status_code == 200
    engine.open(engine.warmup_gate)
    wait_ready(base_url)


# --- row 3: a request's cost is the engine sequences it brings

def test_completions_beyond_max_batch_are_400_naming_the_limit(scripted_server):
    base_url = scripted_server(SCRIPT, max_batch=64)
    many = httpx.post(f"{base_url}/v1/completions", json={"prompt": ["hello"] * 300, "n": 16}, timeout=10)
    assert many.status_code == 400  # OpenAI's status for bad input on the OpenAI-style endpoints
    assert many.json()["error"]["param"] == "prompt"
    assert "4800" in many.json()["error"]["message"] and "max_batch" in many.json()["error"]["message"]
    too_many_n = httpx.post(f"{base_url}/v1/completions", json={"prompt": ["hello"] * 5, "n": 16}, timeout=10)
    assert too_many_n.status_code == 400
    fits = httpx.post(f"{base_url}/v1/completions", json={"prompt": ["hello"] * 4, "n": 16}, timeout=10)
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 64


def test_a_request_holds_as_many_permits_as_engine_sequences(gated):
    engine, base_url = gated(max_in_flight=4, adaptive_limit=False, max_queue=8)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    answers = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        big = threading.Thread(target=lambda: answers.update(big=client.post(
            "/v1/completions", json={"prompt": ["hello", "hello"], "n": 2})))
        big.start()
        wait_for(lambda: engine.waiting_calls == 4, "4 engine calls of one request")
        assert _metric(client, "tipo_requests_in_flight") == 4
        small = threading.Thread(target=lambda: answers.update(small=client.post("/v1/completions",
                                                                                  json={"prompt": "hello"})))
        small.start()
        wait_for(lambda: _metric(client, "tipo_requests_waiting") == 1, "the next request waits")
        assert engine.waiting_calls == 4
        engine.open(engine.call_gate)
        big.join()
        small.join()
    assert answers["big"].status_code == 200 and len(answers["big"].json()["choices"]) == 4
    assert answers["small"].status_code == 200


# --- row 8: a stream's status is decided when it is admitted

def test_a_stream_refused_by_a_full_queue_is_a_real_429(gated):
    engine, base_url = gated(max_in_flight=1, adaptive_limit=False, max_queue=0)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        holder = threading.Thread(target=lambda: client.post("/v1/completions", json={"prompt": "hello"}))
        holder.start()
        wait_for(lambda: engine.waiting_calls == 1, "the only permit taken")
        refused = client.post("/v1/completions", json={"prompt": "hello", "stream": True})
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/json")
        assert int(refused.headers["retry-after"]) >= 1
        engine.open(engine.call_gate)
        holder.join()


def test_a_stream_that_waits_too_long_for_a_permit_is_a_real_503(gated):
    engine, base_url = gated(max_in_flight=1, adaptive_limit=False, max_queue=4, queue_timeout_s=0.3)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        holder = threading.Thread(target=lambda: client.post("/v1/completions", json={"prompt": "hello"}))
        holder.start()
        wait_for(lambda: engine.waiting_calls == 1, "the only permit taken")
        waited = client.post("/v1/completions", json={"prompt": "hello", "stream": True})
        assert waited.status_code == 503 and waited.json()["error"]["type"] == "service_unavailable"
        assert waited.headers["retry-after"]
        engine.open(engine.call_gate)
        holder.join()


def test_a_stream_with_no_first_byte_before_the_timeout_is_a_real_504(gated):
    engine, base_url = gated(request_timeout_s=0.3)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    answer = httpx.post(f"{base_url}/v1/completions", json={"prompt": "hello", "stream": True}, timeout=10)
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "timeout_error"
    wait_for(lambda: len(engine.aborted) == 1, "the engine call aborted")
    assert httpx.get(f"{base_url}/metrics").text.count("tipo_requests_in_flight 0.0") == 1


def test_a_stream_that_started_keeps_its_permit_until_it_ends(gated):
    engine, base_url = gated(max_in_flight=1, adaptive_limit=False)
    engine.open(engine.warmup_gate)
    engine.open(engine.call_gate)
    wait_ready(base_url)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        with client.stream("POST", "/v1/completions", json={"prompt": "hello", "stream": True}) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]" and '" world"' in events[0]
        assert _metric(client, "tipo_requests_in_flight") == 0


# --- row 12: batch seeds

def test_batch_seeds_follow_the_single_request_rule_once_per_item(scripted_server):
    base_url = scripted_server(SCRIPT)
    for seed in (-1, 0, None):
        item = {**TAGS_REQUEST, "seed": seed}
        answer = httpx.post(f"{base_url}/v1/tipo/batch", json={"requests": [item], "n": 3}, timeout=10)
        assert answer.status_code == 200, answer.text
        seeds = [entry["result"]["seed"] for entry in answer.json()["data"]]
        assert seeds[0] > 0 and seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2], (seed, seeds)
    given = httpx.post(f"{base_url}/v1/tipo/batch", json={"requests": [{**TAGS_REQUEST, "seed": 7}], "n": 2},
                       timeout=10)
    assert [entry["result"]["seed"] for entry in given.json()["data"]] == [7, 8]


def test_a_negative_seed_draws_a_random_one(scripted_server):
    base_url = scripted_server(SCRIPT)
    seeds = {httpx.post(f"{base_url}/v1/tipo", json={**TAGS_REQUEST, "seed": -1}, timeout=10).json()["seed"]
             for _ in range(3)}
    assert len(seeds) == 3 and min(seeds) > 0
