"""Engines behind one interface (base.py). `build_engine(settings)` picks one from TIPO_ENGINE.

Imports of vLLM and httpx happen inside build_engine, so importing this package stays cheap.
"""

from __future__ import annotations

import logging

from service.engine.base import Engine, EngineError
from service.settings import Settings

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """The engine TIPO_ENGINE names, not started yet (the app calls `start()` in its lifespan)."""
    if settings.engine == "vllm":
        from model_store.resolve import resolve_model
        from service.engine.vllm import VllmEngine

        return VllmEngine(settings, resolve_model(settings.model))

    if settings.engine == "remote":
        from service.engine.remote import RemoteEngine

        return RemoteEngine(settings, tokenizer=_local_tokenizer(settings))

    if settings.engine == "scripted":
        from service.engine.scripted import ScriptedEngine

        if not settings.scripted_path:
            raise EngineError("TIPO_ENGINE=scripted needs TIPO_SCRIPTED_PATH (a JSON file of recorded completions)")
        return ScriptedEngine(settings.scripted_path, model_name=settings.served_model_name or "scripted",
                              delay_s=settings.scripted_delay_s)

    if settings.engine == "simulated":
        from model_store.resolve import resolve_model
        from service.engine.simulated import CostModel, SimulatedEngine

        cost = CostModel(step_fixed_ms=settings.sim_step_fixed_ms, decode_us_per_seq=settings.sim_decode_us_per_seq,
                         decode_us_per_context_token=settings.sim_decode_us_per_context_token,
                         prefill_us_per_token=settings.sim_prefill_us_per_token, max_num_seqs=settings.max_num_seqs,
                         max_batched_tokens=settings.sim_max_batched_tokens)
        # The model directory gives the tokenizer only (token counts, detokenisation work); no weights load.
        return SimulatedEngine(resolve_model(settings.model).path, model_name=settings.served_model_name or "simulated",
                               cost=cost, max_model_len=settings.max_model_len,
                               client_cpu_us_per_token=settings.sim_client_cpu_us_per_token,
                               client_cpu_us_per_request=settings.sim_client_cpu_us_per_request)

    raise EngineError(f"unknown engine {settings.engine!r}")


def _local_tokenizer(settings: Settings):
    """For the remote engine: the model's tokenizer when TIPO_MODEL names a local directory.

    With it, prompts are sent as the reference's token ids; without it ('auto'), as text that the
    remote server tokenises itself.
    """
    if settings.model.strip().lower() == "auto":
        log.info("remote engine: prompts are sent as text (set TIPO_MODEL to the model directory to send "
                 "the reference's token ids)")
        return None
    from model_store.resolve import resolve_model
    from service.engine.tokenizer import PromptTokenizer

    return PromptTokenizer.from_model_dir(resolve_model(settings.model).path)
