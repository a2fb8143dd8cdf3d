"""HEAD /health/live and HEAD /health/ready: the GET's status, no body (load balancers probe with HEAD)."""

from __future__ import annotations

import httpx

SCRIPT = [{"prompt": "hello", "completion": " world"}]
PROBES = ("/health/live", "/health/ready")


def test_head_probes_answer_like_get_without_a_body(scripted_server):
    base_url = scripted_server(SCRIPT)
    for path in PROBES:
        got, head = httpx.get(f"{base_url}{path}", timeout=10), httpx.head(f"{base_url}{path}", timeout=10)
        assert got.status_code == head.status_code == 200, (path, head.status_code)
        assert got.content and head.content == b""
        assert head.headers["content-type"] == "application/json"


def test_head_ready_is_503_while_loading(scripted_server):
    # The warm-up generation waits scripted_delay_s: not ready yet, but live.
    base_url = scripted_server(SCRIPT, ready=False, scripted_delay_s=3)
    ready = httpx.head(f"{base_url}/health/ready", timeout=10)
    assert ready.status_code == httpx.get(f"{base_url}/health/ready", timeout=10).status_code == 503
    assert ready.content == b""
    assert httpx.head(f"{base_url}/health/live", timeout=10).status_code == 200
