"""A newcomer's first run: `python -m service` on its defaults, then the README's own curl example.

The defaults are the embedded vLLM CPU engine and `TIPO_MODEL=auto`: with no real TIPO model under
model_store/models/, the demo model (built on first use) serves. The example must answer 200, with
few model calls, and the log must say what to do next.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_curl_example() -> tuple[str, dict]:
    """The path and JSON body of the first `curl ... -d '{...}'` in README.md."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"curl -s http://127\.0\.0\.1:8000(\S+) .*?-d '(\{.*?\})'", readme, re.DOTALL)
    assert found, "README.md has no curl example"
    return found[1], json.loads(found[2])


def test_the_readme_example_answers_on_the_defaults(demo_model, service_process):
    # `demo_model` builds the demo where the defaults look for it (model_store/models/tiny-demo), as the
    # first run would, but with no time limit: on a loaded machine the build takes minutes.
    path, body = readme_curl_example()
    service = service_process()  # only host and port are set: every other setting is its default
    service.wait_ready(timeout_s=600)
    started = time.monotonic()
    answer = httpx.post(f"{service.base_url}{path}", json=body, timeout=120)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["usage"]["model_calls"] <= 4, result["usage"]
    assert result["new_tags"], "the demo model added no tags"
    print(f"README example: 200 in {elapsed:.1f} s, {result['usage']['model_calls']} model calls")
    log = service.log_path.read_text(errors="replace")  # the whole log: the warning comes first
    assert "DEMO" in log.upper()
    assert f"{service.base_url}/docs" in log and "curl" in log  # what to do next, once ready
