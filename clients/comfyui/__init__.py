"""tipo-service nodes for ComfyUI: `TIPO`, `TIPO Single Operation`, `TIPO Format` (z-tipo-extension's nodes,
backed by a tipo-service server). Install: README.md beside this file."""

try:
    import httpx  # noqa: F401 - the one dependency (requirements.txt)
except ImportError as exc:  # ComfyUI shows this message as the reason the package failed to import
    raise ImportError(
        "the tipo-service nodes need the httpx package: run `python -m pip install -r requirements.txt` in this "
        "folder with ComfyUI's Python (portable build: python_embeded\\python.exe -m pip install httpx)"
    ) from exc

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
