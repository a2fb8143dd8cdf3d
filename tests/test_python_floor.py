"""The declared Python floor (pyproject `requires-python`) is the lowest version the code runs on.

vermin reads every module and reports the oldest Python that has each language feature and stdlib
API used (e.g. asyncio.timeout and Task.cancelling are 3.11); the floor must be exactly that, and
the Docker image's Python must meet it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE = ["service", "model_store"]


def declared_floor() -> tuple[int, int]:
    spec = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_requires_python_is_the_lowest_version_the_code_needs():
    report = subprocess.run([str(Path(sys.executable).with_name("vermin")), "--no-tips", "--no-parse-comments", *CODE],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    needed = re.search(r"Minimum required versions: (\d+)\.(\d+)", report)
    assert needed, report
    assert (int(needed[1]), int(needed[2])) == declared_floor(), report


def test_the_image_python_meets_the_floor():
    image = re.search(r"ARG PYTHON_IMAGE=python:(\d+)\.(\d+)", (REPO_ROOT / "Dockerfile").read_text())
    assert image and (int(image[1]), int(image[2])) >= declared_floor()
