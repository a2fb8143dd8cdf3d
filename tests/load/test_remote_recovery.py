"""A gateway on the remote engine follows its upstream (issue "Bounded cost", row 7).

The upstream is a real `python -m service` process (scripted engine) on 127.0.0.1; the gateway is
this service with TIPO_ENGINE=remote in front of it, served by uvicorn in the test process. The
gateway starts before its upstream, and the upstream is killed and started again on the same port:
liveness never fails, readiness follows the upstream, requests are answered again once it is back.
"""

from __future__ import annotations

import json
import time

import httpx

from service.app import create_app
from service.gateway import PROBE_PROMPT
from service.settings import Settings
from tests.api.conftest import free_port, serve
from tests.api.gated import wait_for

HELLO = {"prompt": "hello", "max_tokens": 4}
UPSTREAM_SCRIPT = [{"prompt": "hello", "completion": " world"}, {"prompt": PROBE_PROMPT, "completion": ", solo"}]


def _probe(base_url: str, path: str) -> int:
    return httpx.get(f"{base_url}{path}", timeout=5).status_code


def test_the_gateway_becomes_ready_when_its_upstream_does_and_recovers_after_an_outage(
        service_process, server_loop, tag_index, tmp_path):
    script = tmp_path / "upstream.json"
    script.write_text(json.dumps(UPSTREAM_SCRIPT))
    upstream_port = free_port()
    settings = Settings(engine="remote", remote_url=f"http://127.0.0.1:{upstream_port}/v1", remote_retries=1,
                        remote_timeout_s=5, engine_stall_s=30)
    gateway_app = create_app(settings, tag_index=tag_index)
    with serve(gateway_app, server_loop.loop) as gateway:
        # 1. No upstream yet: alive, not ready (and says why), requests 503.
        time.sleep(1.5)
        assert _probe(gateway, "/health/live") == 200
        ready = httpx.get(f"{gateway}/health/ready", timeout=5)
        assert ready.status_code == 503 and "waiting for the engine" in ready.json()["detail"]
        assert httpx.post(f"{gateway}/v1/completions", json=HELLO, timeout=10).status_code == 503

        # 2. The upstream comes up: the gateway becomes ready by itself.
        upstream = service_process(port=upstream_port, engine="scripted", scripted_path=script)
        upstream.wait_ready()
        wait_for(lambda: _probe(gateway, "/health/ready") == 200, "gateway ready after its upstream")
        answer = httpx.post(f"{gateway}/v1/completions", json=HELLO, timeout=10)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == " world"

        # 3. The upstream dies: requests 503, readiness 503, liveness still 200.
        upstream.stop()
        down = httpx.post(f"{gateway}/v1/completions", json=HELLO, timeout=10)
        assert down.status_code == 503 and down.json()["error"]["type"] == "engine_error"
        assert _probe(gateway, "/health/ready") == 503
        assert _probe(gateway, "/health/live") == 200

        # 4. It comes back on the same address: the gateway's probes find it.
        again = service_process(port=upstream_port, engine="scripted", scripted_path=script)
        again.wait_ready()
        wait_for(lambda: _probe(gateway, "/health/ready") == 200, "gateway ready again")
        assert _probe(gateway, "/health/live") == 200
        assert httpx.post(f"{gateway}/v1/completions", json=HELLO, timeout=10).status_code == 200


def test_an_upstream_that_goes_away_while_idle_turns_readiness_off(service_process, server_loop, tag_index,
                                                                   tmp_path):
    script = tmp_path / "upstream.json"
    script.write_text(json.dumps(UPSTREAM_SCRIPT))
    upstream = service_process(engine="scripted", scripted_path=script)
    upstream.wait_ready()
    settings = Settings(engine="remote", remote_url=f"{upstream.base_url}/v1", remote_retries=0)
    with serve(create_app(settings, tag_index=tag_index), server_loop.loop) as gateway:
        wait_for(lambda: _probe(gateway, "/health/ready") == 200, "gateway ready")
        upstream.stop()
        # No request is sent: the gateway's periodic check notices (every HEALTH_CHECK_S).
        deadline = time.monotonic() + 15
        while _probe(gateway, "/health/ready") == 200:
            assert time.monotonic() < deadline, "readiness did not follow the upstream"
            time.sleep(0.2)
        assert _probe(gateway, "/health/live") == 200
