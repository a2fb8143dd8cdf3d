"""Service overhead alone: the scripted engine (zero model time) behind the real HTTP service.

    python bench/overhead.py [--requests 400] [--concurrency 1 32]

1. The workload (bench/workload.py) is run once through the TIPO core with the synthetic model, which
   answers like a trained TIPO model (realistic tag counts and captions); every (prompt, seed, completion)
   becomes the scripted engine's recording.
2. core only: the same runners replayed in-process (no HTTP, no engine): the TIPO logic's own rate.
3. The service (uvicorn on 127.0.0.1, scripted engine) gets POST /v1/tipo with the workload and
   POST /v1/completions with every recorded model call, from bench/loadgen.py in a child process.
   Reported: requests/s, p50/p99 latency and requests per CPU-second of the service process ("per core").
4. Where the time goes: the same load again under cProfile; the top functions by own time and by
   cumulative time are written to the results.
--device/--shape only name the results file here (no model runs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CpuClock,
    add_common_args,
    check_all_ok,
    http_load,
    latency_ms,
    load_average,
    load_tag_index,
    serve,
    write_results,
)
from bench.workload import make_workload, synthetic_completion

NAME = "overhead"


def record_script(bodies: list[dict], tag_index, profile: str) -> list[dict]:
    """Drive every request with the synthetic model; return the scripted engine's entries."""
    from service.api.tipo.protocol import TipoRequestBody
    from service.tipo.runner import TipoRunner

    entries: dict[tuple[str, int], str] = {}
    for raw in bodies:
        body = TipoRequestBody(**raw)
        runner = TipoRunner(body.core_request(profile=body.profile or profile, seed=body.seed), tag_index)
        while (call := runner.next_call()) is not None:
            completion = synthetic_completion(call.prompt, call.sampling.seed)
            entries[(call.prompt, call.sampling.seed)] = completion
            runner.feed(completion)
    return [{"prompt": prompt, "seed": seed, "completion": completion}
            for (prompt, seed), completion in entries.items()]


def core_only(bodies: list[dict], entries: list[dict], tag_index, profile: str) -> dict:
    """The TIPO core's rate: parse the body, build the runner, feed recorded completions, build the result."""
    from service.api.tipo.protocol import TipoRequestBody
    from service.tipo.runner import TipoRunner

    answers = {(entry["prompt"], entry["seed"]): entry["completion"] for entry in entries}
    started, calls = time.perf_counter(), 0
    for raw in bodies:
        body = TipoRequestBody(**raw)
        runner = TipoRunner(body.core_request(profile=body.profile or profile, seed=body.seed), tag_index)
        while (call := runner.next_call()) is not None:
            runner.feed(answers[(call.prompt, call.sampling.seed)])
            calls += 1
        runner.result()
    elapsed = time.perf_counter() - started
    return {"requests_per_s": round(len(bodies) / elapsed, 1), "ms_per_request": round(elapsed / len(bodies) * 1000, 3),
            "model_calls_per_request": round(calls / len(bodies), 2)}


def completion_bodies(entries: list[dict]) -> list[dict]:
    return [{"model": "scripted", "prompt": entry["prompt"], "seed": entry["seed"], "max_tokens": 512}
            for entry in entries]


def top_functions(profile: cProfile.Profile, sort: str, limit: int) -> list[dict]:
    stats = pstats.Stats(profile)
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{_short(filename)}:{line}({function})", "calls": calls,
                     "own_s": round(own, 4), "cumulative_s": round(cumulative, 4),
                     "own_share": round(own / total, 4), "cumulative_share": round(cumulative / total, 4)})
    key = "own_s" if sort == "own" else "cumulative_s"
    return sorted(rows, key=lambda row: row[key], reverse=True)[:limit]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


async def measure(args: argparse.Namespace, tag_index) -> dict:
    from service.app import create_app
    from service.settings import Settings

    bodies = make_workload(args.requests, seed=args.seed)
    profile = "fixed"
    entries = record_script(bodies, tag_index, profile)
    completions = completion_bodies(entries)[: args.requests * 2]
    core = core_only(bodies, entries, tag_index, profile)
    print(f"  core only: {core['requests_per_s']} req/s ({core['model_calls_per_request']} calls each)", file=sys.stderr)

    endpoints = {"/v1/tipo": bodies, "/v1/completions": completions}
    results: dict = {"core_only": core, "endpoints": {}, "profile": {}}
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as scratch:
        script = Path(scratch) / "script.json"
        script.write_text(json.dumps(entries))
        settings = Settings(engine="scripted", scripted_path=str(script), log_level="warning", max_in_flight=256,
                            max_queue=4096, queue_timeout_s=3600, request_timeout_s=3600, default_profile=profile)
        async with serve(create_app(settings, tag_index=tag_index)) as base_url:
            # Warm-up: first requests pay for imports and caches.
            await http_load(base_url, "/v1/tipo", bodies[:8], 4)
            for path, path_bodies in endpoints.items():
                levels = []
                for concurrency in args.concurrency:
                    cpu_before = CpuClock.now()
                    load = await http_load(base_url, path, path_bodies, concurrency)
                    cpu = CpuClock.now().since(cpu_before)
                    check_all_ok(load, f"{path} at concurrency {concurrency}")
                    service_cpu = cpu["service_process_s"]
                    levels.append({
                        "concurrency": concurrency,
                        "requests": len(path_bodies),
                        "requests_per_s": round(len(path_bodies) / load.wall_s, 1),
                        "requests_per_cpu_s": round(len(path_bodies) / service_cpu, 1) if service_cpu else None,
                        "latency_ms": latency_ms(load.latencies_s),
                        "service_cpu_s": service_cpu,
                        "load_generator_cpu_s": load.client_cpu_s,
                        "load_average": load_average(),
                    })
                    print(f"  {path} c={concurrency}: {levels[-1]['requests_per_s']} req/s, "
                          f"{levels[-1]['requests_per_cpu_s']} req per CPU-s, p50 {levels[-1]['latency_ms']['p50']} ms",
                          file=sys.stderr)
                results["endpoints"][path] = levels

                profiler = cProfile.Profile()
                profiler.enable()
                load = await http_load(base_url, path, path_bodies, max(args.concurrency))
                profiler.disable()
                check_all_ok(load, f"{path} under the profiler")
                results["profile"][path] = {
                    "concurrency": max(args.concurrency),
                    "top_by_own_time": top_functions(profiler, "own", args.top),
                    "top_by_cumulative_time": top_functions(profiler, "cumulative", args.top),
                }
    results["recording"] = {"entries": len(entries), "synthetic_model": "bench/workload.py synthetic_completion"}
    results["headline"] = {
        path: {"requests_per_s": max(level["requests_per_s"] for level in levels),
               "requests_per_cpu_s": max(level["requests_per_cpu_s"] or 0 for level in levels),
               "p50_ms_c1": levels[0]["latency_ms"]["p50"], "p99_ms_c1": levels[0]["latency_ms"]["p99"]}
        for path, levels in results["endpoints"].items()
    }
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--requests", type=int, help="/v1/tipo requests per level (default 300; quick 24); "
                        "/v1/completions gets twice as many")
    parser.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 32; quick 1 8)")
    parser.add_argument("--top", type=int, default=25, help="profile rows kept")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.requests = args.requests or (24 if args.quick else 300)
    args.concurrency = args.concurrency or ([1, 8] if args.quick else [1, 32])
    return args


def summary(results: dict, path: Path) -> str:
    tipo, completions = results["headline"]["/v1/tipo"], results["headline"]["/v1/completions"]
    return (f"overhead (scripted engine): /v1/tipo {tipo['requests_per_s']} req/s, {tipo['requests_per_cpu_s']} per "
            f"CPU-s, p50/p99 {tipo['p50_ms_c1']}/{tipo['p99_ms_c1']} ms at c=1 | /v1/completions "
            f"{completions['requests_per_s']} req/s, {completions['requests_per_cpu_s']} per CPU-s, p50/p99 "
            f"{completions['p50_ms_c1']}/{completions['p99_ms_c1']} ms | core only "
            f"{results['core_only']['requests_per_s']} req/s -> {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    results = asyncio.run(measure(args, load_tag_index()))
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))


if __name__ == "__main__":
    main()
