"""The nodes inside a real ComfyUI (the snapshot in ../shared/frontends, GPL-3.0, used here only to run it).

Skipped unless TIPO_COMFYUI_TEST=1 (`make test-comfyui`). The first run unpacks the snapshot and builds its own
virtual environment under tests/.artifacts/comfyui (torch==2.13.0 CPU wheel, its requirements.txt, `requests`,
then clients/comfyui/requirements.txt as a user would; about 4 minutes on 2 cores); later runs reuse it.
The test links clients/comfyui into custom_nodes/, starts `main.py --cpu` headless against a scripted tipo-service
on 127.0.0.1, queues the shipped API-format workflows with POST /prompt and reads the outputs of their PreviewAny
nodes from GET /history/{prompt_id}.

Environment: TIPO_COMFYUI_TARBALL (the snapshot), TIPO_COMFYUI_HOME (where it is unpacked and its venv lives).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import free_port, serve, wait_ready
from tests.api.tipo.test_serving import OUTPUT_KEYS, script_of
from tests.clients.conftest import CLIENTS
from tests.shared import load_vectors

REPO_ROOT = CLIENTS.parent
TARBALL = Path(os.environ.get("TIPO_COMFYUI_TARBALL",
                              REPO_ROOT.parent / "shared" / "frontends" / "ComfyUI-a125cd8.tar.gz"))
HOME = Path(os.environ.get("TIPO_COMFYUI_HOME", REPO_ROOT / "tests" / ".artifacts" / "comfyui"))
WORKFLOWS = CLIENTS / "comfyui" / "workflows"
NODE_FOLDER = "tipo-service"  # the name a user gives the folder in custom_nodes/
PIP_TIMEOUT_S = 1200
START_TIMEOUT_S = 180

pytestmark = pytest.mark.skipif(os.environ.get("TIPO_COMFYUI_TEST") != "1",
                                reason="runs a real ComfyUI: set TIPO_COMFYUI_TEST=1 (make test-comfyui)")

VECTOR = load_vectors("e2e_comfy")[0]
OPERATION_VECTOR = load_vectors("e2e_comfy_operation")[0]


def run(command: list[str], timeout: float, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")


def prepare_comfyui() -> tuple[Path, Path]:
    """(ComfyUI folder, its python), unpacked and installed once per snapshot and requirements."""
    if not TARBALL.exists():
        pytest.fail(f"the ComfyUI snapshot is not at {TARBALL} (set TIPO_COMFYUI_TARBALL)")
    requirements = CLIENTS / "comfyui" / "requirements.txt"
    key = hashlib.sha256(TARBALL.name.encode() + requirements.read_bytes()).hexdigest()[:12]
    comfy, python = HOME / "ComfyUI", HOME / "venv" / "bin" / "python"
    stamp = HOME / f".installed-{key}"
    if not stamp.exists():
        shutil.rmtree(HOME, ignore_errors=True)
        HOME.mkdir(parents=True)
        with tarfile.open(TARBALL) as archive:
            archive.extractall(HOME, filter="data")
        run([shutil.which("python3") or sys.executable, "-m", "venv", str(HOME / "venv")], 300)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        run([*pip, "torch==2.13.0"], PIP_TIMEOUT_S)  # the CPU wheel first, so its requirements do not pull CUDA
        run([*pip, "-r", str(comfy / "requirements.txt"), "requests"], PIP_TIMEOUT_S)  # `requests`: imported, unlisted
        run([*pip, "-r", str(requirements)], PIP_TIMEOUT_S)  # what the node package's README tells users
        stamp.touch()
    link = comfy / "custom_nodes" / NODE_FOLDER
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(CLIENTS / "comfyui", target_is_directory=True)
    return comfy, python


@pytest.fixture(scope="module")
def tipo_service(server_loop, tag_index, tmp_path_factory):
    """A scripted tipo-service replaying a TIPO vector and a single-operation vector."""
    script = tmp_path_factory.mktemp("comfyui-service") / "script.json"
    script.write_text(json.dumps(script_of(VECTOR) + script_of(OPERATION_VECTOR)))
    app = create_app(Settings(engine="scripted", scripted_path=str(script)), tag_index=tag_index)
    with serve(app, server_loop.loop) as base_url:
        wait_ready(base_url)
        yield base_url


@pytest.fixture(scope="module")
def comfyui(tipo_service):
    """Base URL of a headless ComfyUI with the node package, TIPO_SERVICE_URL pointing at the scripted service."""
    started = time.monotonic()
    comfy, python = prepare_comfyui()
    installed = time.monotonic()
    port = free_port()
    log = (HOME / "comfyui.log").open("w")
    env = {**os.environ, "TIPO_SERVICE_URL": tipo_service}
    env.pop("TIPO_SERVICE_API_KEY", None)
    process = subprocess.Popen([str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
                               cwd=comfy, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {process.returncode}:\n{tail(HOME / 'comfyui.log')}")
            try:
                if httpx.get(f"{base_url}/object_info/TIPO", timeout=5).json().get("TIPO"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not serve the TIPO node within {START_TIMEOUT_S} s:\n"
                                   f"{tail(HOME / 'comfyui.log')}")
            time.sleep(0.5)
        print(f"\nComfyUI: install {installed - started:.1f} s, start {time.monotonic() - installed:.1f} s")
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def queue(base_url: str, workflow: dict, timeout_s: float = 60) -> dict:
    """POST /prompt, then the history entry of the prompt once ComfyUI has finished it."""
    answer = httpx.post(f"{base_url}/prompt", json={"prompt": workflow, "client_id": uuid.uuid4().hex}, timeout=30)
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = httpx.get(f"{base_url}/history/{prompt_id}", timeout=10).json()
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} not done within {timeout_s} s:\n{tail(HOME / 'comfyui.log')}")


def texts(entry: dict, node_ids: list[str]) -> list[str]:
    return [entry["outputs"][node_id]["text"][0] for node_id in node_ids]


def workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def test_comfyui_lists_the_nodes_with_z_tipos_inputs(comfyui):
    info = httpx.get(f"{comfyui}/object_info", timeout=30).json()
    assert info["TIPO"]["display_name"] == "TIPO" and info["TIPO"]["category"] == "utils/promptgen"
    assert info["TIPO"]["input_order"]["required"] == [
        "tags", "nl_prompt", "ban_tags", "format", "width", "height", "temperature", "top_p", "min_p", "top_k",
        "tag_length", "nl_length", "seed"]
    assert info["TIPO"]["output_name"] == list(OUTPUT_KEYS)
    assert info["TIPOOperation"]["display_name"] == "TIPO Single Operation"
    assert info["TIPOFormat"]["display_name"] == "TIPO Format"
    assert info["TIPOOperation"]["output"] == ["LIST", "LIST"]
    # Every node and input of the shipped txt2img example exists in this ComfyUI (it needs a checkpoint to run).
    for node in workflow("tipo_txt2img_api.json").values():
        spec = info[node["class_type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(known), node["class_type"]


def test_tipo_node_in_comfyui_returns_z_tipos_four_strings(comfyui):
    """The shipped example workflow, set to a vector's inputs, as a z-tipo workflow whose node type was swapped:
    it still carries z-tipo's `tipo_model` and `device`; `server_url` is empty (TIPO_SERVICE_URL is used)."""
    graph = workflow("tipo_preview_api.json")
    inputs = dict(VECTOR["inputs"])
    graph["1"]["inputs"]["value"] = inputs.pop("tags")
    graph["2"]["inputs"]["value"] = inputs.pop("nl_prompt")
    graph["3"]["inputs"]["value"] = inputs.pop("ban_tags")
    backend = inputs.pop("backend_emulated")
    graph["4"]["inputs"].update(inputs, emulate_backend=backend, profile="kgen",
                                tipo_model="KBlueLeaf/TIPO-500M-ft | TIPO-500M-ft-F16.gguf", device="cuda")
    assert graph["4"]["inputs"]["server_url"] == ""
    entry = queue(comfyui, graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert texts(entry, ["5", "6", "7", "8"]) == [VECTOR["expected"][key] for key in OUTPUT_KEYS]


def test_operation_and_format_nodes_in_comfyui(comfyui, tipo_service):
    graph = workflow("tipo_operation_format_api.json")
    graph["1"]["inputs"]["value"] = OPERATION_VECTOR["inputs"]["tags"]
    graph["2"]["inputs"]["value"] = OPERATION_VECTOR["inputs"]["nl_prompt"]
    graph["4"]["inputs"].update(operation=OPERATION_VECTOR["inputs"]["operation"], profile="kgen",
                                seed=OPERATION_VECTOR["inputs"]["seed"])
    graph["5"]["inputs"].update(profile="kgen")
    entry = queue(comfyui, graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    prompt, addon = texts(entry, ["6", "7"])
    assert json.loads(addon) == OPERATION_VECTOR["expected"]["addon_output"]
    single = httpx.post(f"{tipo_service}/v1/tipo", json={**OPERATION_VECTOR["inputs"], "profile": "kgen",
                                                          "format": graph["5"]["inputs"]["format"]}, timeout=30)
    assert prompt == single.json()["prompt"]


def test_a_service_error_is_shown_with_the_services_message(comfyui):
    graph = workflow("tipo_preview_api.json")
    graph["3"]["inputs"]["value"] = "(unclosed"
    graph["4"]["inputs"]["profile"] = "kgen"
    entry = queue(comfyui, graph)
    assert entry["status"]["status_str"] == "error"
    error = next(data for event, data in entry["status"]["messages"] if event == "execution_error")
    assert error["node_type"] == "TIPO"
    assert error["exception_type"] == "tipo_client.TipoServiceError"
    assert error["exception_message"].startswith("TIPO service (HTTP 422 invalid_request_error, field 'ban_tags'): "
                                                 "ban tag '(unclosed' is not a valid regular expression")
    assert all("tipo_client" not in line for line in error["traceback"])  # only ComfyUI's and the node's frames
