"""Model calls and tokens per request: profile `fixed` vs profile `kgen` on the same workload.

    python bench/calls_per_request.py [--device cpu|cuda] [--shape tiny|200m|500m] [--no-engine]

Two engines answer the same workload (bench/workload.py) once per profile:
1. synthetic: the synthetic TIPO model (bench/workload.py), which answers like a trained model, driven
   through the TIPO core in-process. This is where the profiles differ: kgen's bugs (the tag cap that
   uses the sentence cap, captions that lose their period, ...) make it retry where fixed stops.
   Tokens are counted with the model's tokenizer.
2. vllm: the random --shape model through the HTTP service (usage of each /v1/tipo answer). Random
   weights never meet a length target, so both profiles retry to the limit: an upper bound.
The check: fixed makes no more model calls than kgen (in total, and per request kind).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    add_common_args,
    check_all_ok,
    engine_settings,
    http_load,
    load_average,
    load_tag_index,
    max_new_tokens,
    prepare_model,
    ratio,
    serve,
    start_vllm_engine,
    write_results,
)
from bench.workload import kind_of, make_workload, synthetic_completion

NAME = "calls_per_request"
PROFILES = ("fixed", "kgen")


def summarize(bodies: list[dict], usages: list[dict | None]) -> dict:
    """Means per request, overall and per request kind; failed requests (usage None) are counted apart."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for body, usage in zip(bodies, usages):
        if usage is not None:
            groups["all"].append(usage)
            groups[kind_of(body)].append(usage)

    def means(items: list[dict]) -> dict:
        count = len(items) or 1
        return {"requests": len(items),
                "model_calls": round(sum(u["model_calls"] for u in items) / count, 3),
                "prompt_tokens": round(sum(u["prompt_tokens"] for u in items) / count, 1),
                "completion_tokens": round(sum(u["completion_tokens"] for u in items) / count, 1),
                "max_model_calls": max((u["model_calls"] for u in items), default=0)}

    return {"per_request": means(groups["all"]),
            "per_kind": {kind: means(groups[kind]) for kind in ("tags", "caption", "both")},
            "failed": sum(usage is None for usage in usages)}


def run_synthetic(bodies: list[dict], tag_index, tokenizer, profile: str) -> dict:
    from service.api.tipo.protocol import TipoRequestBody
    from service.tipo.profile import ReferenceFailure
    from service.tipo.runner import TipoRunner

    usages: list[dict | None] = []
    for raw in bodies:
        body = TipoRequestBody(**raw)
        usage = {"model_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        try:
            runner = TipoRunner(body.core_request(profile=profile, seed=body.seed), tag_index)
            while (call := runner.next_call()) is not None:
                completion = synthetic_completion(call.prompt, call.sampling.seed)
                usage["model_calls"] += 1
                usage["prompt_tokens"] += tokenizer.count_tokens(call.prompt)
                # The completion's own tokens: the whole text's ids minus the prompt's.
                usage["completion_tokens"] += (tokenizer.count_tokens(call.prompt + completion)
                                               - tokenizer.count_tokens(call.prompt))
                runner.feed(completion)
        except ReferenceFailure:  # kgen refuses what crashes the reference
            usage = None
        usages.append(usage)
    return summarize(bodies, usages)


async def run_service(args: argparse.Namespace, engine, tag_index, bodies: list[dict], profile: str) -> dict:
    from service.app import create_app

    app = create_app(engine_settings(args, default_profile=profile), engine=engine, tag_index=tag_index)
    async with serve(app) as base_url:
        load = await http_load(base_url, "/v1/tipo", bodies, args.concurrency, keep_answers=True)
    failed = check_all_ok(load, f"service, profile {profile}")
    usages = [answer["usage"] if status == 200 else None for status, answer in zip(load.statuses, load.answers)]
    result = summarize(bodies, usages)
    result["failed_requests"] = failed
    result["wall_s"] = round(load.wall_s, 2)
    return result


def compare(results: dict) -> dict:
    fixed, kgen = results["fixed"], results["kgen"]
    kinds = ("tags", "caption", "both")
    return {
        "fixed_calls_per_request": fixed["per_request"]["model_calls"],
        "kgen_calls_per_request": kgen["per_request"]["model_calls"],
        "calls_ratio_fixed_over_kgen": ratio(fixed["per_request"]["model_calls"], kgen["per_request"]["model_calls"]),
        "tokens_ratio_fixed_over_kgen": ratio(fixed["per_request"]["completion_tokens"],
                                              kgen["per_request"]["completion_tokens"]),
        "fixed_not_more_calls": fixed["per_request"]["model_calls"] <= kgen["per_request"]["model_calls"],
        "fixed_not_more_calls_per_kind": {kind: fixed["per_kind"][kind]["model_calls"]
                                          <= kgen["per_kind"][kind]["model_calls"] for kind in kinds},
    }


async def measure_engine(args: argparse.Namespace, engine, tag_index) -> dict:
    bodies = make_workload(args.engine_requests, seed=args.seed, max_new_tokens=max_new_tokens(args))
    results = {}
    for profile in PROFILES:
        results[profile] = await run_service(args, engine, tag_index, bodies, profile)
        print(f"  vllm ({args.shape}), {profile}: {results[profile]['per_request']['model_calls']} calls/request",
              file=sys.stderr)
    results["comparison"] = compare(results)
    results["workload"] = {"requests": len(bodies), "max_new_tokens": max_new_tokens(args),
                           "concurrency": args.concurrency}
    return results


def measure_synthetic(args: argparse.Namespace, tag_index) -> dict:
    from service.engine.tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer.from_model_dir(prepare_model(args).path)
    bodies = make_workload(args.requests, seed=args.seed)
    results = {profile: run_synthetic(bodies, tag_index, tokenizer, profile) for profile in PROFILES}
    results["comparison"] = compare(results)
    results["workload"] = {"requests": len(bodies), "max_new_tokens": bodies[0]["max_new_tokens"]}
    print(f"  synthetic: fixed {results['fixed']['per_request']['model_calls']} vs kgen "
          f"{results['kgen']['per_request']['model_calls']} calls/request", file=sys.stderr)
    return results


async def run(args: argparse.Namespace) -> dict:
    tag_index = load_tag_index()
    results = {"synthetic": measure_synthetic(args, tag_index)}
    if not args.no_engine:
        engine = await start_vllm_engine(args)
        try:
            results["vllm"] = await measure_engine(args, engine, tag_index)
        finally:
            await engine.shutdown()
    return {**results, "headline": headline(results)}


def headline(results: dict) -> dict:
    return {engine: figures["comparison"] for engine, figures in results.items() if "comparison" in figures}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--requests", type=int, help="synthetic-model requests (default 300; quick 24)")
    parser.add_argument("--engine-requests", type=int, help="requests through vLLM per profile (default 16 tiny / "
                        "8 otherwise; quick 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="service concurrency of the vLLM runs")
    parser.add_argument("--no-engine", action="store_true", help="only the synthetic model (no vLLM)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.requests = args.requests or (24 if args.quick else 300)
    big = args.shape in ("200m", "500m") and args.device == "cpu"
    args.engine_requests = args.engine_requests or (3 if args.quick else (8 if big else 16))
    return args


def summary(results: dict, path: Path) -> str:
    synthetic = results["synthetic"]["comparison"]
    text = (f"calls per request: synthetic model fixed {synthetic['fixed_calls_per_request']} vs kgen "
            f"{synthetic['kgen_calls_per_request']} (fixed not more: {synthetic['fixed_not_more_calls']})")
    if "vllm" in results:
        engine = results["vllm"]["comparison"]
        text += (f" | {results['vllm'].get('model', 'vLLM')} fixed {engine['fixed_calls_per_request']} vs kgen "
                 f"{engine['kgen_calls_per_request']} (fixed not more: {engine['fixed_not_more_calls']})")
    return f"{text} -> {path}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    results = asyncio.run(run(args))
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))


if __name__ == "__main__":
    main()
