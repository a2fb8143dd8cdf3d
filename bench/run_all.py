"""Run every benchmark, one after another, with the same flags; print their summary lines and a table.

    python bench/run_all.py [--device cpu|cuda] [--shape tiny|200m|500m] [--quick] [--only NAME ...]

Each script runs in its own process (vLLM engines do not outlive their script). The table (markdown,
the figures docs/BENCHMARKS.md reports) is printed and written to bench/results/summary_<shape>_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# Cheapest first: a broken set-up fails in seconds.
SCRIPTS = ("overhead", "calls_per_request", "startup", "service_vs_engine", "service_vs_reference", "vllm_bench_serve")


def result_file(name: str, shape: str, device: str, quick: bool) -> Path:
    directory = RESULTS_DIR / "quick" if quick else RESULTS_DIR
    return directory / ("overhead.json" if name == "overhead" else f"{name}_{shape}_{device}.json")


def table(shape: str, device: str, quick: bool = False) -> str:
    """Markdown rows of the headline figures found in the results files."""
    rows = ["| measurement | figure | goal |", "| --- | --- | --- |"]

    def load(name: str) -> dict | None:
        path = result_file(name, shape, device, quick)
        return json.loads(path.read_text()) if path.is_file() else None

    if results := load("service_vs_engine"):
        for level in results["levels"]:
            rows.append(f"| service / raw engine, c={level['concurrency']} ({level['requests']} requests) | "
                        f"throughput ratio **{level['throughput_ratio']}**, added p50 {level['added_p50_ms']:.0f} ms "
                        f"({level['service']['latency_ms']['p50']:.0f} vs {level['raw_engine']['latency_ms']['p50']:.0f} "
                        f"ms) | >= 0.9 at c=32 |")
    if results := load("service_vs_reference"):
        service = results["service"]
        for reference in results["reference"]:
            rows.append(f"| service c={service['concurrency']} / reference ({reference['dtype']}, one at a time) | "
                        f"**{results['headline']['ratio'][reference['dtype']]}x** ({service['prompts_per_s']} vs "
                        f"{reference['prompts_per_s']} prompts/s) | >= 5x on CPU |")
    if results := load("vllm_bench_serve"):
        top, servers, workload = results["headline"], results["servers"], results["workload"]
        if "request_throughput_ratio" in top:
            service, vllm = servers["service"], servers["vllm"]
            rows.append(f"| `vllm bench serve`, service / vLLM's server, c={workload['max_concurrency']} "
                        f"({workload['num_prompts']} x {workload['input_len']}+{workload['output_len']} tokens) | "
                        f"throughput **{top['request_throughput_ratio']}** ({service['output_throughput']:.0f} vs "
                        f"{vllm['output_throughput']:.0f} tok/s), median TTFT x{top['median_ttft_ratio']}, "
                        f"TPOT x{top['median_tpot_ratio']} | - |")
    if results := load("overhead"):
        for path, figures in results["headline"].items():
            rows.append(f"| {path}, scripted engine | {figures['requests_per_s']} req/s, "
                        f"{figures['requests_per_cpu_s']} req per CPU-s, p50/p99 {figures['p50_ms_c1']}/"
                        f"{figures['p99_ms_c1']} ms at c=1 | - |")
        rows.append(f"| TIPO core alone (no HTTP) | {results['core_only']['requests_per_s']} req/s | - |")
    if results := load("calls_per_request"):
        for engine, figures in results.items():
            if isinstance(figures, dict) and "comparison" in figures:
                comparison = figures["comparison"]
                rows.append(f"| model calls per request, {engine} model | fixed {comparison['fixed_calls_per_request']}"
                            f" vs kgen {comparison['kgen_calls_per_request']} (tokens x"
                            f"{comparison['tokens_ratio_fixed_over_kgen']}) | fixed <= kgen: "
                            f"{comparison['fixed_not_more_calls']} |")
    if results := load("startup"):
        for engine, figures in results["headline"].items():
            rows.append(f"| start-up, {engine} engine | ready {figures['ready_s']:.1f} s, service RSS "
                        f"{figures['service_rss_mib']:.0f} MiB (+{figures['children_rss_mib']:.0f} MiB engine "
                        f"processes), tag index {figures['tag_index_share_of_service_rss']:.0%} | - |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["tiny", "200m", "500m", "demo"], default="tiny")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run these only")
    args = parser.parse_args()

    flags = ["--device", args.device, "--shape", args.shape] + (["--quick"] if args.quick else [])
    summaries, failed = [], []
    for name in args.only or SCRIPTS:
        started = time.perf_counter()
        command = [sys.executable, str(REPO_ROOT / "bench" / f"{name}.py"), *flags]
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            failed.append(name)
            print(f"!! {name} failed (exit {done.returncode})", file=sys.stderr)
            continue
        summaries.append(done.stdout.strip().splitlines()[-1])
        print(f"   {time.perf_counter() - started:.0f} s: {summaries[-1]}", file=sys.stderr, flush=True)

    markdown = (f"## {args.shape} on {args.device}, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{table(args.shape, args.device, args.quick)}\n")
    summary_file = result_file("summary", args.shape, args.device, args.quick).with_suffix(".md")
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(markdown)
    print("\n".join(summaries))
    print(markdown)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
