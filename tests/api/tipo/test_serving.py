"""POST /v1/tipo and /v1/tipo/batch over real HTTP with the scripted engine.

The scripted engine replays the model outputs recorded in the reference's e2e vectors, so the
service must send exactly the reference's prompts with the reference's seeds (a different prompt or
seed finds no recording and fails the request) and return the reference's strings byte for byte.
"""

from __future__ import annotations


import httpx
import pytest

from tests.shared import load_vectors

OUTPUT_KEYS = ("prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt")


def e2e_vectors() -> list[dict]:
    return [v for v in load_vectors() if v["group"].startswith("e2e")]


def completion_of(model_output: str, prompt: str, backend: str) -> str:
    """The recorded text is the prompt + what the model appended (transformers: inside <s> ... </s>)."""
    if backend == "transformers":
        assert model_output.startswith("<s> " + prompt) and model_output.endswith("</s>")
        return model_output[len("<s> " + prompt):-len("</s>")]
    assert model_output.startswith(prompt)
    return model_output[len(prompt):]


def script_of(vector: dict) -> list[dict]:
    backend = vector["inputs"].get("backend_emulated", "llama_cpp")
    calls, outputs = vector["expected"]["model_calls"], vector["expected"]["model_outputs"]
    return [{"prompt": call["prompt"], "completion": completion_of(output, call["prompt"], backend),
             "seed": call["generate_kwargs"]["seed"]} for call, output in zip(calls, outputs)]


def request_of(vector: dict) -> dict:
    """The vector's inputs as a /v1/tipo body (kgen profile, trace on)."""
    inputs = dict(vector["inputs"])
    body = {"profile": "kgen", "return_trace": True}
    if vector["group"] == "e2e_webui":
        body.update(frontend="webui", tags=inputs.pop("prompt"), aspect_ratio=inputs.pop("aspect_ratio"))
        inputs.pop("format_name")
    for key in ("tags", "nl_prompt", "width", "height", "seed", "tag_length", "nl_length", "ban_tags", "format",
                "temperature", "top_p", "top_k", "min_p", "backend_emulated", "operation", "no_formatting"):
        if key in inputs:
            body[key] = inputs[key]
    return body


@pytest.mark.parametrize("vector", e2e_vectors(), ids=lambda v: v["id"])
def test_scripted_replay_of_reference_vectors_is_byte_identical(vector, scripted_server):
    base_url = scripted_server(script_of(vector))
    response = httpx.post(f"{base_url}/v1/tipo", json=request_of(vector), timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = vector["expected"]

    sent = [(call["prompt"], call["sampling"]["seed"]) for call in answer["trace"]]
    assert sent == [(call["prompt"], call["generate_kwargs"]["seed"]) for call in expected["model_calls"]]
    for call, reference in zip(answer["trace"], expected["model_calls"]):
        kwargs = reference["generate_kwargs"]
        assert call["sampling"]["temperature"] == kwargs["temperature"]
        assert call["sampling"]["top_p"] == kwargs["top_p"]
        assert call["sampling"]["top_k"] == kwargs["top_k"]
        assert call["sampling"]["min_p"] == kwargs["min_p"]
        assert call["sampling"]["max_new_tokens"] == kwargs["max_new_tokens"]
    assert answer["usage"]["model_calls"] == len(expected["model_calls"])

    if vector["group"] == "e2e_comfy":
        assert {key: answer[key] for key in OUTPUT_KEYS} == {key: expected[key] for key in OUTPUT_KEYS}
    elif vector["group"] == "e2e_webui":
        assert answer["prompt"] == expected["result"]
    else:  # single operation: the node's two maps
        assert answer["operation_output"] == {"full_output": expected["full_output"],
                                              "addon_output": expected["addon_output"]}
