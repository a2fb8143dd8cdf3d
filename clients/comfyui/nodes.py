"""ComfyUI nodes `TIPO`, `TIPOOperation`, `TIPOFormat`: drop-ins for z-tipo-extension's nodes, backed by a
tipo-service server instead of a model loaded inside ComfyUI.

Same node ids, display names, category, required inputs (names, types, defaults, order) and outputs as
z-tipo's, without `tipo_model` and `device` (the server has the model), plus optional inputs: `server_url`,
`api_key`, `profile`, `timeout_s` and `emulate_backend`. Nothing here imports ComfyUI or torch; during a ComfyUI
run a retry wait stops when the user cancels the queue.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from .tipo_client import DEFAULT_URL, ENV_API_KEY, ENV_URL, RetryPolicy, TipoClient, TipoServiceError
from .tipo_client.constants import COMFYUI_DEFAULT_FORMAT, DEFAULT_LENGTH, LENGTHS, OPERATIONS

logger = logging.getLogger("tipo_service_nodes")

CATEGORY = "utils/promptgen"
OUTPUT_NAMES = ("prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt")
SERVER_DEFAULT_PROFILE = "server default"
PROFILES = [SERVER_DEFAULT_PROFILE, "kgen", "fixed"]
BACKENDS = ["llama_cpp", "transformers"]
DEFAULT_TIMEOUT_S = 120.0
HTTP_MARGIN_S = 10.0  # the HTTP exchange may last a little longer than the service's own timeout_s
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def text_input() -> Tuple[str, Dict[str, Any]]:
    """A multiline STRING shown as an input socket (z-tipo's `defaultInput`)."""
    return ("STRING", {"defaultInput": True, "multiline": True})


def sampling_inputs() -> Dict[str, Tuple[str, Any]]:
    """z-tipo's inputs after `format` / `operation`, in its order (its `device` left out)."""
    return {
        "width": ("INT", {"default": 1024, "min": 1, "max": 16384}),
        "height": ("INT", {"default": 1024, "min": 1, "max": 16384}),
        "temperature": ("FLOAT", {"default": 0.5, "step": 0.01}),
        "top_p": ("FLOAT", {"default": 0.95, "step": 0.01}),
        "min_p": ("FLOAT", {"default": 0.05, "step": 0.01}),
        "top_k": ("INT", {"default": 80}),
        "tag_length": (list(LENGTHS), {"default": DEFAULT_LENGTH}),
        "nl_length": (list(LENGTHS), {"default": DEFAULT_LENGTH}),
        "seed": ("INT", {"default": 1234, "min": 0, "max": MAX_SEED}),
    }


def service_inputs(emulate_backend: bool = True) -> Dict[str, Tuple[Any, Dict[str, Any]]]:
    """The optional inputs that say which server to call and how."""
    inputs: Dict[str, Tuple[Any, Dict[str, Any]]] = {
        "server_url": ("STRING", {"default": os.environ.get(ENV_URL) or DEFAULT_URL, "tooltip":
                                  f"tipo-service base URL; empty: ${ENV_URL}, else {DEFAULT_URL}"}),
        "api_key": ("STRING", {"default": "", "tooltip": f"Bearer key; empty: ${ENV_API_KEY}. A key typed here is "
                               "saved in the workflow and in the metadata of every image: prefer the variable."}),
        "profile": (PROFILES, {"default": SERVER_DEFAULT_PROFILE, "tooltip": "kgen: the same strings as z-tipo's "
                               "node (its bugs included); fixed: the reference's bugs fixed; server default: the "
                               "server's TIPO_DEFAULT_PROFILE"}),
        "timeout_s": ("FLOAT", {"default": DEFAULT_TIMEOUT_S, "min": 1.0, "max": 3600.0, "step": 1.0, "tooltip":
                                "give up after this many seconds (retries on a busy server included)"}),
    }
    if emulate_backend:
        inputs["emulate_backend"] = (BACKENDS, {"default": "llama_cpp", "tooltip": "which z-tipo model type to "
                                                "reproduce: GGUF models ran on llama.cpp, HF models on "
                                                "transformers (their tag order differs)"})
    return inputs


class ServiceNode:
    """Calls the service with retries on 429 / 503 (Retry-After), within the node's timeout."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"

    @staticmethod
    def client(server_url: str, api_key: str, timeout_s: float) -> TipoClient:
        timeout_s = float(timeout_s) if timeout_s and timeout_s > 0 else DEFAULT_TIMEOUT_S
        return TipoClient((server_url or "").strip() or None, api_key=(api_key or "").strip() or None,
                          timeout=timeout_s + HTTP_MARGIN_S,
                          retry=RetryPolicy(max_retries=8, max_wait_s=timeout_s, max_backoff_s=10.0),
                          sleep=interruptible_sleep, on_retry=log_retry)

    @staticmethod
    def profile_field(profile: str) -> Dict[str, str]:
        return {} if not profile or profile == SERVER_DEFAULT_PROFILE else {"profile": profile}

    def call(self, server_url: str, api_key: str, timeout_s: float, send: Callable[[TipoClient], Any]) -> Any:
        """`send(client)`; a failure becomes one exception whose message is the service's (no client frames)."""
        try:
            with self.client(server_url, api_key, timeout_s) as client:
                return send(client)
        except TipoServiceError as error:
            raise error.with_traceback(None) from None


class TIPO(ServiceNode):
    """Optimize a prompt: the four strings of z-tipo's TIPO node."""

    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING")
    RETURN_NAMES = OUTPUT_NAMES

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "tags": text_input(),
                "nl_prompt": text_input(),
                "ban_tags": text_input(),
                "format": ("STRING", {"default": COMFYUI_DEFAULT_FORMAT, "multiline": True}),
                **sampling_inputs(),
            },
            "optional": service_inputs(),
        }

    def execute(self, tags: str, nl_prompt: str, ban_tags: str, format: str, width: int, height: int,
                temperature: float, top_p: float, min_p: float, top_k: int, tag_length: str, nl_length: str,
                seed: int, server_url: str = "", api_key: str = "", profile: str = SERVER_DEFAULT_PROFILE,
                timeout_s: float = DEFAULT_TIMEOUT_S, emulate_backend: str = "llama_cpp",
                **_z_tipo_only: Any) -> Tuple[str, str, str, str]:
        body = request_body(tags, nl_prompt, ban_tags, width, height, temperature, top_p, min_p, top_k, tag_length,
                            nl_length, seed, timeout_s, emulate_backend)
        body.update(format=format, **self.profile_field(profile))
        answer = self.call(server_url, api_key, timeout_s, lambda client: client.tipo(body))
        return tuple(answer[name] for name in OUTPUT_NAMES)  # type: ignore[return-value]


class TIPOOperation(ServiceNode):
    """One TIPO operation; its two maps go to TIPO Format."""

    RETURN_TYPES = ("LIST", "LIST")
    RETURN_NAMES = ("full_output", "addon_output")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "tags": text_input(),
                "nl_prompt": text_input(),
                "ban_tags": text_input(),
                "operation": (list(OPERATIONS), {"default": OPERATIONS[0]}),
                **sampling_inputs(),
            },
            "optional": service_inputs(),
        }

    def execute(self, tags: str, nl_prompt: str, ban_tags: str, operation: str, width: int, height: int,
                temperature: float, top_p: float, min_p: float, top_k: int, tag_length: str, nl_length: str,
                seed: int, server_url: str = "", api_key: str = "", profile: str = SERVER_DEFAULT_PROFILE,
                timeout_s: float = DEFAULT_TIMEOUT_S, emulate_backend: str = "llama_cpp",
                **_z_tipo_only: Any) -> Tuple[dict, dict]:
        body = request_body(tags, nl_prompt, ban_tags, width, height, temperature, top_p, min_p, top_k, tag_length,
                            nl_length, seed, timeout_s, emulate_backend)
        body.update(operation=operation, **self.profile_field(profile))
        answer = self.call(server_url, api_key, timeout_s, lambda client: client.tipo(body))
        maps = answer["operation_output"]
        return maps["full_output"], maps["addon_output"]


class TIPOFormat(ServiceNode):
    """Format a TIPO Single Operation's maps into the four strings (no model call)."""

    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING")
    RETURN_NAMES = OUTPUT_NAMES

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "full_output": ("LIST",),
                "addon_output": ("LIST",),
                "format": ("STRING", {"default": COMFYUI_DEFAULT_FORMAT, "multiline": True}),
            },
            "optional": service_inputs(emulate_backend=False),
        }

    def execute(self, full_output: dict, addon_output: dict, format: str, server_url: str = "", api_key: str = "",
                profile: str = SERVER_DEFAULT_PROFILE, timeout_s: float = DEFAULT_TIMEOUT_S,
                **_z_tipo_only: Any) -> Tuple[str, str, str, str]:
        fields = self.profile_field(profile)
        answer = self.call(server_url, api_key, timeout_s, lambda client: client.format(
            full_output, addon_output, format=format, profile=fields.get("profile"), timeout=None))
        return tuple(answer[name] for name in OUTPUT_NAMES)  # type: ignore[return-value]


def request_body(tags: str, nl_prompt: str, ban_tags: str, width: int, height: int, temperature: float,
                 top_p: float, min_p: float, top_k: int, tag_length: str, nl_length: str, seed: int,
                 timeout_s: Optional[float], emulate_backend: str) -> Dict[str, Any]:
    """A /v1/tipo body from the node's inputs (an unlinked text socket arrives as None)."""
    body: Dict[str, Any] = {
        "tags": tags or "", "nl_prompt": nl_prompt or "", "ban_tags": ban_tags or "",
        "width": int(width), "height": int(height),
        "temperature": float(temperature), "top_p": float(top_p), "min_p": float(min_p), "top_k": int(top_k),
        "tag_length": tag_length, "nl_length": nl_length, "seed": int(seed),
        "frontend": "comfy", "backend": emulate_backend or "llama_cpp",
    }
    if timeout_s and timeout_s > 0:
        body["timeout_s"] = float(timeout_s)
    return body


def log_retry(error: TipoServiceError, wait_s: float, retry: int) -> None:
    logger.warning("TIPO service busy or unreachable (%s); retry %d in %.1f s", error, retry, wait_s)


def interruptible_sleep(seconds: float) -> None:
    """Sleep; inside ComfyUI, stop when the user cancels the run (ComfyUI's interrupt)."""
    try:
        import comfy.model_management as model_management  # only inside ComfyUI
    except Exception:  # noqa: BLE001 - not in ComfyUI (tests, scripts), or ComfyUI failed its own import
        model_management = None
    deadline = time.monotonic() + seconds
    while True:
        if model_management is not None:
            model_management.throw_exception_if_processing_interrupted()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.25))


NODE_CLASS_MAPPINGS = {"TIPO": TIPO, "TIPOOperation": TIPOOperation, "TIPOFormat": TIPOFormat}
NODE_DISPLAY_NAME_MAPPINGS = {"TIPO": "TIPO", "TIPOOperation": "TIPO Single Operation", "TIPOFormat": "TIPO Format"}
