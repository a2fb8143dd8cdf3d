"""clients/comfyui without ComfyUI: the node contract of z-tipo's nodes (/work/shared/frontends/ZTIPO.md), and the
nodes driven against a real service on 127.0.0.1 (scripted engine, profile kgen).

For every shared e2e vector of the ComfyUI node, `TIPO` returns exactly z-tipo's four strings; `TIPOOperation`
returns z-tipo's two maps; `TIPOFormat` formats them as the service's single-operation answer does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import traceback

import httpx
import pytest

from tests.api.gated import TAGS_REQUEST, wait_for
from tests.api.tipo.test_serving import OUTPUT_KEYS, script_of
from tests.clients.conftest import CLIENTS
from tests.shared import load_vectors

Z_TIPO_FORMAT = ("<|special|>, \n<|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n<|extended|>.\n\n"
                 "<|quality|>, <|meta|>, <|rating|>")
# z-tipo's required inputs in order, without tipo_model (after ban_tags) and device (last).
Z_TIPO_INPUTS = ["tags", "nl_prompt", "ban_tags", "format", "width", "height", "temperature", "top_p", "min_p",
                 "top_k", "tag_length", "nl_length", "seed"]
SERVICE_INPUTS = ["server_url", "api_key", "profile", "timeout_s"]
LENGTHS = ["very_short", "short", "long", "very_long"]


# --- the node contract -------------------------------------------------------------------------------------


def test_the_package_exports_z_tipos_nodes(comfy_nodes):
    assert list(comfy_nodes.NODE_CLASS_MAPPINGS) == ["TIPO", "TIPOOperation", "TIPOFormat"]
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS == {"TIPO": "TIPO", "TIPOOperation": "TIPO Single Operation",
                                                      "TIPOFormat": "TIPO Format"}
    for node in comfy_nodes.NODE_CLASS_MAPPINGS.values():
        assert node.CATEGORY == "utils/promptgen" and node.FUNCTION == "execute"
        assert callable(getattr(node(), node.FUNCTION))


def test_tipo_inputs_and_outputs_are_z_tipos(comfy_nodes):
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"]
    inputs = node.INPUT_TYPES()
    required = inputs["required"]
    assert list(required) == Z_TIPO_INPUTS
    for name in ("tags", "nl_prompt", "ban_tags"):
        assert required[name] == ("STRING", {"defaultInput": True, "multiline": True})
    assert required["format"] == ("STRING", {"default": Z_TIPO_FORMAT, "multiline": True})
    assert required["width"][0] == "INT" and required["width"][1]["default"] == 1024
    assert required["width"][1]["max"] == required["height"][1]["max"] == 16384
    assert required["height"][0] == "INT" and required["height"][1]["default"] == 1024
    for name, default in (("temperature", 0.5), ("top_p", 0.95), ("min_p", 0.05)):
        assert required[name] == ("FLOAT", {"default": default, "step": 0.01})
    assert required["top_k"] == ("INT", {"default": 80})
    assert required["tag_length"] == (LENGTHS, {"default": "long"})
    assert required["nl_length"] == (LENGTHS, {"default": "long"})
    assert required["seed"][0] == "INT" and required["seed"][1]["default"] == 1234
    assert list(inputs["optional"])[:4] == SERVICE_INPUTS
    assert inputs["optional"]["profile"][0] == ["server default", "kgen", "fixed"]
    assert node.RETURN_TYPES == ("STRING",) * 4
    assert node.RETURN_NAMES == ("prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt")


def test_operation_and_format_inputs_and_outputs_are_z_tipos(comfy_nodes):
    operation = comfy_nodes.NODE_CLASS_MAPPINGS["TIPOOperation"]
    required = operation.INPUT_TYPES()["required"]
    assert list(required) == [name if name != "format" else "operation" for name in Z_TIPO_INPUTS]
    names = sorted(["None", "long_to_tag", "short_to_tag", "short_to_tag_to_long", "tag_to_long",
                    "tag_to_long_to_short", "tag_to_short", "tag_to_short_to_long"])
    assert required["operation"] == (names, {"default": names[0]})
    assert operation.RETURN_TYPES == ("LIST", "LIST") and operation.RETURN_NAMES == ("full_output", "addon_output")

    formatter = comfy_nodes.NODE_CLASS_MAPPINGS["TIPOFormat"]
    inputs = formatter.INPUT_TYPES()
    assert list(inputs["required"]) == ["full_output", "addon_output", "format"]
    assert inputs["required"]["full_output"][0] == inputs["required"]["addon_output"][0] == "LIST"
    assert inputs["required"]["format"] == ("STRING", {"default": Z_TIPO_FORMAT, "multiline": True})
    assert list(inputs["optional"]) == SERVICE_INPUTS
    assert formatter.RETURN_TYPES == ("STRING",) * 4


def test_the_package_imports_without_comfyui_and_without_torch():
    """A fresh interpreter where torch and ComfyUI cannot be imported at all."""
    folder = CLIENTS / "comfyui"
    code = (
        "import importlib.util, sys; sys.modules['torch'] = None; sys.modules['comfy'] = None\n"
        f"spec = importlib.util.spec_from_file_location('custom_node_folder', {str(folder / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(folder)!r}])\n"
        "package = importlib.util.module_from_spec(spec); sys.modules[spec.name] = package\n"
        "spec.loader.exec_module(package)\n"
        "print(sorted(package.NODE_CLASS_MAPPINGS))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'comfy', 'service') and sys.modules[m]]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['TIPO', 'TIPOFormat', 'TIPOOperation']"


def test_api_keys_default_to_the_environment_and_are_not_widget_defaults(comfy_nodes, monkeypatch):
    monkeypatch.setenv("TIPO_SERVICE_URL", "http://tipo.internal:9000")
    monkeypatch.setenv("TIPO_SERVICE_API_KEY", "secret")
    optional = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"].INPUT_TYPES()["optional"]
    assert optional["server_url"][1]["default"] == "http://tipo.internal:9000"
    assert optional["api_key"][1]["default"] == ""  # a typed key would be saved in every image's metadata
    client = comfy_nodes.nodes.ServiceNode.client("", "", 30)
    assert client.base_url == "http://tipo.internal:9000"
    assert client._calls.headers["Authorization"] == "Bearer secret"


# --- against a real service --------------------------------------------------------------------------------


def node_inputs(vector: dict) -> dict:
    """The z-tipo node's inputs of a vector (its widgets), as ComfyUI passes them."""
    inputs = dict(vector["inputs"])
    backend = inputs.pop("backend_emulated", "llama_cpp")
    return {**inputs, "emulate_backend": backend}


@pytest.mark.parametrize("vector", load_vectors("e2e_comfy"), ids=lambda v: v["id"])
def test_tipo_node_returns_z_tipos_four_strings(vector, comfy_nodes, scripted_server):
    base_url = scripted_server(script_of(vector))
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"]()
    outputs = node.execute(**node_inputs(vector), server_url=base_url, profile="kgen", timeout_s=30)
    assert outputs == tuple(vector["expected"][key] for key in OUTPUT_KEYS)


@pytest.mark.parametrize("vector", load_vectors("e2e_comfy_operation"), ids=lambda v: v["id"])
def test_operation_node_returns_z_tipos_maps_and_format_node_formats_them(vector, comfy_nodes, scripted_server):
    base_url = scripted_server(script_of(vector))
    defaults = {"ban_tags": "", "width": 1024, "height": 1024, "temperature": 0.5, "top_p": 0.95, "min_p": 0.05,
                "top_k": 80}
    operation = comfy_nodes.NODE_CLASS_MAPPINGS["TIPOOperation"]()
    full_output, addon_output = operation.execute(**{**defaults, **vector["inputs"]}, server_url=base_url,
                                                  profile="kgen")
    assert full_output == vector["expected"]["full_output"]
    assert addon_output == vector["expected"]["addon_output"]

    strings = comfy_nodes.NODE_CLASS_MAPPINGS["TIPOFormat"]().execute(full_output, addon_output, Z_TIPO_FORMAT,
                                                                      server_url=base_url, profile="kgen")
    answer = httpx.post(f"{base_url}/v1/tipo", json={**vector["inputs"], "profile": "kgen", "format": Z_TIPO_FORMAT},
                        timeout=30).json()
    assert strings == tuple(answer[key] for key in OUTPUT_KEYS)


def test_a_service_error_is_one_exception_with_the_services_message(comfy_nodes, scripted_server):
    base_url = scripted_server([])
    vector = load_vectors("e2e_comfy")[0]
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"]()
    with pytest.raises(comfy_nodes.nodes.TipoServiceError) as caught:
        node.execute(**{**node_inputs(vector), "ban_tags": "(unclosed"}, server_url=base_url, profile="kgen")
    error = caught.value
    assert error.status == 422 and error.param == "ban_tags"
    assert "ban_tags" in str(error) and "(unclosed" in str(error) and str(error).startswith("TIPO service (HTTP 422")
    # What ComfyUI logs and shows: no chained exception, only the node's own frames.
    assert error.__cause__ is None and error.__suppress_context__
    frames = traceback.extract_tb(error.__traceback__)
    assert [frame.filename for frame in frames if "tipo_client" in frame.filename] == []

    with pytest.raises(comfy_nodes.nodes.TipoServiceError) as missing:  # no recording: the service's 424
        node.execute(**node_inputs(vector), server_url=base_url, profile="kgen")
    assert missing.value.status == 424 and "no recorded completion" in str(missing.value)


def test_an_unreachable_service_is_named_in_the_error(comfy_nodes):
    from tests.api.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"]()
    vector = load_vectors("e2e_comfy")[0]
    with pytest.raises(comfy_nodes.nodes.TipoServiceError) as caught:
        node.execute(**node_inputs(vector), server_url=url, timeout_s=1)  # retries within the 1 s budget
    assert caught.value.status is None and caught.value.type == "connection_error"
    assert url in str(caught.value)


def test_a_busy_service_is_retried_after_its_retry_after(comfy_nodes, gated, caplog):
    """429 with Retry-After (queue full): the node waits as told and then gets its answer."""
    engine, base_url = gated(max_in_flight=1, max_queue=0, queue_timeout_s=0.5)
    engine.open(engine.warmup_gate)
    wait_for(lambda: httpx.get(f"{base_url}/health/ready").status_code == 200, "ready")
    busy = threading.Thread(target=lambda: httpx.post(f"{base_url}/v1/tipo", json=TAGS_REQUEST, timeout=30))
    busy.start()
    wait_for(lambda: engine.waiting_calls == 1, "the engine busy")
    opener = threading.Thread(target=lambda: (wait_for(lambda: "retry 1 in" in caplog.text, "a retry logged"),
                                              engine.open(engine.call_gate)))
    opener.start()
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TIPO"]()
    inputs = {"tags": "1girl", "nl_prompt": "", "ban_tags": "", "format": "tag only (DTG mode)", "width": 1024,
              "height": 1024, "temperature": 0.5, "top_p": 0.95, "min_p": 0.05, "top_k": 80, "tag_length": "long",
              "nl_length": "long", "seed": 5}
    with caplog.at_level("WARNING", logger="tipo_service_nodes"):
        prompt, *_ = node.execute(**inputs, server_url=base_url, profile="kgen", timeout_s=20)
    opener.join(timeout=30)
    busy.join(timeout=30)
    assert "tag39" in prompt
    assert "HTTP 429 rate_limit_error" in caplog.text and "retry after" in caplog.text
