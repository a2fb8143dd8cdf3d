"""Bad input, access and faults over real HTTP (scripted engine): limits, control characters, API keys
on every route, keyed /metrics, CORS, and error bodies without internals.
"""

from __future__ import annotations

import json

import httpx
import pytest

from service.app import create_app
from service.engine.base import Engine
from service.settings import Settings
from tests.api.conftest import serve, wait_ready
from tests.api.test_app import SCRIPT, TAGS_REQUEST

OPEN_PATHS = {"/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect",
              "/redoc"}


# --- input limits

@pytest.mark.parametrize("body, param, hint", [
    ({"tags": "x" * 1001}, "tags", "tags too long: 1001 characters; the server allows at most 1000"),
    ({"tags": ", ".join(["x"] * 65)}, "tags", "too many tags: 65; the server allows at most 64"),
    ({"tags": "1girl", "nl_prompt": "A" * 401}, "nl_prompt", "nl_prompt too long: 401 characters"),
    ({"tags": "(" * 9 + "1girl"}, "tags", "brackets nested 9 deep (unclosed ones count); the server allows at most 8"),
    ({"tags": "(a:" * 9}, "tags", "nested 9 deep"),
    ({"tags": "(]" * 9}, "tags", "nested 9 deep"),  # a `]` does not close a `(`
    ({"nl_prompt": "((((((((((A girl.))))))))))"}, "nl_prompt", "nested 10 deep"),
])
def test_limits_are_422_naming_the_field_and_the_limit(scripted_server, body, param, hint):
    base_url = scripted_server(SCRIPT, max_tag_chars=1000, max_tags=64, max_caption_chars=400, max_bracket_depth=8)
    for path, payload in (("/v1/tipo", body), ("/v1/tipo/batch", {"requests": [body]})):
        response = httpx.post(f"{base_url}{path}", json=payload)
        assert response.status_code == 422, response.text
        assert hint in response.json()["error"]["message"]
    assert httpx.post(f"{base_url}/v1/tipo", json=body).json()["error"]["param"] == param


def test_limits_hold_for_the_chat_endpoint_and_escaped_brackets_do_not_count(scripted_server):
    base_url = scripted_server(SCRIPT, max_bracket_depth=8)
    chat = httpx.post(f"{base_url}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "tags: " + "(" * 9 + "1girl"}]})
    assert chat.status_code == 400 and "nested 9 deep" in chat.json()["error"]["message"]  # OpenAI-style: 400
    escaped = httpx.post(f"{base_url}/v1/tipo", json={**TAGS_REQUEST, "nl_prompt": "\\(" * 20})
    assert escaped.status_code != 422, escaped.text


def test_control_characters_are_removed_and_line_ends_normalised(scripted_server):
    base_url = scripted_server(SCRIPT)
    clean = httpx.post(f"{base_url}/v1/tipo", json={**TAGS_REQUEST, "return_trace": True}).json()
    dirty = httpx.post(f"{base_url}/v1/tipo", json={**TAGS_REQUEST, "tags": "\x001g\x07irl\x1b\x7f\x85\u009f",
                                                     "return_trace": True})
    assert dirty.status_code == 200, dirty.text
    assert dirty.json()["trace"][0]["prompt"] == clean["trace"][0]["prompt"]  # the model saw "1girl"
    assert dirty.json()["prompt"] == clean["prompt"]
    # CR LF and lone CR are line ends; tab stays; a lone surrogate (JSON "\ud800") becomes U+FFFD.
    from service.api.tipo.protocol import TipoRequestBody

    body = TipoRequestBody(tags="a\r\nb\rc\td", nl_prompt="x\ud800y", ban_tags=["s\x00ky"])
    assert (body.tags, body.nl_prompt, body.ban_tags) == ("a\nb\nc\td", "x\ufffdy", ["sky"])
    raw = b'{"tags": "1girl", "seed": 5, "format": "tag only (DTG mode)", "nl_prompt": "\\ud800"}'
    answer = httpx.post(f"{base_url}/v1/tipo", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code in (200, 424), answer.text  # answered, never a 500


# --- access

def _routes(base_url: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item]


@pytest.mark.parametrize("metrics_require_key", [False, True])
def test_without_or_with_a_wrong_key_only_the_open_endpoints_answer(scripted_server, metrics_require_key):
    base_url = scripted_server(SCRIPT, api_keys="right-key", metrics_require_key=metrics_require_key)
    open_paths = OPEN_PATHS - ({"/metrics"} if metrics_require_key else set())
    routes = _routes(base_url) + [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"),
                                  ("POST", "/v1/unknown"), ("POST", "/v1/tipo")]
    assert ("POST", "/v1/tipo") in routes and ("GET", "/metrics") in routes
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                    {"Authorization": "Basic right-key"}, {"Authorization": "Bearer right-key-and-more"}):
        for method, path in routes:
            # A valid body, a broken one and none: the key is checked before the body is read.
            for content in (json.dumps(TAGS_REQUEST), "{broken", None):
                response = httpx.request(method, f"{base_url}{path}", headers={**headers, "content-type":
                                         "application/json"}, content=content)
                if path in open_paths:
                    assert response.status_code == 200, (method, path, headers, response.text)
                else:
                    assert response.status_code == 401, (method, path, headers, content, response.status_code)
                    assert response.json()["error"]["type"] == "authentication_error"
                    assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": "Bearer right-key"}
    assert httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, headers=good).status_code == 200
    assert httpx.get(f"{base_url}/metrics", headers={"X-API-Key": "right-key"}).status_code == 200


def test_cors_answers_only_allowed_origins(scripted_server):
    base_url = scripted_server(SCRIPT, cors_origins="https://ui.example, http://localhost:7860", api_keys="k")
    preflight = httpx.options(f"{base_url}/v1/tipo", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200  # preflights carry no key; the browser sends it afterwards
    assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    answer = httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST,
                        headers={"Origin": "http://localhost:7860", "Authorization": "Bearer k"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:7860"
    refused = httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, headers={"Origin": "http://localhost:7860"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "http://localhost:7860"

    evil = httpx.options(f"{base_url}/v1/tipo", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    evil_post = httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST,
                           headers={"Origin": "https://evil.example", "Authorization": "Bearer k"})
    assert "access-control-allow-origin" not in evil_post.headers  # the browser hides the answer


def test_without_cors_origins_no_cors_headers_are_sent(scripted_server):
    base_url = scripted_server(SCRIPT)
    answer = httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, headers={"Origin": "https://ui.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


# --- faults: no stack traces or internal paths in error bodies

class BrokenEngine(Engine):
    """An engine with a bug: every call after the warm-up raises an unexpected exception naming a path."""

    async def generate(self, prompt, sampling, request_id, segments=None):
        if request_id == "warmup":
            from service.engine.base import Completion

            return Completion(text="")
        raise KeyError(f"internal state missing in {__file__}")


def test_an_internal_error_is_a_generic_500_without_internals(server_loop, tag_index):
    app = create_app(Settings(engine="scripted"), engine=BrokenEngine(), tag_index=tag_index)
    with serve(app, server_loop.loop) as base_url:
        wait_ready(base_url)
        answers = [
            httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST),
            httpx.post(f"{base_url}/v1/tipo/batch", json={"requests": [TAGS_REQUEST]}),
            httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "1girl"}]}),
            httpx.post(f"{base_url}/v1/completions", json={"prompt": "hello"}),
            httpx.post(f"{base_url}/v1/completions", json={"prompt": "hello", "stream": True}),
        ]
        for answer in answers:
            assert answer.status_code in (500, 200), answer.text  # 200: the stream had started
            for secret in ("Traceback", "KeyError", "internal state", "/work", ".py", __file__):
                assert secret not in answer.text, (secret, answer.text)
            assert "internal server error" in answer.text
        assert answers[0].json() == {"error": {"message": "internal server error", "type": "server_error",
                                               "param": None, "code": None}}
        assert httpx.get(f"{base_url}/health/live").status_code == 200  # a bug in one request is no outage
