"""Checks that deploy/test-images.sh runs against a started tipo-service container, from the host.

    python deploy/image_checks.py pip-sources SERVE_DIR PORT   # build args from the host's pip config
    python deploy/image_checks.py wait-ready URL CONTAINER TIMEOUT_S
    python deploy/image_checks.py smoke URL                      # README curl, openai client, /metrics
    python deploy/image_checks.py drain URL CONTAINER STOP_LIMIT_S

Runs with the project's virtual environment (httpx, openai: the dev extra). Each command prints what it
found and exits non-zero on a failed check. Not a pytest module: it needs a Docker engine and a built image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
README_BASE_URL = "http://127.0.0.1:8000"


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def pip_sources(serve_dir: str, port: str) -> None:
    """The host's extra indexes and find-links as Docker build args. Local ones (file:// URLs, paths) are
    not visible inside a build, so they are linked under SERVE_DIR, which the caller serves over HTTP on
    127.0.0.1:PORT (the build runs with --network host). Prints shell assignments."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    values: dict[str, list[str]] = {"extra-index-url": [], "find-links": []}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in values:
            for item in shlex.split(value.strip())[0].split() if value.strip() else []:
                if item not in values[option]:
                    values[option].append(item)
    serve = Path(serve_dir)
    serve.mkdir(parents=True, exist_ok=True)

    def reachable(location: str, index: bool) -> str:
        if location.startswith(("http://", "https://")):
            return location
        path = Path(urlparse(location).path if location.startswith("file://") else location)
        if not path.is_dir():
            return ""
        # An index links its files relatively (../../files/...): serve its parent too.
        target, tail = (path.parent, path.name + "/") if index else (path, "")
        link = serve / str(len(list(serve.iterdir())))
        link.symlink_to(target)
        return f"http://127.0.0.1:{port}/{link.name}/{tail}"

    extra = [u for u in (reachable(x, True) for x in values["extra-index-url"]) if u]
    links = [u for u in (reachable(x, False) for x in values["find-links"]) if u]
    print(f"HOST_PIP_EXTRA_INDEX_URL={shlex.quote(' '.join(extra))}")
    print(f"HOST_PIP_FIND_LINKS={shlex.quote(' '.join(links))}")


def container_running(container: str) -> bool:
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True,
                           text=True).stdout.strip()
    return state == "true"


def wait_ready(url: str, container: str, timeout_s: str) -> None:
    started = time.monotonic()
    deadline = started + float(timeout_s)
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                print(f"ready after {time.monotonic() - started:.0f} s of waiting")
                return
        except httpx.HTTPError:
            pass
        if not container_running(container):
            fail(f"container {container} stopped before it was ready (docker logs {container})")
        time.sleep(1)
    fail(f"not ready within {timeout_s} s")


def readme_curl(url: str) -> list[str]:
    """The README's /v1/tipo curl example, pointed at `url`."""
    readme = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^curl -s " + re.escape(README_BASE_URL) + r"/v1/tipo .*?'\n", readme, re.M | re.S)
    if not match:
        fail("README.md has no `curl -s http://127.0.0.1:8000/v1/tipo ...` example any more")
    command = shlex.split(match.group(0).replace(README_BASE_URL, url))
    return command + ["-w", "\n%{http_code}"]


def smoke(url: str) -> None:
    command = readme_curl(url)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    body, _, status = result.stdout.rpartition("\n")
    if result.returncode != 0 or status != "200":
        fail(f"README /v1/tipo example: curl exit {result.returncode}, HTTP {status}: {body[:500]}")
    answer = json.loads(body)
    if not answer.get("prompt"):
        fail(f"README /v1/tipo example: no prompt in the answer: {body[:500]}")
    print(f"README /v1/tipo example: HTTP 200, prompt {answer['prompt'][:100]!r}...")

    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=os.environ.get("TIPO_TEST_API_KEY", "unused"), max_retries=0)
    model = client.models.list().data[0].id
    completion = client.completions.create(model=model, prompt="1girl, hatsune miku", max_tokens=16, seed=1)
    choice = completion.choices[0]
    if not choice.text or completion.usage.completion_tokens < 1:
        fail(f"openai completion came back empty: {completion}")
    print(f"openai client: model {model!r}, completion {choice.text!r} ({choice.finish_reason}, "
          f"{completion.usage.completion_tokens} tokens)")

    metrics = httpx.get(url + "/metrics", timeout=10)
    if metrics.status_code != 200 or "tipo_requests_total" not in metrics.text:
        fail(f"/metrics: HTTP {metrics.status_code}")
    promtool = subprocess.run(["promtool", "check", "metrics"], input=metrics.text, capture_output=True,
                              text=True) if _have("promtool") else None
    if promtool is not None and promtool.returncode != 0:
        fail(f"promtool check metrics: {promtool.stdout}{promtool.stderr}")
    print("/metrics: HTTP 200" + (", promtool check metrics: clean" if promtool is not None else ""))


def _have(tool: str) -> bool:
    return subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0


def drain(url: str, container: str, stop_limit_s: str) -> None:
    """SIGTERM with a request in flight: readiness 503, newcomers 503, the admitted request finishes with
    200, and the container exits 0 within stop_limit_s (docker-compose's stop_grace_period)."""
    model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    in_flight: dict = {}

    def long_request() -> None:
        try:
            response = httpx.post(url + "/v1/completions", timeout=120, json={
                "model": model, "prompt": "1girl", "max_tokens": 512, "ignore_eos": True, "n": 4})
            in_flight["status"] = response.status_code
            in_flight["completion_tokens"] = response.json().get("usage", {}).get("completion_tokens")
        except httpx.HTTPError as exc:
            in_flight["error"] = repr(exc)

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(1.5)
    signalled = time.monotonic()
    subprocess.run(["docker", "kill", "--signal", "TERM", container], check=True, capture_output=True)
    time.sleep(0.5)
    ready = httpx.get(url + "/health/ready", timeout=5).status_code
    newcomer = httpx.post(url + "/v1/completions", timeout=10,
                          json={"model": model, "prompt": "x", "max_tokens": 4}).status_code
    thread.join()
    waited = subprocess.run(["docker", "wait", container], capture_output=True, text=True,
                            timeout=float(stop_limit_s) + 30)
    stopped_s = time.monotonic() - signalled
    report = {"ready_while_draining": ready, "new_request_while_draining": newcomer, "in_flight": in_flight,
              "exit_code": waited.stdout.strip(), "stopped_after_s": round(stopped_s, 1)}
    print(f"SIGTERM: {json.dumps(report)}")
    if ready != 503 or newcomer != 503:
        fail("while draining, readiness and new requests must answer 503")
    if in_flight.get("status") != 200 or in_flight.get("completion_tokens") != 4 * 512:
        fail("the request in flight at SIGTERM did not finish")
    if report["exit_code"] != "0" or stopped_s > float(stop_limit_s):
        fail(f"the container must exit 0 within {stop_limit_s} s")


def main(argv: list[str]) -> None:
    commands = {"pip-sources": pip_sources, "wait-ready": wait_ready, "smoke": smoke, "drain": drain}
    if not argv or argv[0] not in commands:
        fail(f"usage: image_checks.py {{{','.join(commands)}}} ARGS...")
    commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
