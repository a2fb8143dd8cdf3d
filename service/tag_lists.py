"""Reads tipo-kgen's tag lists (package data) into a `TagIndex`.

Only the data files of tipo-kgen are used: the package is located with `importlib.util.find_spec`,
never imported (importing `kgen` pulls in torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from service.tipo.tags import LIST_FILE_CATEGORIES, TagIndex


class TagListsNotFound(RuntimeError):
    """tipo-kgen (which ships the tag lists) is not installed, or its tag-list/ is incomplete."""


def find_tag_list_dir() -> Path:
    spec = importlib.util.find_spec("kgen")
    if spec is None or not spec.submodule_search_locations:
        raise TagListsNotFound(
            "tipo-kgen is not installed: it ships the tag lists (kgen/tag-list/*.txt). "
            "Install it with `pip install --no-deps tipo-kgen==0.3.1`."
        )
    for location in spec.submodule_search_locations:
        directory = Path(location) / "tag-list"
        if directory.is_dir():
            return directory
    raise TagListsNotFound(f"tipo-kgen at {list(spec.submodule_search_locations)} has no tag-list/ directory")


def load_tag_index(directory: Path | None = None) -> TagIndex:
    """Build the index from `directory` (default: tipo-kgen's tag-list/). `\\r` of the CRLF files is
    stripped by the line splitting."""
    directory = directory or find_tag_list_dir()
    paths = [directory / f"{category}.txt" for category in LIST_FILE_CATEGORIES]
    for path in paths:
        if not path.is_file():
            raise TagListsNotFound(f"tag list {path} is missing (tipo-kgen installed incompletely?)")
    # One file at a time, largest first: less memory held at once and less heap fragmentation.
    paths.sort(key=lambda path: path.stat().st_size, reverse=True)
    return TagIndex.from_list_files((path.stem, path.read_bytes()) for path in paths)
