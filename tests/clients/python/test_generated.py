"""The client's API types are generated from the service (clients/generate.py), and the frontends' vendored
copies of the client are the client, byte for byte: nothing is kept in step by hand."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import typing
import zipfile
from pathlib import Path

from service.app import create_app
from tests.clients.conftest import CLIENTS

_spec = importlib.util.spec_from_file_location("clients_generate", CLIENTS / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def test_generated_and_vendored_files_are_up_to_date():
    files = generate.expected_files(create_app().openapi())
    stale = generate.stale_files(files)
    assert not stale, f"run `make clients`: {stale}"
    assert {path.parent for path in files} == {generate.CLIENT_PACKAGE, *generate.VENDORED}


def test_models_cover_the_clients_endpoints_and_match_the_schema():
    import tipo_client.models as models

    schema = create_app().openapi()
    components = schema["components"]["schemas"]
    for name in ("TipoRequestBody", "TipoBatchBody", "TipoResponse", "TipoBatchResponse", "TipoFormatBody",
                 "TipoFormatResponse", "ModelList", "ProbeAnswer", "ErrorBody"):
        typed = getattr(models, name)
        hints = typing.get_type_hints(typed)
        assert set(hints) == set(components[name]["properties"]), name
        assert typed.__required_keys__ == frozenset(components[name].get("required", [])), name
    assert models.TipoRequest is models.TipoRequestBody
    for path, methods in models.PATHS.items():
        assert sorted(method.upper() for method in schema["paths"][path]) == methods


def test_a_change_of_the_schema_makes_the_check_fail(tmp_path):
    schema = create_app().openapi()
    schema["components"]["schemas"]["TipoResponse"]["properties"]["new_field"] = {"type": "string"}
    files = generate.expected_files(schema)
    assert "clients/python/tipo_client/models.py" in generate.stale_files(files)


def test_the_client_runs_on_its_declared_python_floor():
    """vermin: the oldest Python the client and the frontends' code need is at most the declared floor (3.9:
    the WebUI runs on 3.10; httpx, not the code, sets the floor)."""
    spec = tomllib.loads((CLIENTS / "python" / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(part) for part in re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups())
    code = ["python/tipo_client", "comfyui/__init__.py", "comfyui/nodes.py", "sd-webui/scripts", "sd-webui/install.py",
            "sd-webui/lib_tipo_service"]
    report = subprocess.run([str(Path(sys.executable).with_name("vermin")), "--no-tips", "--no-parse-comments",
                             "--eval-annotations", *code], cwd=CLIENTS, capture_output=True, text=True, timeout=300,
                            check=True).stdout
    needed = re.search(r"Minimum required versions: (\d+)\.(\d+)", report)
    assert needed and (int(needed[1]), int(needed[2])) <= floor, report


def test_pip_builds_the_client_package(tmp_path):
    """`pip install ./clients/python` builds a wheel holding the package, its generated types and py.typed
    (built from a copy: a build leaves build/ and *.egg-info behind)."""
    source = tmp_path / "source"
    shutil.copytree(CLIENTS / "python", source, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, timeout=120, capture_output=True)
    wheel = next(tmp_path.glob("tipo_client-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tipo_client/__init__.py", "tipo_client/models.py", "tipo_client/constants.py",
            "tipo_client/py.typed"} <= names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: httpx>=0.24" in metadata
