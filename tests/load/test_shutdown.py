"""SIGTERM in the middle of a load: `python -m service` as a real process (scripted engine, 1 s per call).

Kubernetes sends SIGTERM to stop a pod. Every request admitted before the signal (running or queued)
must get its full answer; readiness turns 503 at once, newcomers get 503 (or, once the port is
closed, connection refused), and the process exits 0 within settings.shutdown_grace_s.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx

# One model call per request: 40 tags meet the `long` target; the "tag only" format wants no caption.
TAGS_PROMPT = "aspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl"
COMPLETION = "".join(f", tag{i}" for i in range(40))
REQUEST = {"tags": "1girl", "seed": 5, "format": "tag only (DTG mode)"}
IN_FLIGHT, QUEUE = 4, 8


def gauge(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def wait_for(predicate, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def test_sigterm_finishes_every_admitted_request_refuses_newcomers_and_exits_0(service_process, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"prompt": TAGS_PROMPT, "completion": COMPLETION}]))
    service = service_process(engine="scripted", scripted_path=script, scripted_delay_s=1.0, adaptive_limit=False,
                              max_in_flight=IN_FLIGHT, max_queue=QUEUE, shutdown_grace_s=30)
    service.wait_ready(timeout_s=60)
    base_url = service.base_url
    expected = httpx.post(f"{base_url}/v1/tipo", json=REQUEST, timeout=30).json()["prompt"]

    # Fill every slot and the whole queue: 12 requests admitted before the signal.
    answers: dict[int, httpx.Response | Exception] = {}

    def send(index: int) -> None:
        try:
            answers[index] = httpx.post(f"{base_url}/v1/tipo", json=REQUEST, timeout=60)
        except Exception as exc:  # recorded: a lost answer fails the test below
            answers[index] = exc

    admitted = [threading.Thread(target=send, args=(i,)) for i in range(IN_FLIGHT + QUEUE)]
    for thread in admitted:
        thread.start()
    wait_for(lambda: gauge(base_url, "tipo_requests_in_flight") == IN_FLIGHT
             and gauge(base_url, "tipo_requests_waiting") == QUEUE, "every slot and queue place taken")

    service.process.send_signal(signal.SIGTERM)
    # At once: not ready, and a newcomer is refused (the port stays open while admitted work drains).
    ready = httpx.get(f"{base_url}/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["detail"] == "shutting down"
    newcomer = httpx.post(f"{base_url}/v1/tipo", json=REQUEST, timeout=10)
    assert newcomer.status_code == 503 and newcomer.headers["retry-after"]
    assert "shutting down" in newcomer.json()["error"]["message"]
    assert httpx.get(f"{base_url}/health/live", timeout=10).status_code == 200  # draining is not dying

    late_statuses = []
    while service.process.poll() is None:  # keep knocking until the process is gone
        try:
            late_statuses.append(httpx.post(f"{base_url}/v1/tipo", json=REQUEST, timeout=10).status_code)
        except httpx.TransportError:
            late_statuses.append("refused")
        time.sleep(0.1)
    for thread in admitted:
        thread.join()

    assert service.process.wait(timeout=60) == 0, service.log()
    lost = [i for i, answer in answers.items() if not isinstance(answer, httpx.Response)
            or answer.status_code != 200 or answer.json()["prompt"] != expected]
    assert len(answers) == IN_FLIGHT + QUEUE and lost == [], {i: answers[i] for i in lost}
    assert set(late_statuses) <= {503, "refused"} and late_statuses, late_statuses
    print(f"\nFIGURES sigterm: {len(answers)} admitted -> {len(answers) - len(lost)} x 200, lost {len(lost)}; "
          f"after the signal: 1 + {late_statuses.count(503)} x 503, {late_statuses.count('refused')} refused; exit 0")
    assert "shutdown signal" in service.log()
