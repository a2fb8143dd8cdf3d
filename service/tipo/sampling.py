"""Sampling settings of one model call (pure data; the engines consume it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Defaults are the ComfyUI node's (docs/REFERENCE.md §3.1); repetition_penalty 1.17 is kgen's generate() default.

    The fields after `seed` are for raw completions (/v1/completions); TIPO's own calls leave them
    at their defaults, which change nothing (EOS is the only stop, special tokens stay in the text).
    """

    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 80
    min_p: float = 0.05
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # how many alternatives to report per generated token (None: no logprobs)
    skip_special_tokens: bool = False
    spaces_between_special_tokens: bool = False

    def tipo_fields(self) -> dict:
        """The fields a TIPO call sets (its trace in /v1/tipo's answer)."""
        return {name: getattr(self, name) for name in TIPO_FIELDS}


TIPO_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed")
