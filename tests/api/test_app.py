"""The app as a whole over real HTTP: readiness, error answers, admission, auth, /metrics.

Most tests use the scripted engine; `gated` servers (tests/api/gated.py) reach "still loading",
"busy" and "too slow" deterministically, without timing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import httpx
import pytest

from tests.api.conftest import wait_ready
from tests.api.gated import SCRIPT, TAGS_REQUEST, wait_for as _wait

# --- readiness and liveness

def test_ready_only_after_a_real_generation(gated):
    engine, base_url = gated()
    ready = httpx.get(f"{base_url}/health/ready")
    assert ready.status_code == 503 and "warm-up" in ready.json()["detail"]
    assert httpx.get(f"{base_url}/health/live").status_code == 200
    refused = httpx.post(f"{base_url}/v1/tipo", json={"tags": "1girl"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    engine.dead = True
    assert httpx.get(f"{base_url}/health/ready").status_code == 503
    assert httpx.get(f"{base_url}/health/live").json()["detail"] == "the engine has died"


def test_failed_start_stays_not_ready_and_not_live(gated):
    engine, base_url = gated(fail_warmup=True)
    engine.open(engine.warmup_gate)
    _wait(lambda: "failed" in httpx.get(f"{base_url}/health/ready").json()["detail"], "start-up failure reported")
    ready = httpx.get(f"{base_url}/health/ready").json()
    assert "model weights are corrupt" in ready["detail"]
    assert httpx.get(f"{base_url}/health/live").status_code == 503


# --- admission control and timeouts

def test_queue_full_is_429_with_retry_after_and_queue_wait_past_its_limit_is_503(gated):
    engine, base_url = gated(max_in_flight=1, max_queue=1, queue_timeout_s=0.5)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        results = {}
        first = threading.Thread(target=lambda: results.update(first=client.post("/v1/completions",
                                                                                  json={"prompt": "hello"})))
        first.start()
        _wait(lambda: engine.waiting_calls == 1, "first request in the engine")
        second = threading.Thread(target=lambda: results.update(second=client.post("/v1/completions",
                                                                                   json={"prompt": "hello"})))
        second.start()
        _wait(lambda: "tipo_requests_waiting 1.0" in client.get("/metrics").text, "second request queued")
        third = client.post("/v1/tipo", json={"tags": "1girl"})
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["type"] == "rate_limit_error"
        second.join()  # waited 0.5 s for a slot: gives up
        assert results["second"].status_code == 503
        assert "no engine slot" in results["second"].json()["error"]["message"]
        engine.open(engine.call_gate)
        first.join()
        assert results["first"].status_code == 200
        assert results["first"].json()["choices"][0]["text"] == " world"


def test_request_timeout_is_504_and_aborts_the_engine_call(gated):
    engine, base_url = gated(request_timeout_s=0.3)
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    answer = httpx.post(f"{base_url}/v1/tipo", json={"tags": "1girl", "timeout_s": 100}, timeout=30)
    assert answer.status_code == 504  # timeout_s is capped by the server's request_timeout_s
    assert answer.json()["error"]["type"] == "timeout_error"
    assert len(engine.aborted) == 1 and engine.aborted[0].startswith("tipo-")


def test_client_that_leaves_gets_its_engine_call_aborted_and_counted(gated):
    engine, base_url = gated()
    engine.open(engine.warmup_gate)
    wait_ready(base_url)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client closes the connection after 0.2 s
            client.post("/v1/tipo", json=TAGS_REQUEST, timeout=0.2)
        _wait(lambda: len(engine.aborted) == 1, "engine call aborted")
        assert "tipo_client_disconnects_total 1.0" in client.get("/metrics").text


def test_engine_without_progress_fails_pending_requests_liveness_and_readiness(gated):
    engine, base_url = gated(engine_stall_s=0.2, warm=True)  # a gated warm-up would itself count as a stall
    wait_ready(base_url)
    answers = []
    stuck = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, timeout=30)))
    stuck.start()
    stuck.join()  # the pending request fails fast (503), long before its own timeout
    assert answers[0].status_code == 503 and "no progress for 0.2 s" in answers[0].json()["error"]["message"]
    assert answers[0].json()["error"]["type"] == "engine_error"
    # Nothing is pending now, yet liveness keeps failing: only engine progress ends a stall.
    assert httpx.get(f"{base_url}/health/live").status_code == 503
    assert "no progress" in httpx.get(f"{base_url}/health/ready").json()["detail"]
    assert httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST).status_code == 503
    engine.open(engine.call_gate)  # the engine moves again: the service's probe generation comes back
    _wait(lambda: httpx.get(f"{base_url}/health/live").status_code == 200, "liveness recovers")
    assert httpx.get(f"{base_url}/health/ready").status_code == 200
    assert httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST).status_code == 200


# --- error answers

@pytest.fixture
def server(scripted_server):
    return scripted_server(SCRIPT)


@pytest.mark.parametrize("body, param, hint", [
    ({"tags": "1girl", "tag_length": "medium"}, "tag_length", "'very_short', 'short', 'long' or 'very_long'"),
    ({"tags": "1girl", "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"tags": "1girl", "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"tags": "1girl", "format": "fancy"}, "format", "preset name"),
    ({"tags": "1girl", "ban_tags": "(["}, "ban_tags", "not a valid regular expression"),
    ({"tags": "1girl", "ban_tags": "sky, (a+)+$"}, "ban_tags", "exponential time"),
    ({"tags": "1girl", "operation": "tag_to_everything"}, "operation", "'None', 'long_to_tag'"),
    ({"tags": ", ".join(["x"] * 600)}, "tags", "at most 512"),
])
def test_bad_input_is_422_naming_the_field_and_the_fix(server, body, param, hint):
    response = httpx.post(f"{server}/v1/tipo", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert hint in error["message"]


def test_malformed_json_and_unknown_routes_get_the_error_shape(server):
    response = httpx.post(f"{server}/v1/tipo", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]["message"]
    missing = httpx.get(f"{server}/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_reference_crash_in_kgen_profile_is_422_and_fixed_profile_answers(server):
    body = {"nl_prompt": "...", "format": "NL only (Tag to NL)", "seed": 1, "tag_length": "very_short"}
    kgen = httpx.post(f"{server}/v1/tipo", json={**body, "profile": "kgen"})
    assert kgen.status_code == 422
    assert kgen.json()["error"]["type"] == "reference_failure"
    assert "fixed" in kgen.json()["error"]["message"]
    fixed = httpx.post(f"{server}/v1/tipo", json={**body, "profile": "fixed"})
    assert fixed.status_code == 200 and fixed.json()["prompt"] == "A girl smiles."


def test_replay_miss_is_424_naming_the_prompt(server):
    response = httpx.post(f"{server}/v1/tipo", json={"tags": "1boy", "seed": 1})
    assert response.status_code == 424
    error = response.json()["error"]
    assert error["type"] == "scripted_prompt_missing" and "tag: 1boy" in error["message"]


def test_body_too_large_is_413(scripted_server):
    base_url = scripted_server(SCRIPT, max_body_bytes=2048)
    response = httpx.post(f"{base_url}/v1/tipo", json={"tags": "x" * 4000})
    assert response.status_code == 413 and "at most 2048" in response.json()["error"]["message"]


def test_api_keys_guard_the_api_but_not_the_probes(scripted_server):
    base_url = scripted_server(SCRIPT, api_keys="k1, k2")
    assert httpx.get(f"{base_url}/v1/models").status_code == 401
    assert httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert httpx.get(f"{base_url}/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
    assert httpx.get(f"{base_url}/health/ready").status_code == 200
    assert httpx.get(f"{base_url}/metrics").status_code == 200


# --- batch

def test_batch_runs_each_request_with_its_seeds_and_reports_item_errors(server):
    good = TAGS_REQUEST
    response = httpx.post(f"{server}/v1/tipo/batch", json={"requests": [good, {**good, "tags": "1boy"}], "n": 2})
    assert response.status_code == 200
    items = response.json()["data"]
    assert [(i["index"], i["variant"]) for i in items] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [i["result"]["seed"] for i in items[:2]] == [5, 6]
    assert items[0]["result"]["prompt"] == httpx.post(f"{server}/v1/tipo", json=good).json()["prompt"]
    assert all(i["error"]["type"] == "scripted_prompt_missing" for i in items[2:])


def test_batch_larger_than_max_batch_is_422(server):
    response = httpx.post(f"{server}/v1/tipo/batch", json={"requests": [{"tags": "1girl"}] * 40, "n": 2})
    assert response.status_code == 422
    assert "at most 64" in response.json()["error"]["message"]


# --- metrics

def test_metrics_text_passes_promtool_and_counts_requests(server):
    assert httpx.post(f"{server}/v1/tipo", json=TAGS_REQUEST).status_code == 200
    httpx.post(f"{server}/v1/tipo", json={"tags": "1girl", "tag_length": "medium"})
    text = httpx.get(f"{server}/metrics").text
    for name in ("tipo_requests_total", "tipo_request_duration_seconds_bucket", "tipo_model_calls_per_request_bucket",
                 "tipo_prompt_tokens_total", "tipo_completion_tokens_total", "tipo_requests_in_flight",
                 "tipo_requests_waiting", "tipo_engine_errors_total", "tipo_client_disconnects_total",
                 "tipo_engine_running_requests", "tipo_engine_waiting_requests"):
        assert f"\n{name}" in text, name
    assert 'tipo_requests_total{endpoint="/v1/tipo",status="200"} 1.0' in text
    assert 'tipo_requests_total{endpoint="/v1/tipo",status="422"} 1.0' in text
    assert 'tipo_request_duration_seconds_bucket{endpoint="/v1/tipo",le="0.005"}' in text
    assert 'tipo_request_duration_seconds_bucket{endpoint="/v1/tipo",le="60.0"}' in text

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI (apt-get install -y prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr


def test_openapi_documents_ranges_examples_and_the_chat_rule(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    fields = schema["components"]["schemas"]["TipoRequestBody"]["properties"]
    assert (fields["width"]["minimum"], fields["width"]["maximum"]) == (1, 16384)
    assert fields["tag_length"]["enum"] == ["very_short", "short", "long", "very_long"]
    assert fields["tags"]["examples"] and fields["temperature"]["maximum"] == 2
    assert "comma-separated pieces" in schema["paths"]["/v1/chat/completions"]["post"]["description"]
