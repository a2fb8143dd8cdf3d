"""Fixtures of the client tests: the real servers of tests/api (scripted engine, gated engine), and the client
packages loaded from clients/ the way their hosts load them (no installation into the test environment)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.api.conftest import gated, scripted_server  # noqa: F401 - fixtures shared with the API tests

CLIENTS = Path(__file__).resolve().parents[2] / "clients"

# `import tipo_client` as after `pip install ./clients/python`.
if str(CLIENTS / "python") not in sys.path:
    sys.path.insert(0, str(CLIENTS / "python"))


def load_package(name: str, folder: Path) -> ModuleType:
    """Import `folder` as the package `name`, as ComfyUI imports a folder of custom_nodes/ (by its path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def comfy_nodes() -> ModuleType:
    """clients/comfyui as ComfyUI loads it (the package name is the folder's name in custom_nodes/)."""
    return load_package("tipo_service_comfyui", CLIENTS / "comfyui")
