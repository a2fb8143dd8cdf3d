"""Test data used across the test packages: the reference's vectors and one tag index per process."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import httpx

# A copy of shared/tipo/vectors.json (75 cases produced by running tipo-kgen 0.3.1 + z-tipo-extension),
# kept in the repository so the tests run on any checkout.
VECTORS_PATH = Path(__file__).parent / "data" / "vectors.json"


def client_limits(connections: int = 100) -> httpx.Limits:
    """Limits for the tests' load clients. Idle connections are dropped well before the server drops them
    (keep_alive_s, 5 s): a request sent on a connection that the server is closing at that moment fails with
    a ReadError that says nothing about the service (httpx's own default expiry is also 5 s)."""
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=1.0)


@cache
def _all_vectors() -> tuple[dict, ...]:
    return tuple(json.loads(VECTORS_PATH.read_text(encoding="utf-8")))


def load_vectors(group: str | None = None) -> list[dict]:
    return [v for v in _all_vectors() if group is None or v["group"] == group]


def vector(vector_id: str) -> dict:
    return next(v for v in _all_vectors() if v["id"] == vector_id)


@cache
def shared_tag_index():
    """One real tag index per test process (~20 MB). Hypothesis tests call this instead of taking the
    fixture, so a failing example does not print the whole index."""
    from service.tag_lists import load_tag_index

    return load_tag_index()


def wait_until_ok(url: str, process, timeout_s: float, log_path: Path, what: str) -> None:
    """Poll `url` until it answers 200; fail with the end of the log when `process` exits first or
    the time runs out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout_s} s:\n{_tail(log_path)}")


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-6000:]
