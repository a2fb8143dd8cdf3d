"""The pure core imports nothing but the standard library (and itself)."""

import ast
import sys
from pathlib import Path

import service.tipo

PACKAGE = Path(service.tipo.__file__).parent
FORBIDDEN = {"fastapi", "vllm", "httpx", "torch", "numpy", "pydantic", "transformers", "kgen", "starlette"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_only_the_stdlib_and_itself():
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 5
    for path in sources:
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in FORBIDDEN, f"{path.name} imports {module}"
            assert top in sys.stdlib_module_names or module.startswith("service.tipo"), f"{path.name} imports {module}"
