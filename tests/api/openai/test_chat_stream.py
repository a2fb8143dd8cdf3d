"""A streamed chat answer starts as soon as the request is admitted: the role chunk goes out while the
optimization still waits on the engine (a gated engine holds its calls)."""

from __future__ import annotations

import json
import threading

import httpx

from tests.api.conftest import wait_ready
from tests.api.gated import wait_for


def test_the_role_chunk_goes_out_before_the_engine_answers(gated):
    engine, base_url = gated(warm=True)
    wait_ready(base_url)
    body = {"model": "scripted", "stream": True, "format": "tag only (DTG mode)", "seed": 5,
            "messages": [{"role": "user", "content": "1girl"}]}
    events: list[dict] = []
    seen_role_while_held = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
                    if len(events) == 1 and engine.waiting_calls == 1:
                        seen_role_while_held.set()

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: events, "the first chunk")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert seen_role_while_held.is_set()  # the engine call was still held when it arrived
    engine.open(engine.call_gate)
    reader.join(timeout=60)
    content = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"])
    assert "1girl" in content and "tag39" in content
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
