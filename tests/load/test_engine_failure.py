"""The vLLM engine frozen, then killed, in the middle of a load: `python -m service` as a real process
on the tiny random model (the session's shared engine is not touched).

Frozen (SIGSTOP of its EngineCore process): the pending requests fail with 503 once the engine has made
no progress for settings.engine_stall_s, liveness and readiness fail, and both recover when the
engine moves again (SIGCONT). Killed (SIGKILL): the pending requests fail with 503 at once, readiness
and liveness fail for good (Kubernetes restarts the pod), and SIGTERM still exits 0.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx

STALL_S = 3.0
# Long generations (random tiny model: it rarely stops early), so the load is still running when hit.
LONG = {"tags": "1girl", "tag_length": "very_long", "max_new_tokens": 1000}
LOAD = 6


def start_load(base_url: str) -> tuple[list[threading.Thread], list]:
    answers: list = []

    def send(seed: int) -> None:
        started = time.monotonic()
        try:
            response = httpx.post(f"{base_url}/v1/tipo", json={**LONG, "seed": seed}, timeout=120)
            answers.append((response.status_code, response.json()["error"]["message"]
                            if response.status_code != 200 else "", time.monotonic() - started))
        except Exception as exc:  # a hang or a dropped connection: reported by the asserts below
            answers.append((type(exc).__name__, str(exc), time.monotonic() - started))

    threads = [threading.Thread(target=send, args=(seed,)) for seed in range(1, LOAD + 1)]
    for thread in threads:
        thread.start()
    return threads, answers


def engine_busy(base_url: str) -> bool:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return f"tipo_requests_in_flight {float(LOAD)}" in text


def wait_for(predicate, what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def probes(base_url: str) -> tuple[int, int, str]:
    live = httpx.get(f"{base_url}/health/live", timeout=10)
    ready = httpx.get(f"{base_url}/health/ready", timeout=10)
    return live.status_code, ready.status_code, ready.json()["detail"]


def test_frozen_then_killed_engine_fails_pending_requests_fast_and_flips_the_probes(service_process, tiny_model):
    service = service_process(engine="vllm", model=tiny_model.path, engine_stall_s=STALL_S, max_in_flight=LOAD,
                              adaptive_limit=False,
                              kv_cache_gib=1, shutdown_grace_s=10)
    service.wait_ready()
    base_url = service.base_url
    core = service.engine_core()

    # --- frozen: no progress for engine_stall_s
    threads, answers = start_load(base_url)
    wait_for(lambda: engine_busy(base_url), "the load reached the engine")
    core.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request hung on the frozen engine"
    waited_s = time.monotonic() - frozen_at
    assert [status for status, _, _ in answers] == [503] * LOAD, answers
    assert all("no progress for 3 s" in message for _, message, _ in answers), answers
    assert waited_s < 30  # far below request_timeout_s (120 s): the watchdog answered, not the timeout
    live, ready, detail = probes(base_url)
    assert (live, ready) == (503, 503) and "no progress" in detail  # Kubernetes would restart the pod
    assert httpx.post(f"{base_url}/v1/tipo", json=LONG, timeout=10).status_code == 503
    print(f"\nFIGURES frozen: {LOAD} pending -> {LOAD} x 503 within {waited_s:.1f} s of SIGSTOP "
          f"(engine_stall_s={STALL_S:g})")

    core.send_signal(signal.SIGCONT)  # it moves again: the service's probe generation comes back
    wait_for(lambda: probes(base_url)[:2] == (200, 200), "recovery after the engine moves again")
    assert httpx.post(f"{base_url}/v1/tipo", json={**LONG, "max_new_tokens": 8}, timeout=60).status_code == 200

    # --- killed
    threads, answers = start_load(base_url)
    wait_for(lambda: engine_busy(base_url), "the second load reached the engine")
    core.kill()
    killed_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request hung on the dead engine"
    waited_s = time.monotonic() - killed_at
    assert [status for status, _, _ in answers] == [503] * LOAD, answers
    assert all("died" in message for _, message, _ in answers), answers
    assert probes(base_url) == (503, 503, "the engine has died")
    refused = httpx.post(f"{base_url}/v1/tipo", json=LONG, timeout=10)
    assert refused.status_code == 503 and "the engine has died" in refused.json()["error"]["message"]
    print(f"FIGURES killed: {LOAD} pending -> {LOAD} x 503 within {waited_s:.1f} s of SIGKILL")

    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 0, service.log()
