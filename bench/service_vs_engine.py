"""Service vs raw engine: the same model calls through the HTTP service and straight into vLLM.

    python bench/service_vs_engine.py [--device cpu|cuda] [--shape tiny|200m|500m] [--concurrency 1 8 32]

One process, one vLLM engine. For each concurrency c:
1. service: the workload (bench/workload.py) is POSTed to /v1/tipo (real uvicorn on 127.0.0.1, the
   in-process engine) by bench/loadgen.py in a child process, c requests in flight, with return_trace;
2. raw engine: the model calls recorded in those traces (prompt + sampling, seed included) are replayed
   into the same `AsyncLLM` object: no HTTP, no TIPO logic, prompts tokenised before the clock starts.
   Each request's calls run one after another (as in the service), c requests at once.
   vLLM's prefix cache is emptied before each side, so neither finds the other's prompts cached.
Headline: service throughput / raw-engine throughput (goal >= 0.9 at c=32) and the added p50 latency.
The replayed completions are compared with the recorded ones (same seed -> same tokens in vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CpuClock,
    add_common_args,
    check_all_ok,
    engine_settings,
    http_load,
    latency_ms,
    load_average,
    load_tag_index,
    max_new_tokens,
    ratio,
    serve,
    start_vllm_engine,
    write_results,
)
from bench.workload import make_workload

NAME = "service_vs_engine"


def default_requests(args: argparse.Namespace, concurrency: int) -> int:
    if args.requests:
        return args.requests
    if args.quick:
        return max(2, concurrency)
    # Enough to keep c requests in flight for a while, few enough for minutes on 2 cores.
    return max(concurrency * 2, 8) if args.shape in ("tiny", "demo") or args.device == "cuda" else max(concurrency, 4)


async def replay(engine, requests: list[list[dict]], concurrency: int) -> tuple[float, list[float], list[list[str]]]:
    """Run each request's recorded calls in order, `concurrency` requests at once, into vLLM's AsyncLLM."""
    from vllm.sampling_params import RequestOutputKind

    from service.tipo.sampling import Sampling

    llm = engine._llm  # the raw engine: vLLM's AsyncLLM, without our Engine wrapper
    # Tokenisation happens before the clock starts (the service does it inside its requests).
    prepared = [[(engine.tokenizer.encode_template(call["prompt"]), Sampling(**call["sampling"])) for call in calls]
                for calls in requests]
    latencies = [0.0] * len(requests)
    texts: list[list[str]] = [[] for _ in requests]
    run_id = uuid.uuid4().hex[:8]
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(prepared):
            index = next_index
            next_index += 1
            started = time.perf_counter()
            for number, (prompt_ids, sampling) in enumerate(prepared[index]):
                params = engine._sampling_params(sampling, RequestOutputKind.FINAL_ONLY)
                final = None
                async for output in llm.generate({"type": "token", "prompt_token_ids": prompt_ids}, params,
                                                 f"raw-{run_id}-{index}-{number}"):
                    final = output
                texts[index].append(final.outputs[0].text)
            latencies[index] = time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prepared)))))
    return time.perf_counter() - started, latencies, texts


def side(wall_s: float, latencies: list[float], requests: int, calls: int, tokens: int, cpu: dict) -> dict:
    return {
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(requests / wall_s, 3),
        "model_calls_per_s": round(calls / wall_s, 2),
        "completion_tokens_per_s": round(tokens / wall_s, 1),
        "latency_ms": latency_ms(latencies),
        "cpu_s": cpu,
    }


async def measure(args: argparse.Namespace, engine, tag_index) -> dict:
    """All concurrency levels against a started engine (the smoke test passes its shared one)."""
    from service.app import create_app

    settings = engine_settings(args)
    app = create_app(settings, engine=engine, tag_index=tag_index)
    levels = []
    async with serve(app) as base_url:
        for concurrency in args.concurrency:
            count = default_requests(args, concurrency)
            bodies = make_workload(count, seed=args.seed, max_new_tokens=max_new_tokens(args), return_trace=True)
            load_before = load_average()
            # Both sides start with an empty prefix cache (the replay would otherwise find every prompt cached).
            await engine._llm.reset_prefix_cache()
            cpu_before = CpuClock.now()
            load = await http_load(base_url, "/v1/tipo", bodies, concurrency, keep_answers=True)
            cpu_service = CpuClock.now().since(cpu_before)
            failed = check_all_ok(load, f"service at concurrency {concurrency}")
            # Only answered requests have a trace to replay (failures are counted; none expected).
            answered = [index for index, status in enumerate(load.statuses) if status == 200]
            traces = [load.answers[index]["trace"] for index in answered]
            service_latencies = [load.latencies_s[index] for index in answered]
            calls = sum(len(trace) for trace in traces)
            tokens = sum(call["completion_tokens"] for trace in traces for call in trace)

            await engine._llm.reset_prefix_cache()
            cpu_before = CpuClock.now()
            raw_wall, raw_latencies, raw_texts = await replay(engine, traces, concurrency)
            cpu_raw = CpuClock.now().since(cpu_before)
            same = sum(text == call["completion"] for trace, texts in zip(traces, raw_texts)
                       for call, text in zip(trace, texts))

            service = side(load.wall_s, service_latencies, len(traces), calls, tokens, cpu_service)
            service["cpu_s"]["load_generator_s"] = load.client_cpu_s
            raw = side(raw_wall, raw_latencies, len(traces), calls, tokens, cpu_raw)
            level = {
                "concurrency": concurrency,
                "requests": len(traces),
                "failed_requests": failed,
                "model_calls_per_request": round(calls / len(traces), 2),
                "completion_tokens_per_request": round(tokens / len(traces), 1),
                "prompt_tokens_per_call": round(statistics.mean(call["prompt_tokens"] for trace in traces
                                                                for call in trace), 1),
                "service": service,
                "raw_engine": raw,
                "throughput_ratio": ratio(service["requests_per_s"], raw["requests_per_s"]),
                "added_p50_ms": round(service["latency_ms"]["p50"] - raw["latency_ms"]["p50"], 2),
                "added_p50_relative": ratio(service["latency_ms"]["p50"] - raw["latency_ms"]["p50"],
                                            raw["latency_ms"]["p50"]),
                "replayed_completions_identical": f"{same}/{calls}",
                "load_average": {"before": load_before, "after": load_average()},
            }
            levels.append(level)
            print(f"  c={concurrency:<3} {count} requests: service {service['requests_per_s']:.3f} req/s, raw "
                  f"{raw['requests_per_s']:.3f} req/s, ratio {level['throughput_ratio']}, added p50 "
                  f"{level['added_p50_ms']:.1f} ms", file=sys.stderr)
    return {
        "workload": {"generator": "bench/workload.py make_workload", "seed": args.seed,
                     "max_new_tokens": max_new_tokens(args), "profile": settings.default_profile},
        "levels": levels,
        "headline": headline(levels),
    }


def headline(levels: list[dict]) -> dict:
    top = max(levels, key=lambda level: level["concurrency"])
    return {
        "concurrency": top["concurrency"],
        "throughput_ratio": top["throughput_ratio"],
        "goal_throughput_ratio": 0.9,
        "added_p50_ms": top["added_p50_ms"],
        "added_p50_ms_at_c1": next((level["added_p50_ms"] for level in levels if level["concurrency"] == 1), None),
    }


async def run(args: argparse.Namespace) -> dict:
    engine = await start_vllm_engine(args)
    try:
        return await measure(args, engine, load_tag_index())
    finally:
        await engine.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 8 32; quick: 1 2)")
    parser.add_argument("--requests", type=int, help="requests per level (default: by shape and concurrency)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.concurrency = args.concurrency or ([1, 2] if args.quick else [1, 8, 32])
    return args


def summary(results: dict, path: Path) -> str:
    top = results["headline"]
    return (f"service vs raw engine: c={top['concurrency']} throughput ratio {top['throughput_ratio']} "
            f"(goal >= 0.9), added p50 {top['added_p50_ms']:.1f} ms (c=1: {top['added_p50_ms_at_c1']} ms) -> {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    results = asyncio.run(run(args))
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))


if __name__ == "__main__":
    main()
