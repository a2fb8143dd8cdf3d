"""/v1/tipo on the real vLLM CPU engine (tiny random model) through a real server on 127.0.0.1.

Shows that concurrent requests' model calls overlap inside the engine (continuous batching), and
that a timeout or a client that leaves aborts the engine work.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx

# Short completions keep the random model fast; very_short targets keep the retry loop small.
SMALL = {"tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 24}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


async def test_concurrent_requests_share_the_engine(vllm_server):
    base_url = vllm_server
    running_seen: list[float] = []
    stop = threading.Event()

    def watch_engine() -> None:  # what the engine itself reports while the requests run
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                running_seen.append(metric(client.get("/metrics").text, "tipo_engine_running_requests"))

    watcher = threading.Thread(target=watch_engine)
    watcher.start()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
            bodies = [{"tags": f"1girl, solo, {word}", "seed": 100 + i, "return_trace": True, **SMALL}
                      for i, word in enumerate(["smile", "sky", "hat", "cat", "rain", "tree", "book", "sea"])]
            responses = await asyncio.gather(*(client.post("/v1/tipo", json=body) for body in bodies))
    finally:
        stop.set()
        watcher.join()

    for response in responses:
        assert response.status_code == 200, response.text
    answers = [response.json() for response in responses]
    for answer in answers:
        assert answer["usage"]["model_calls"] == len(answer["trace"]) >= 1
        assert answer["usage"]["completion_tokens"] > 0
        assert answer["seed"] in range(100, 108)

    # Interleaved calls: intervals of different requests' model calls overlap in time.
    intervals = [(answer["timings"]["started_at"] + call["start_s"], answer["timings"]["started_at"] + call["end_s"], i)
                 for i, answer in enumerate(answers) for call in answer["trace"]]
    most_at_once = max(sum(1 for start, end, _ in intervals if start <= moment < end) for moment, _, _ in intervals)
    assert most_at_once > 1
    # And the engine's scheduler ran several of them in one batch.
    assert max(running_seen) > 1, running_seen


def test_same_seed_same_prompt_alone_or_in_company(vllm_server):
    body = {"tags": "1girl, long hair", "seed": 7, **SMALL}
    with httpx.Client(base_url=vllm_server, timeout=300) as client:
        alone = client.post("/v1/tipo", json=body).json()
        batch = client.post("/v1/tipo/batch", json={"requests": [body, {**body, "tags": "scenery"}], "n": 2}).json()
    items = {(item["index"], item["variant"]): item["result"] for item in batch["data"]}
    assert items[(0, 0)]["prompt"] == alone["prompt"]
    assert items[(0, 0)]["seed"] == 7 and items[(0, 1)]["seed"] == 8 and items[(1, 1)]["seed"] == 8


def _unfinished_engine_requests(client: httpx.Client) -> float:
    return metric(client.get("/metrics").text, "tipo_engine_unfinished_requests")


def _wait_until(predicate, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def test_timeout_answers_504_and_aborts_the_engine_work(vllm_server):
    with httpx.Client(base_url=vllm_server, timeout=300) as client:
        response = client.post("/v1/tipo", json={"tags": "1girl", "max_new_tokens": 900, "tag_length": "very_long",
                                                 "timeout_s": 0.2})
        assert response.status_code == 504, response.text
        assert "timeout" in response.json()["error"]["message"]
        _wait_until(lambda: _unfinished_engine_requests(client) == 0, "engine requests aborted after the timeout")


def test_client_disconnect_aborts_the_engine_work_and_is_counted(vllm_server):
    with httpx.Client(base_url=vllm_server, timeout=300) as client:
        before = metric(client.get("/metrics").text, "tipo_client_disconnects_total")
        try:  # the client gives up after 0.3 s and closes the connection
            httpx.post(f"{vllm_server}/v1/tipo", json={"tags": "1girl", "max_new_tokens": 900,
                                                       "tag_length": "very_long"}, timeout=0.3)
        except httpx.ReadTimeout:
            pass
        _wait_until(lambda: metric(client.get("/metrics").text, "tipo_client_disconnects_total") == before + 1,
                    "the disconnect is counted")
        _wait_until(lambda: _unfinished_engine_requests(client) == 0, "engine requests aborted after the disconnect")


def test_retries_that_would_outgrow_the_context_end_the_pass_instead_of_failing(vllm_server):
    # The random model never emits EOS: every call takes max_new_tokens, each retry continues from
    # all of it, so the fourth prompt would pass the 1,024-token context. The pass ends instead.
    body = {"tags": "1girl", "tag_length": "very_long", "nl_length": "very_short", "max_new_tokens": 400,
            "seed": 5, "format": "tag only (DTG mode)", "return_trace": True}
    with httpx.Client(base_url=vllm_server, timeout=300) as client:
        response = client.post("/v1/tipo", json=body)
    assert response.status_code == 200, response.text
    trace = response.json()["trace"]
    assert 2 <= len(trace) < 11  # retried, then stopped short of the 11 attempts
    assert all(call["prompt_tokens"] + call["completion_tokens"] <= 1024 for call in trace)
    assert trace[-1]["prompt_tokens"] + 400 > 1024 - 400  # the last call came close to the context
