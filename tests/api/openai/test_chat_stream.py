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

    def read() -> None:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: events, "the first chunk")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # The optimization's engine call is held by the gate: nothing but the role chunk can have come.
    wait_for(lambda: engine.waiting_calls == 1, "the optimization's engine call")
    assert len(events) == 1
    engine.open(engine.call_gate)
    reader.join(timeout=60)
    content = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"])
    assert "1girl" in content and "tag39" in content
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
