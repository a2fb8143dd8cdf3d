"""Sampling settings of one model call (pure data; the engines consume it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Defaults are the ComfyUI node's (docs/REFERENCE.md §3.1); repetition_penalty 1.17 is kgen's generate() default."""

    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80
    min_p: float = 0.05
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512
    seed: int | None = None
