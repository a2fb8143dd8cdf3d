"""Fuzzing the OpenAPI schema with schemathesis against a real server on 127.0.0.1.

Every operation of /openapi.json gets generated requests, valid and invalid (hypothesis, schemathesis
4): no answer may be a 5xx, and every answer must match the schema: a documented status code, its
content type, its headers and its body schema.

The engine answers every prompt at once with text shaped like a TIPO model's (tags, captions, stray
fields, markers, EOS), so generated requests run the whole TIPO pipeline; the scripted engine would
stop most of them at their first prompt (424) and vLLM would take minutes for thousands.
"""

from __future__ import annotations

import random

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.engine.base import Completion, Engine
from service.settings import Settings
from tests.api.conftest import serve, wait_ready

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 300
TAGS = ["1girl", "solo", "long hair", "smile", "twintails", "sky", "masterpiece", "absurdres", "safe", "hatsune miku",
        "<|empty|>", "target: x", "tag: y"]
SENTENCES = ["A girl stands outdoors.", "She smiles", "Note: calm", "<|empty|>", "...", ""]


class AnyPromptEngine(Engine):
    """Answers any prompt, deterministically per (prompt, seed), like a TIPO model would and would not."""

    model_name = "any-prompt"

    async def generate(self, prompt, sampling, request_id, segments=None) -> Completion:
        draw = random.Random(f"{sampling.seed}|{prompt}")
        tags = ", ".join(draw.sample(TAGS, draw.randint(0, len(TAGS))))
        story = " ".join(draw.sample(SENTENCES, draw.randint(0, 3)))
        text = draw.choice([
            f", {tags}", f" {story}", f" {story}\ntag: {tags}", f"\ntag: {tags}\nlong: {story}", "", "</s>",
            f", {tags}\nlong: {story}\nextended: x\ngenerated: y", f" <|empty|>\nshort: {story}",
        ])
        return Completion(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(text) // 4)


# Small limits, so generated input reaches them.
FUZZ_SETTINGS = Settings(engine="scripted", max_batch=8, max_tags=64, max_caption_chars=400, max_tag_chars=1000,
                         max_bracket_depth=8)
# The schema the server below serves (building an app starts nothing: the engine starts in its lifespan).
# `schemathesis.pytest.from_fixture` would read it from the server, but it fails on pytest 9.
schema = schemathesis.openapi.from_dict(create_app(FUZZ_SETTINGS, engine=AnyPromptEngine()).openapi())


@pytest.fixture(scope="module")
def fuzz_server(server_loop, tag_index):
    app = create_app(FUZZ_SETTINGS, engine=AnyPromptEngine(), tag_index=tag_index)
    with serve(app, server_loop.loop) as base_url:
        wait_ready(base_url)
        yield base_url
STATUSES: dict[str, dict[int, int]] = {}


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_answer_matches_the_schema(case, fuzz_server):
    if isinstance(case.body, dict):
        # A client's own timeout_s of 1e-300 s is a documented 504 (tests/api/test_app.py), not a fault.
        case.body.pop("timeout_s", None)
    response = case.call(base_url=fuzz_server, timeout=30)
    counts = STATUSES.setdefault(f"{case.method} {case.path}", {})
    counts[response.status_code] = counts.get(response.status_code, 0) + 1
    case.validate_response(response, checks=CHECKS)


def test_fuzz_figures():
    """Prints what the fuzzing above sent (run with -s): requests by operation and status."""
    if not STATUSES:
        pytest.skip("the fuzz tests did not run in this session")
    total = sum(sum(counts.values()) for counts in STATUSES.values())
    print(f"\nFIGURES fuzz: {total} requests")
    for operation, counts in sorted(STATUSES.items()):
        print(f"  {operation}: {dict(sorted(counts.items()))}")
    assert not any(status >= 500 for counts in STATUSES.values() for status in counts)
