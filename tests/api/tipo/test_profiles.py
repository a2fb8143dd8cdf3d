"""Profile-dependent input over HTTP (scripted engine): user text as typed and literal formats in `kgen`,
the template guard and the 422 for a format without placeholder in `fixed`, and `allowed_profiles`.
"""

from __future__ import annotations

import httpx
import pytest

TAGS_PROMPT = "aspect_ratio: 1.0\ntarget: <|long|>\ntag: 1girl"
CAPTION = "A girl reads.\nStyle: calm <|long|>"
SCRIPT = [
    {"prompt": TAGS_PROMPT, "completion": "".join(f", tag{i}" for i in range(40))},
    # The caption's `Style:` line as typed (kgen) and joined into the `short` line (fixed).
    {"prompt": "aspect_ratio: 1.0\ntarget: <|very_short|> <|short_to_tag|>\nshort: A girl reads.\nStyle: calm "
               "<|long|>\ntag: 1girl", "completion": "".join(f", tag{i}" for i in range(10))},
    {"prompt": "aspect_ratio: 1.0\ntarget: <|very_short|> <|short_to_tag|>\nshort: A girl reads. Style: calm "
               "<|long|>\ntag: 1girl", "completion": "".join(f", tag{i}" for i in range(10))},
]
LITERAL = {"tags": "1girl", "seed": 5, "format": "masterpiece, best quality, "}
MULTILINE = {"tags": "1girl", "nl_prompt": CAPTION, "seed": 5, "operation": "short_to_tag",
             "tag_length": "very_short", "return_trace": True}


@pytest.fixture
def server(scripted_server):
    return scripted_server(SCRIPT)


def test_format_without_placeholder_is_literal_in_kgen_and_422_in_fixed(server):
    kgen = httpx.post(f"{server}/v1/tipo", json={**LITERAL, "profile": "kgen"})
    assert kgen.status_code == 200, kgen.text
    assert kgen.json()["prompt"] == kgen.json()["user_prompt"] == "masterpiece, best quality"
    assert sorted(kgen.json()["new_tags"]) == sorted(f"tag{i}" for i in range(40))  # the output is thrown away
    fixed = httpx.post(f"{server}/v1/tipo", json={**LITERAL, "profile": "fixed"})
    assert fixed.status_code == 422
    error = fixed.json()["error"]
    assert error["param"] == "format" and "preset name" in error["message"] and "kgen" in error["message"]
    # The default profile is fixed.
    assert httpx.post(f"{server}/v1/tipo", json=LITERAL).status_code == 422


def test_multiline_caption_is_sent_as_typed_in_kgen_and_kept_on_its_line_in_fixed(server):
    kgen = httpx.post(f"{server}/v1/tipo", json={**MULTILINE, "profile": "kgen"})
    fixed = httpx.post(f"{server}/v1/tipo", json={**MULTILINE, "profile": "fixed"})
    assert kgen.status_code == 200 and fixed.status_code == 200, (kgen.text, fixed.text)
    assert "\nshort: A girl reads.\nStyle: calm <|long|>\ntag: 1girl" in kgen.json()["trace"][0]["prompt"]
    assert "\nshort: A girl reads. Style: calm <|long|>\ntag: 1girl" in fixed.json()["trace"][0]["prompt"]
    assert kgen.json()["unformatted_user_prompt"] == "1girl" + CAPTION  # the text as typed


def test_allowed_profiles_refuses_other_profiles_with_a_422_naming_the_allowed(scripted_server):
    server = scripted_server(SCRIPT, allowed_profiles="fixed")
    refused = httpx.post(f"{server}/v1/tipo", json={**LITERAL, "format": "tag only (DTG mode)", "profile": "kgen"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["param"] == "profile" and "'kgen' is not allowed" in error["message"]
    assert "'fixed'" in error["message"]
    answered = httpx.post(f"{server}/v1/tipo", json={**LITERAL, "format": "tag only (DTG mode)"})
    assert answered.status_code == 200 and answered.json()["profile"] == "fixed"
    # The batch and the chat endpoint take a profile too.
    batch = httpx.post(f"{server}/v1/tipo/batch", json={"requests": [{**LITERAL, "profile": "kgen"}]})
    assert batch.status_code == 422 and batch.json()["error"]["param"] == "requests[0].profile"
    chat = httpx.post(f"{server}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "1girl"}], "profile": "kgen"})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "profile"  # OpenAI-style: 400


def test_allowed_profiles_kgen_only_with_a_kgen_default(scripted_server):
    server = scripted_server(SCRIPT, allowed_profiles="kgen", default_profile="kgen")
    answered = httpx.post(f"{server}/v1/tipo", json=LITERAL)
    assert answered.status_code == 200 and answered.json()["profile"] == "kgen"
    assert answered.json()["prompt"] == "masterpiece, best quality"
    refused = httpx.post(f"{server}/v1/tipo", json={**LITERAL, "profile": "fixed"})
    assert refused.status_code == 422 and "use 'kgen'" in refused.json()["error"]["message"]
