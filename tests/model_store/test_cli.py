"""`python -m model_store`: argument handling, list, make-tiny, and fetch's error when offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from pathlib import Path

import pytest

from model_store.__main__ import main
from model_store.manifest import load_manifest
from model_store.tiny import is_demo_model


REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_store", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO_ROOT, timeout=120)


def test_list_shows_every_manifest_model():
    result = run_cli("list")
    assert result.returncode == 0
    for entry in load_manifest().models:
        assert entry.name in result.stdout and entry.repo_id in result.stdout


def test_fetch_of_an_unknown_model_names_the_known_ones(capsys):
    assert main(["fetch", "TIPO-9B"]) == 2
    assert "TIPO-200M-ft2" in capsys.readouterr().err


def test_fetch_offline_fails_clearly(tmp_path):
    # HF_HUB_OFFLINE makes huggingface_hub fail at once instead of trying the network.
    result = run_cli("fetch", "TIPO-200M", "--dest", str(tmp_path / "m"), HF_HUB_OFFLINE="1")
    assert result.returncode == 1
    assert "could not download KBlueLeaf/TIPO-200M" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [[], ["fetch"], ["make-tiny", "--shape", "9b"], ["nonsense"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_make_tiny_random_into_a_directory(tmp_path, capsys):
    assert main(["make-tiny", "--random", "--dest", str(tmp_path / "demo")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo")
    assert is_demo_model(tmp_path / "demo")


def test_make_tiny_keeps_a_current_demo_model(demo_model, tmp_path, capsys):
    shutil.copytree(demo_model.path, tmp_path / "demo")
    built = (tmp_path / "demo" / "model.safetensors").stat().st_mtime_ns
    assert main(["make-tiny", "--dest", str(tmp_path / "demo")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "demo")
    assert (tmp_path / "demo" / "model.safetensors").stat().st_mtime_ns == built


def test_make_tiny_demo_has_one_shape(capsys):
    assert main(["make-tiny", "--shape", "200m"]) == 2
    assert "--random" in capsys.readouterr().err
