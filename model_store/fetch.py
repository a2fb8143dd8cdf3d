"""Download a manifest model from the Hugging Face hub: `python -m model_store fetch NAME`.

Only the manifest's files are fetched (no GGUF, no training leftovers), with a progress bar, into
`model_store/models/NAME` by default. The service itself never downloads.
"""

from __future__ import annotations

from pathlib import Path

from model_store.manifest import DEFAULT_MODELS_DIR, load_manifest
from model_store.tiny import write_generation_config


class FetchError(RuntimeError):
    """The model could not be downloaded (offline, unknown repo, missing files)."""


def fetch_model(name: str, dest: Path | None = None) -> Path:
    manifest = load_manifest()
    entry = manifest.model(name)  # KeyError with the known names for a typo
    dest = Path(dest) if dest is not None else DEFAULT_MODELS_DIR / entry.name
    try:
        from huggingface_hub import snapshot_download
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise FetchError("fetching needs huggingface_hub: pip install 'tipo-service[fetch]'") from exc

    try:
        snapshot_download(
            repo_id=entry.repo_id,
            local_dir=dest,
            allow_patterns=list(manifest.files),
            tqdm_class=tqdm,
        )
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "not downloaded"
        raise FetchError(
            f"could not download {entry.repo_id} into {dest}: {type(exc).__name__}: {exc}\n"
            f"Is the Hugging Face hub reachable from here (HF_ENDPOINT, proxy, HF_HUB_OFFLINE)? "
            f"Without network, copy a model directory by hand and set TIPO_MODEL to it."
        ) from exc

    missing = [name for name in manifest.files if not (dest / name).is_file()]
    if missing:
        raise FetchError(f"{entry.repo_id} lacks {', '.join(missing)}; downloaded files are in {dest}")
    # TIPO's repos hold only token ids there: add TIPO's sampling, the default of raw completions.
    write_generation_config(dest)
    return dest
