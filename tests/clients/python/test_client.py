"""tipo_client (clients/python) against real servers on 127.0.0.1: the scripted engine for answers, the gated
engine for a busy (429) or loading (503) service. Sync and async clients share their request code, so most
behaviour is checked on the sync client and the async one is run through the same paths once."""

from __future__ import annotations

import asyncio
import threading
import time
from email.utils import formatdate

import httpx
import pytest
from fastapi import FastAPI, Request

from service.settings import Settings
from tests.api.conftest import free_port, serve
from tests.api.gated import TAGS_REQUEST, wait_for
from tests.api.tipo.test_serving import OUTPUT_KEYS, request_of, script_of
from tests.shared import load_vectors
from tipo_client import (
    NO_RETRY,
    AsyncTipoClient,
    RetryPolicy,
    TipoClient,
    TipoServiceError,
    parse_retry_after,
)
from tipo_client._client import KEEPALIVE_EXPIRY_S

VECTOR = load_vectors("e2e_comfy")[0]
OPERATION_VECTOR = load_vectors("e2e_comfy_operation")[0]
NO_SLEEP = RetryPolicy(max_retries=3, max_wait_s=10, backoff_s=0.01, max_backoff_s=0.02)


def expected_strings(vector: dict) -> dict:
    return {key: vector["expected"][key] for key in OUTPUT_KEYS}


# --- calls and answers -------------------------------------------------------------------------------------


def test_every_endpoint_sync(scripted_server):
    base_url = scripted_server(script_of(VECTOR) + script_of(OPERATION_VECTOR))
    with TipoClient(base_url) as client:
        answer = client.tipo(request_of(VECTOR))
        assert {key: answer[key] for key in OUTPUT_KEYS} == expected_strings(VECTOR)
        assert answer["seed"] == 1234 and answer["profile"] == "kgen"
        same = client.tipo(**request_of(VECTOR))  # the fields as keywords
        assert same["prompt"] == answer["prompt"]

        batch = client.batch([request_of(VECTOR), request_of(VECTOR)])
        assert [(item["index"], item["variant"]) for item in batch["data"]] == [(0, 0), (1, 0)]
        many = client.tipo_many([request_of(VECTOR)] * 2)
        assert [result["prompt"] for result in many] == [answer["prompt"]] * 2

        operation = client.tipo({**OPERATION_VECTOR["inputs"], "profile": "kgen"})
        maps = operation["operation_output"]
        formatted = client.format(maps["full_output"], maps["addon_output"], profile="kgen")
        assert {key: formatted[key] for key in OUTPUT_KEYS} == {key: operation[key] for key in OUTPUT_KEYS}

        assert client.models()["data"][0]["id"] == "scripted"
        assert client.live()["status"] == "ok"
        assert client.ready()["status"] == "ready"
        assert client.wait_ready(timeout_s=5)["status"] == "ready"


async def test_every_endpoint_async(scripted_server):
    base_url = scripted_server(script_of(VECTOR) + script_of(OPERATION_VECTOR))
    async with AsyncTipoClient(base_url) as client:
        answer, many = await asyncio.gather(client.tipo(request_of(VECTOR)),
                                            client.tipo_many([request_of(VECTOR)] * 3))
        assert {key: answer[key] for key in OUTPUT_KEYS} == expected_strings(VECTOR)
        assert [result["prompt"] for result in many] == [answer["prompt"]] * 3
        operation = await client.tipo({**OPERATION_VECTOR["inputs"], "profile": "kgen"})
        maps = operation["operation_output"]
        formatted = await client.format(maps["full_output"], maps["addon_output"], profile="kgen")
        assert formatted["prompt"] == operation["prompt"]
        assert (await client.models())["data"][0]["id"] == "scripted"
        assert (await client.live())["status"] == "ok"
        assert (await client.wait_ready(timeout_s=5))["status"] == "ready"


# --- errors ------------------------------------------------------------------------------------------------


def test_idle_connections_are_dropped_before_the_server_drops_them(server_loop):
    # A request sent on a keep-alive connection at the moment the server closes it is lost (a transport error
    # on a POST): the client must let go of an idle connection first. The server here keeps one 5 s, as the
    # service does by default.
    assert KEEPALIVE_EXPIRY_S < Settings.model_fields["keep_alive_s"].default
    echo = FastAPI()

    @echo.get("/health/live")
    def live(request: Request) -> dict:
        return {"status": "ok", "client_port": request.client.port}

    with serve(echo, server_loop.loop) as base_url, TipoClient(base_url, retry=NO_RETRY) as client:
        first, again = client.live()["client_port"], client.live()["client_port"]
        time.sleep(KEEPALIVE_EXPIRY_S + 0.5)
        after_idle = client.live()["client_port"]
    assert first == again  # a fresh connection is reused
    assert after_idle != first  # an idle one is dropped by the client while the server would still keep it


def test_errors_carry_the_services_status_and_message(scripted_server):
    base_url = scripted_server([])
    with TipoClient(base_url) as client:
        with pytest.raises(TipoServiceError) as caught:
            client.tipo(tags="1girl", tag_length="medium")
        error = caught.value
        assert error.status == 422 and error.type == "invalid_request_error" and error.param == "tag_length"
        assert "tag_length" in error.message and "very_short" in error.message
        assert str(error).startswith("TIPO service (HTTP 422 invalid_request_error, field 'tag_length'): ")

        with pytest.raises(TipoServiceError) as miss:  # not retried: 424 is no overload
            client.tipo(tags="1girl", seed=5)
        assert miss.value.status == 424 and miss.value.type == "scripted_prompt_missing"

        with pytest.raises(TipoServiceError) as item:  # a failed batch item
            client.tipo_many([{"tags": "1girl", "seed": 5}])
        assert item.value.status is None and item.value.item == 0
        assert item.value.type == "scripted_prompt_missing" and "requests[0]" in str(item.value)


def test_api_key_is_sent_as_bearer_and_read_from_the_environment(scripted_server, monkeypatch):
    base_url = scripted_server([], api_keys="k1,k2")
    with TipoClient(base_url) as client:
        with pytest.raises(TipoServiceError) as caught:
            client.models()
        assert caught.value.status == 401 and caught.value.type == "authentication_error"
    with TipoClient(base_url, api_key="k2") as client:
        assert client.models()["object"] == "list"
    monkeypatch.setenv("TIPO_SERVICE_URL", base_url + "/")
    monkeypatch.setenv("TIPO_SERVICE_API_KEY", "k1")
    with TipoClient() as client:
        assert client.base_url == base_url
        assert client.models()["object"] == "list"


def test_timeouts_and_unreachable_servers(gated):
    engine, base_url = gated(warm=True)
    wait_for(lambda: httpx.get(f"{base_url}/health/ready").status_code == 200, "ready")
    with TipoClient(base_url, timeout=0.3, retry=NO_SLEEP) as client:
        started = time.monotonic()
        with pytest.raises(TipoServiceError) as caught:  # the engine never answers: not retried
            client.tipo(TAGS_REQUEST)
        assert caught.value.type == "timeout" and caught.value.status is None
        assert time.monotonic() - started < 5
    with pytest.raises(TipoServiceError) as server_side, TipoClient(base_url, retry=NO_SLEEP) as client:
        client.tipo(TAGS_REQUEST, timeout_s=0.2)  # the service's own limit: 504, not retried
    assert server_side.value.status == 504 and server_side.value.type == "timeout_error"
    engine.open(engine.call_gate)

    waits = []
    url = f"http://127.0.0.1:{free_port()}"
    with TipoClient(url, retry=RetryPolicy(max_retries=3, backoff_s=0.5, max_backoff_s=1), sleep=waits.append) as client:
        with pytest.raises(TipoServiceError) as refused:
            client.models()
    assert refused.value.type == "connection_error" and url in str(refused.value)
    assert waits == [0.5, 1, 1]  # backoff doubling up to its cap, max_retries waits


# --- retries on 429 / 503 ----------------------------------------------------------------------------------


def busy_server(gated):
    """A ready server whose one engine slot is taken by a request waiting on the gate, queue of 0: 429."""
    engine, base_url = gated(max_in_flight=1, max_queue=0, queue_timeout_s=0.5)
    engine.open(engine.warmup_gate)
    wait_for(lambda: httpx.get(f"{base_url}/health/ready").status_code == 200, "ready")
    first = threading.Thread(target=lambda: httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, timeout=30))
    first.start()
    wait_for(lambda: engine.waiting_calls == 1, "the engine slot taken")
    return engine, base_url, first


def test_busy_429_is_retried_after_retry_after(gated):
    engine, base_url, first = busy_server(gated)
    retries = []

    def on_retry(error, wait, retry):
        retries.append((error.status, error.retry_after, wait, retry))
        engine.open(engine.call_gate)  # the slot frees while the client waits

    started = time.monotonic()
    with TipoClient(base_url, on_retry=on_retry) as client:
        answer = client.tipo(TAGS_REQUEST)
    first.join(timeout=30)
    assert answer["prompt"].count("tag") == 40
    assert len(retries) == 1
    status, retry_after, wait, retry = retries[0]
    assert status == 429 and retry_after >= 1 and wait == retry_after and retry == 1
    assert time.monotonic() - started >= retry_after  # it did wait as told


async def test_busy_429_is_retried_async(gated):
    engine, base_url, first = busy_server(gated)
    waits = []

    async def sleep(seconds):
        waits.append(seconds)
        engine.open(engine.call_gate)
        await asyncio.sleep(0.05)

    async with AsyncTipoClient(base_url, sleep=sleep) as client:
        answer = await client.tipo(TAGS_REQUEST)
    await asyncio.to_thread(first.join, 30)
    assert answer["prompt"].count("tag") == 40 and len(waits) == 1 and waits[0] >= 1


def test_retries_are_bounded_in_count_and_in_time(gated):
    engine, base_url, first = busy_server(gated)
    try:
        waits = []
        with TipoClient(base_url, retry=RetryPolicy(max_retries=2, max_wait_s=600), sleep=waits.append) as client:
            with pytest.raises(TipoServiceError) as caught:
                client.tipo(TAGS_REQUEST)
        assert caught.value.status == 429 and len(waits) == 2  # 2 retries, then the third 429 is raised
        assert "retry after" in str(caught.value)

        waits.clear()
        with TipoClient(base_url, retry=RetryPolicy(max_retries=10, max_wait_s=0.5), sleep=waits.append) as client:
            with pytest.raises(TipoServiceError) as over_budget:  # Retry-After >= 1 s > the 0.5 s budget
                client.tipo(TAGS_REQUEST)
        assert over_budget.value.status == 429 and waits == []

        with TipoClient(base_url, retry=NO_RETRY, sleep=waits.append) as client:
            with pytest.raises(TipoServiceError):
                client.tipo(TAGS_REQUEST)
        assert waits == []
    finally:
        engine.open(engine.call_gate)
        first.join(timeout=30)


def test_not_ready_503_is_retried_after_retry_after(gated):
    """A loading service answers 503 with Retry-After 5: the client waits 5 s (here: told to) and retries."""
    engine, base_url = gated()  # the warm-up waits on its gate: loading
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        engine.open(engine.warmup_gate)
        engine.open(engine.call_gate)
        wait_for(lambda: httpx.get(f"{base_url}/health/ready").status_code == 200, "ready")

    with TipoClient(base_url, sleep=sleep) as client:
        assert client.ready()["status"] == "not_ready"  # a probe reports, never retries
        answer = client.tipo(TAGS_REQUEST)
    assert waits == [5.0] and answer["seed"] == 5


def test_retry_after_as_seconds_or_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert 25 <= later <= 31
    assert parse_retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0

