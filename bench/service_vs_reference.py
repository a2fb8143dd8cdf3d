"""Service vs the reference: optimized prompts per second, tipo-kgen 0.3.1 one at a time vs the service.

    python bench/service_vs_reference.py [--device cpu|cuda] [--shape tiny|200m|500m]

1. reference (a child process): tipo-kgen 0.3.1 as its users run it today with the transformers
   backend: `kgen.models.load_model(<model dir>)` (float16, as kgen loads it), then per request the
   ComfyUI node's flow from kgen's own functions: `seperate_tags` -> `parse_tipo_request` ->
   `tipo_runner` -> `apply_format`, one request at a time. `--reference-dtype bfloat16` adds a second,
   kinder reference (bfloat16 is ~4x faster than float16 on these CPUs; kgen never picks it).
   Tokenizer: kgen loads `LlamaTokenizer`, which in transformers 5 is a converted fast tokenizer, so
   kgen.models.tokenizer is replaced by an adapter that encodes with the service's PromptTokenizer
   (the slow tokenizer's ids, tests/engine/test_tokenizer.py) and decodes with kgen's tokenizer:
   both sides feed the model the same ids.
2. service: the same workload (bench/workload.py, profile kgen: the reference's model calls) POSTed to
   /v1/tipo at concurrency 32, in-process vLLM engine.
The reference runs the first --reference-requests bodies of the workload (every kind and length; it is
slow and its rate does not depend on the count); the service runs --requests bodies.
Headline: prompts/s of the service / prompts/s of the reference (goal on CPU >= 5x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    add_common_args,
    check_all_ok,
    engine_settings,
    http_load,
    latency_ms,
    load_average,
    load_tag_index,
    max_new_tokens,
    prepare_model,
    ratio,
    serve,
    start_vllm_engine,
    write_results,
)
from bench.workload import make_workload

NAME = "service_vs_reference"
PROFILE = "kgen"  # the reference's behaviour: the same model calls as tipo-kgen


# --- the reference (runs in a child process: kgen keeps its model and RNG in module globals) -----------


class ReferenceTokenizer:
    """What kgen's generate() needs from a tokenizer: `tok(prompt, return_tensors="pt")` and `tok.decode(ids)`."""

    def __init__(self, prompt_tokenizer, decoder):
        self.prompt_tokenizer = prompt_tokenizer
        self.decoder = decoder

    def __call__(self, text: str, return_tensors: str = "pt"):
        import torch

        return {"input_ids": torch.tensor([self.prompt_tokenizer.encode_template(text)])}

    def decode(self, ids, **kwargs) -> str:
        return self.decoder.decode(ids, **kwargs)


def reference_child(model_dir: str, workload_file: str, device: str, dtype: str) -> dict:
    import torch
    from kgen import formatter, models
    from kgen.executor import tipo

    from service.engine.tokenizer import PromptTokenizer
    from service.tipo.constants import FORMAT_PRESETS

    started = time.perf_counter()
    models.load_model(model_dir, device=device)  # as kgen loads it: float16, sdpa attention
    if dtype != "float16":
        models.text_model.to(getattr(torch, dtype))
    models.tokenizer = ReferenceTokenizer(PromptTokenizer.from_model_dir(model_dir), models.tokenizer)
    load_s = time.perf_counter() - started

    bodies = json.loads(Path(workload_file).read_text())
    latencies, calls, tokens, crashed = [], 0, 0, 0
    run_started = time.perf_counter()
    for body in bodies:
        request_started = time.perf_counter()
        template = FORMAT_PRESETS["Both, tag first (recommend)"]
        tag_map = formatter.seperate_tags([tag.strip() for tag in body["tags"].split(",") if tag.strip()])
        nl = body["nl_prompt"]
        meta, operations, general, nl = tipo.parse_tipo_request(
            tag_map, nl, tag_length_target=body["tag_length"], nl_length_target=body["nl_length"],
            generate_extra_nl_prompt=(not nl and "<|extended|>" in template) or "<|generated|>" in template,
        )
        meta["aspect_ratio"] = f"{body['width'] / body['height']:.1f}"
        timing = {}
        try:
            result, timing = tipo.tipo_runner(meta, operations, general, nl, seed=body["seed"], temperature=0.5,
                                              top_p=0.95, min_p=0.05, top_k=80, max_new_tokens=body["max_new_tokens"])
            formatter.apply_format(result, template)
        except IndexError:  # the reference's known crashes (docs/REFERENCE.md §7); the service's kgen profile answers 422
            crashed += 1
        latencies.append(time.perf_counter() - request_started)
        calls += timing.get("generate_pass", 0)
        tokens += timing.get("generated_tokens", 0)
    wall_s = time.perf_counter() - run_started
    return {"dtype": dtype, "load_s": round(load_s, 2), "requests": len(bodies), "wall_s": round(wall_s, 3),
            "prompts_per_s": round(len(bodies) / wall_s, 4), "latency_ms": latency_ms(latencies),
            "model_calls_per_request": round(calls / len(bodies), 2),
            "completion_tokens_per_request": round(tokens / len(bodies), 1),
            "completion_tokens_per_s": round(tokens / wall_s, 1), "crashed": crashed}


def run_reference(model_dir: Path, bodies: list[dict], device: str, dtype: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as scratch:
        workload = Path(scratch) / "workload.json"
        workload.write_text(json.dumps(bodies))
        done = subprocess.run([sys.executable, __file__, "--child-reference", str(model_dir), str(workload),
                               "--device", device, "--reference-dtype", dtype],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the service ----------------------------------------------------------------------------------------------


async def measure_service(args: argparse.Namespace, engine, tag_index, bodies: list[dict]) -> dict:
    from service.app import create_app

    app = create_app(engine_settings(args, default_profile=PROFILE), engine=engine, tag_index=tag_index)
    async with serve(app) as base_url:
        load = await http_load(base_url, "/v1/tipo", bodies, args.concurrency, keep_answers=True)
    # Counted, not fatal: kgen refuses what crashes the reference; random output can outgrow the context.
    failed = check_all_ok(load, "service")
    usages = [answer["usage"] for status, answer in zip(load.statuses, load.answers) if status == 200]
    calls = sum(usage["model_calls"] for usage in usages)
    tokens = sum(usage["completion_tokens"] for usage in usages)
    return {"concurrency": args.concurrency, "requests": len(bodies), "wall_s": round(load.wall_s, 3),
            "prompts_per_s": round(len(bodies) / load.wall_s, 4), "latency_ms": latency_ms(load.latencies_s),
            "model_calls_per_request": round(calls / len(bodies), 2),
            "completion_tokens_per_request": round(tokens / len(bodies), 1),
            "completion_tokens_per_s": round(tokens / load.wall_s, 1), "failed_requests": failed}


async def run_service(args: argparse.Namespace, bodies: list[dict]) -> dict:
    engine = await start_vllm_engine(args)
    try:
        return await measure_service(args, engine, load_tag_index(), bodies)
    finally:
        await engine.shutdown()


def measure(args: argparse.Namespace, service_runner) -> dict:
    """Reference runs first (its own process), then the service via `service_runner(bodies) -> dict`."""
    bodies = make_workload(args.requests, seed=args.seed, max_new_tokens=max_new_tokens(args), profile=PROFILE)
    model = prepare_model(args)
    references = []
    for dtype in args.reference_dtype:
        load_before = load_average()
        reference = run_reference(model.path, bodies[: args.reference_requests], args.device, dtype)
        reference["load_average"] = {"before": load_before, "after": load_average()}
        references.append(reference)
        print(f"  reference ({dtype}): {reference['prompts_per_s']} prompts/s", file=sys.stderr)
    load_before = load_average()
    service = service_runner(bodies)
    service["load_average"] = {"before": load_before, "after": load_average()}
    print(f"  service (c={args.concurrency}): {service['prompts_per_s']} prompts/s", file=sys.stderr)
    return {
        "workload": {"generator": "bench/workload.py make_workload", "seed": args.seed, "profile": PROFILE,
                     "max_new_tokens": max_new_tokens(args)},
        "reference": references,
        "service": service,
        "headline": {
            "service_prompts_per_s": service["prompts_per_s"],
            "reference_prompts_per_s": {ref["dtype"]: ref["prompts_per_s"] for ref in references},
            "ratio": {ref["dtype"]: ratio(service["prompts_per_s"], ref["prompts_per_s"]) for ref in references},
            "goal_ratio_cpu": 5,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--concurrency", type=int, default=32, help="service concurrency")
    parser.add_argument("--requests", type=int, help="service requests (default 64 tiny / 32 otherwise; quick 3)")
    parser.add_argument("--reference-requests", type=int,
                        help="reference requests: the workload's first ones (default 12 tiny / 3 otherwise; quick 2)")
    parser.add_argument("--reference-dtype", nargs="+", default=None, choices=["float16", "bfloat16", "float32"],
                        help="reference runs (default: float16, as kgen loads it, then bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--child-reference", nargs=2, metavar=("MODEL_DIR", "WORKLOAD"), help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    big = args.shape in ("200m", "500m") and args.device == "cpu"
    args.requests = args.requests or (3 if args.quick else (32 if big else 64))
    args.reference_requests = min(args.requests, args.reference_requests or (2 if args.quick else (3 if big else 12)))
    args.reference_dtype = args.reference_dtype or (["float16"] if args.quick else ["float16", "bfloat16"])
    return args


def summary(results: dict, path: Path) -> str:
    top = results["headline"]
    ratios = ", ".join(f"{ratio}x vs {dtype}" for dtype, ratio in top["ratio"].items())
    return (f"service vs reference: service {top['service_prompts_per_s']} prompts/s at c="
            f"{results['service']['concurrency']}, reference {top['reference_prompts_per_s']} -> {ratios} "
            f"(goal on CPU >= 5x) -> {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_reference:
        print(json.dumps(reference_child(*args.child_reference, args.device, args.reference_dtype[0])))
        return
    started, load_before = time.perf_counter(), load_average()
    results = measure(args, lambda bodies: asyncio.run(run_service(args, bodies)))
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))


if __name__ == "__main__":
    main()
