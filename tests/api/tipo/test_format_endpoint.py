"""POST /v1/tipo/format (the ComfyUI 'TIPO Format' node) over real HTTP.

The service already answers a single operation with the four strings its 'TIPO Format' node would make
(`TipoRunner._operation_outputs`); /v1/tipo/format must give the same strings from the operation's two maps
alone, for every format and profile, without a model call.
"""

from __future__ import annotations

import httpx
import pytest

from service.tipo.constants import FORMAT_PRESETS
from tests.api.tipo.test_serving import OUTPUT_KEYS, script_of
from tests.shared import load_vectors

OPERATION_VECTORS = load_vectors("e2e_comfy_operation")
FORMATS = [*FORMAT_PRESETS, "<|general|>\n<|generated|> <|extended|>", "<|characters|> <|unknown|>, <|quality|>"]


def seedless(script: list[dict]) -> list[dict]:
    """The fixed profile draws other op seeds from the same request seed only in some cases: answer any seed."""
    return [{"prompt": entry["prompt"], "completion": entry["completion"]} for entry in script]


@pytest.mark.parametrize("profile", ["kgen", "fixed"])
@pytest.mark.parametrize("vector", OPERATION_VECTORS, ids=lambda v: v["id"])
def test_format_gives_what_the_operation_answer_holds(vector, profile, scripted_server):
    base_url = scripted_server(seedless(script_of(vector)))
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for template in FORMATS:
            body = {**vector["inputs"], "profile": profile, "format": template}
            operation = client.post("/v1/tipo", json=body)
            assert operation.status_code == 200, operation.text
            answer = operation.json()
            formatted = client.post("/v1/tipo/format", json={**answer["operation_output"], "format": template,
                                                              "profile": profile})
            assert formatted.status_code == 200, formatted.text
            result = formatted.json()
            assert {key: result[key] for key in OUTPUT_KEYS} == {key: answer[key] for key in OUTPUT_KEYS}, template
            assert result["profile"] == profile


def test_format_of_the_recorded_operation_maps_in_kgen(scripted_server):
    """The reference's own maps (from the vectors) format without any model call."""
    base_url = scripted_server([])  # no recordings: a model call would fail with 424
    vector = OPERATION_VECTORS[0]
    expected = vector["expected"]
    body = {"full_output": expected["full_output"], "addon_output": expected["addon_output"], "profile": "kgen"}
    response = httpx.post(f"{base_url}/v1/tipo/format", json=body, timeout=30)
    assert response.status_code == 200, response.text
    result = response.json()
    addon = expected["addon_output"]
    assert result["unformatted_prompt"] == addon["user_tags"] + ", " + ", ".join(addon["tags"]) + "\n" + addon["nl"]
    assert result["unformatted_user_prompt"] == addon["user_tags"] + addon["user_nl"]
    assert result["prompt"].startswith("1girl, \n\n")  # special first, then the general tags (node default)
    assert "A girl in a garden." in result["user_prompt"]


def test_format_errors_name_the_field(scripted_server):
    base_url = scripted_server([], max_tag_chars=50)
    maps = {"full_output": {"general": ["solo"]}, "addon_output": {"tags": [], "nl": "", "user_tags": "1girl",
                                                                     "user_nl": ""}}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        misspelt = client.post("/v1/tipo/format", json={**maps, "format": "tag only", "profile": "fixed"})
        assert misspelt.status_code == 422
        assert misspelt.json()["error"]["param"] == "format" and "preset" in misspelt.json()["error"]["message"]
        literal = client.post("/v1/tipo/format", json={**maps, "format": "tag only", "profile": "kgen"})
        assert literal.status_code == 200 and literal.json()["prompt"] == "tag only"  # as the reference prints it

        long_tags = {**maps, "addon_output": {**maps["addon_output"], "user_tags": "x" * 60}}
        too_long = client.post("/v1/tipo/format", json=long_tags)
        assert too_long.status_code == 422
        assert too_long.json()["error"]["param"] == "addon_output.user_tags"

        # Every placeholder of the format repeats the maps: they are bounded like the input they come from.
        huge = client.post("/v1/tipo/format", json={**maps, "full_output": {"general": ["tag"] * 1100}})
        assert huge.status_code == 422 and huge.json()["error"]["param"] == "full_output"
        assert "max_tags" in huge.json()["error"]["message"]
        huge_nl = {**maps, "addon_output": {**maps["addon_output"], "nl": "x" * 20_000}}
        assert client.post("/v1/tipo/format", json=huge_nl).json()["error"]["param"] == "addon_output"

        unknown = client.post("/v1/tipo/format", json={**maps, "extra": 1})
        assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "extra"
        missing = client.post("/v1/tipo/format", json={"addon_output": maps["addon_output"]})
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "full_output"


def test_format_needs_the_api_key(scripted_server):
    base_url = scripted_server([], api_keys="k1")
    body = {"full_output": {}, "addon_output": {}}
    assert httpx.post(f"{base_url}/v1/tipo/format", json=body, timeout=30).status_code == 401
    answer = httpx.post(f"{base_url}/v1/tipo/format", json=body, headers={"Authorization": "Bearer k1"}, timeout=30)
    assert answer.status_code == 200, answer.text


def test_format_is_documented(scripted_server):
    base_url = scripted_server([])
    schema = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    operation = schema["paths"]["/v1/tipo/format"]["post"]
    assert set(operation["responses"]) >= {"200", "401", "422", "503"}
    assert "429" not in operation["responses"]  # no admission: never busy
    assert "429" in schema["paths"]["/v1/tipo"]["post"]["responses"]
