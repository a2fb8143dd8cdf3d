"""vLLM's own benchmark client (`vllm bench serve`) against this service and against vLLM's own server.

    python bench/vllm_bench_serve.py [--device cpu|cuda] [--shape tiny|200m|500m] [--num-prompts 64]
                                     [--max-concurrency 8] [--input-len 64] [--max-new-tokens 64]

One run, two phases, one server at a time (never both: the CI machine has 2 cores):
1. service: `python -m service` (TIPO_* environment) on a free port, until GET /health/ready is 200;
2. vLLM: `python -m vllm.entrypoints.openai.api_server --model DIR --served-model-name NAME --dtype
   bfloat16 --max-model-len 1024 [--enforce-eager]`, until GET /health is 200.
Same model (the random --shape model, or --model), same served name, same engine environment
(VLLM_CPU_KVCACHE_SPACE, and VLLM_CPU_NUM_OF_RESERVED_CPU = what the service picks for this machine,
so both engines compute on the same cores). Against each, the same client command:

    python bench/vllm_cli.py bench serve --backend openai --base-url http://127.0.0.1:PORT
        --endpoint /v1/completions --model NAME --tokenizer DIR --dataset-name random
        --random-input-len 64 --random-output-len 64 --num-prompts 64 --max-concurrency 8
        --ignore-eos --seed 0 --temperature 0.5 --top-p 0.95 --top-k 80 --min-p 0.05
        --ready-check-timeout-sec 60 --num-warmups 8 --save-result --save-detailed ...

(bench/vllm_cli.py: the `vllm` console script does not start with the CPU build, see its docstring.)
Streaming completions with usage; `--seed` seeds the random prompts (the requests carry no seed
unless --request-seed); the client always sends repetition_penalty 1.0. Warm-up: the client's ready
check (one request) and --num-warmups requests (default: the concurrency) before the measured ones.
Each phase (start, warm-up, measurement) is timeboxed (--phase-timeout) and its processes are killed
on timeout; the servers are always stopped. Before measuring, the script waits (up to --load-wait s,
polling every 20 s) for the 1-minute load average to drop to --max-load (not in --quick).
Headline: service / vLLM for request and output-token throughput and for the median TTFT, TPOT, ITL
and end-to-end latency (throughput ratio 1 = as fast; latency ratio 1 = as quick).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO_ROOT,
    add_common_args,
    load_average,
    prepare_model,
    ratio,
    write_results,
)

NAME = "vllm_bench_serve"
SERVERS = ("service", "vllm")
LOAD_POLL_S = 20
# The figures kept from the client's results file, per server.
FIGURES = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
           "output_throughput", "total_token_throughput")
LATENCIES = ("ttft", "tpot", "itl", "e2el")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def output_len(args: argparse.Namespace) -> int:
    return args.max_new_tokens or (16 if args.quick else 64)


def reserved_cores(args: argparse.Namespace) -> str | None:
    """VLLM_CPU_NUM_OF_RESERVED_CPU for both servers: --reserved-cores, the environment's, else the service's
    own choice for this machine (0 on up to 4 cores), so vLLM's server computes on the same cores."""
    if args.device != "cpu":
        return None
    if args.reserved_cores is not None:
        return str(args.reserved_cores)
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"]
    from service.engine.vllm import reserved_cpu_cores

    chosen = reserved_cpu_cores(None, len(os.sched_getaffinity(0)))
    return None if chosen is None else str(chosen)


def engine_environment(args: argparse.Namespace) -> dict[str, str]:
    """What both servers' engines get in their environment."""
    environment = {}
    if args.device == "cpu":
        environment["VLLM_CPU_KVCACHE_SPACE"] = kv_cache_gib(args)
        if (reserved := reserved_cores(args)) is not None:
            environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] = reserved
    return environment


def kv_cache_gib(args: argparse.Namespace) -> str:
    return "1" if args.shape == "tiny" else "2"  # as bench/common.py engine_settings


def enforce_eager(args: argparse.Namespace) -> bool:
    return args.device == "cpu" and not args.compile


def server_commands(args: argparse.Namespace, model, port: int) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """Per server: (command, its own environment, readiness path)."""
    service_env = {
        "TIPO_HOST": "127.0.0.1", "TIPO_PORT": str(port), "TIPO_MODEL": str(model.path),
        "TIPO_SERVED_MODEL_NAME": model.name, "TIPO_ENGINE": "vllm", "TIPO_DEVICE": args.device,
        "TIPO_MAX_MODEL_LEN": "1024", "TIPO_ENFORCE_EAGER": "true" if enforce_eager(args) else "false",
        "TIPO_DTYPE": "bfloat16", "TIPO_KV_CACHE_GIB": kv_cache_gib(args),
        "TIPO_LOG_LEVEL": "warning", "TIPO_SHUTDOWN_GRACE_S": "5",
    }
    vllm_command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model.path),
                    "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(port),
                    "--dtype", "bfloat16", "--max-model-len", "1024"]
    if enforce_eager(args):
        vllm_command.append("--enforce-eager")
    return {"service": ([sys.executable, "-m", "service"], service_env, "/health/ready"),
            "vllm": (vllm_command, {}, "/health")}


def bench_command(args: argparse.Namespace, model, port: int, result_dir: Path, label: str) -> list[str]:
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "vllm_cli.py"), "bench", "serve",
        "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
        "--model", model.name, "--tokenizer", str(model.path),
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(output_len(args)),
        "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.max_concurrency),
        "--ignore-eos", "--seed", str(args.seed),
        "--temperature", "0.5", "--top-p", "0.95", "--top-k", "80", "--min-p", "0.05",
        "--ready-check-timeout-sec", "60", "--num-warmups", str(args.num_warmups),
        "--percentile-metrics", ",".join(LATENCIES), "--metric-percentiles", "50,90,99",
        "--label", label, "--disable-tqdm",
        *(["--extra-body", json.dumps({"seed": args.request_seed})] if args.request_seed is not None else []),
        "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename", f"{label}.json",
    ]
    return command


# --- processes -----------------------------------------------------------------------------------------------


def launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start a command in its own process group (so it and its children can be stopped together)."""
    with log_path.open("w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group this script started, then SIGKILL it and any child left over."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what is left of the group (a no-op once all exited)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    for child in descendants:  # children that left the group (none expected)
        try:
            child.kill()
        except psutil.Error:
            pass


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(process: subprocess.Popen, url: str, deadline: float, log_path: Path) -> None:
    import httpx

    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready at {url} within the phase timeout:\n{log_tail(log_path)}")
        time.sleep(0.2)


def wait_for_quiet_machine(args: argparse.Namespace) -> dict:
    """Wait (up to --load-wait s, polling every 20 s) for the 1-minute load average to reach --max-load."""
    started, first = time.monotonic(), load_average()
    while not args.quick and load_average()[0] > args.max_load and time.monotonic() - started < args.load_wait:
        print(f"  load average {load_average()[0]} > {args.max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(LOAD_POLL_S)
    now = load_average()
    return {"max_load": args.max_load, "at_start": first, "when_measuring": now,
            "waited_s": round(time.monotonic() - started, 1), "quiet": now[0] <= args.max_load}


# --- one phase -------------------------------------------------------------------------------------------------


def figures(result: dict) -> dict:
    """The client's key figures (milliseconds for latencies) and what the detailed lists show."""
    kept = {key: round(result[key], 3) if isinstance(result.get(key), float) else result.get(key) for key in FIGURES}
    for metric in LATENCIES:
        kept[f"{metric}_ms"] = {stat: round(result[f"{stat}_{metric}_ms"], 2)
                                for stat in ("mean", "median", "p90", "p99") if f"{stat}_{metric}_ms" in result}
    lengths = [length for length in result.get("output_lens", []) if length]
    kept["output_tokens_per_request"] = {"min": min(lengths), "max": max(lengths)} if lengths else None
    errors = sorted({error.strip().splitlines()[-1] for error in result.get("errors", []) if error})
    kept["errors"] = errors[:5]
    return kept


def phase(args: argparse.Namespace, name: str, model, scratch: Path) -> dict:
    """Start one server, run the client against it, stop the server; everything within --phase-timeout."""
    port = free_port()
    command, own_env, ready_path = server_commands(args, model, port)[name]
    environment = {**engine_environment(args), **own_env}
    server_log, client_log = scratch / f"{name}-server.log", scratch / f"{name}-client.log"
    client = bench_command(args, model, port, scratch, name)
    record = {"server_command": " ".join(_short(part) for part in command), "server_environment": environment,
              "client_command": " ".join(_short(part) for part in client)}
    deadline = time.monotonic() + args.phase_timeout
    launched = time.perf_counter()
    server = launch(command, environment, server_log)
    try:
        wait_ready(server, f"http://127.0.0.1:{port}{ready_path}", deadline, server_log)
        record["ready_s"] = round(time.perf_counter() - launched, 1)
        print(f"  {name}: ready in {record['ready_s']} s", file=sys.stderr, flush=True)
        record["load_average"] = {"before": load_average()}
        bench = launch(client, {}, client_log)
        try:
            bench.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name}: the client did not finish within the phase timeout:\n"
                               f"{log_tail(client_log)}") from None
        finally:
            stop(bench, grace_s=5)
        record["load_average"]["after"] = load_average()
        if bench.returncode != 0:
            raise RuntimeError(f"{name}: the client failed (exit {bench.returncode}):\n{log_tail(client_log)}")
        if server.poll() is not None:
            raise RuntimeError(f"{name}: the server died during the run:\n{log_tail(server_log)}")
        record.update(figures(json.loads((scratch / f"{name}.json").read_text())))
        if name == "service":
            record["admission_limit_after_run"] = admission_limit(port)
    finally:
        stop(server)
    record["phase_s"] = round(time.perf_counter() - launched, 1)
    return record


def admission_limit(port: int) -> float | None:
    """The service's adaptive admission limit (engine sequences allowed at once), from its /metrics."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("tipo_admission_limit"):
            return float(line.split()[-1])
    return None


def _short(part: str) -> str:
    """Command words as a reader would type them: the interpreter as `python`, paths from the repository."""
    if part == sys.executable:
        return "python"
    try:
        return str(Path(part).relative_to(REPO_ROOT))
    except ValueError:
        return part


# --- the run --------------------------------------------------------------------------------------------------


def headline(servers: dict) -> dict:
    """service / vLLM; `complete` is false when a server's phase failed (the figures then are partial)."""
    result: dict = {"complete": not any("error" in server for server in servers.values()),
                    "completed": {name: server.get("completed") for name, server in servers.items()},
                    "failed": {name: server.get("failed") for name, server in servers.items()}}
    service, vllm = servers.get("service", {}), servers.get("vllm", {})
    if "request_throughput" in service and "request_throughput" in vllm:
        result["request_throughput_ratio"] = ratio(service["request_throughput"], vllm["request_throughput"])
        result["output_throughput_ratio"] = ratio(service["output_throughput"], vllm["output_throughput"])
        for metric in LATENCIES:
            result[f"median_{metric}_ratio"] = ratio(service[f"{metric}_ms"]["median"],
                                                     vllm[f"{metric}_ms"]["median"])
    return result


def measure(args: argparse.Namespace) -> dict:
    model = prepare_model(args)
    machine_load = wait_for_quiet_machine(args)
    servers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as scratch:
        for name in args.servers:
            try:
                servers[name] = phase(args, name, model, Path(scratch))
            except Exception as exc:  # noqa: BLE001 - recorded; the other server still runs, then the exit fails
                print(f"!! {name}: {exc}", file=sys.stderr, flush=True)
                servers[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            figures_ = servers[name]
            print(f"  {name}: {figures_['completed']} done, {figures_['failed']} failed, "
                  f"{figures_['request_throughput']:.3f} req/s, {figures_['output_throughput']:.1f} tok/s, "
                  f"median TTFT {figures_['ttft_ms']['median']:.1f} ms, TPOT {figures_['tpot_ms']['median']:.2f} ms",
                  file=sys.stderr, flush=True)
    return {
        "workload": {"client": "vllm bench serve (bench/vllm_cli.py)", "dataset": "random",
                     "input_len": args.input_len, "output_len": output_len(args), "num_prompts": args.num_prompts,
                     "max_concurrency": args.max_concurrency, "num_warmups": args.num_warmups,
                     "seed": args.seed, "request_seed": args.request_seed, "ignore_eos": True, "stream": True,
                     "sampling": {"temperature": 0.5, "top_p": 0.95, "top_k": 80, "min_p": 0.05,
                                  "repetition_penalty": 1.0},
                     "served_model_name": model.name},
        "machine_load": machine_load,
        "servers": servers,
        "headline": headline(servers),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)  # --max-new-tokens: the output length of each request (default 64; quick 16)
    parser.add_argument("--num-prompts", type=int, help="measured requests per server (default 64; quick 8)")
    parser.add_argument("--max-concurrency", type=int, help="requests in flight (default 8; quick 2)")
    parser.add_argument("--num-warmups", type=int, help="warm-up requests before measuring (default: the concurrency)")
    parser.add_argument("--input-len", type=int, default=64, help="prompt tokens of each random request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--request-seed", type=int, help="send this `seed` in every request (default: none; "
                        "the service then draws a random seed per request, vLLM's server uses its global generator)")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="run these, in order")
    parser.add_argument("--reserved-cores", type=int,
                        help="VLLM_CPU_NUM_OF_RESERVED_CPU for both servers (default: the service's choice)")
    parser.add_argument("--phase-timeout", type=float, help="seconds per server: start, warm-up and run "
                        "(default 900; quick 300); past it the processes are killed")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load average is at most this")
    parser.add_argument("--load-wait", type=float, default=600, help="longest wait for --max-load, seconds")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.num_prompts = args.num_prompts or (8 if args.quick else 64)
    args.max_concurrency = args.max_concurrency or (2 if args.quick else 8)
    args.num_warmups = args.max_concurrency if args.num_warmups is None else args.num_warmups
    args.phase_timeout = args.phase_timeout or (300 if args.quick else 900)
    return args


def summary(results: dict, path: Path) -> str:
    top = results["headline"]
    errors = "; ".join(f"{name}: {server['error'].splitlines()[0]}" for name, server in results["servers"].items()
                       if "error" in server)
    if "request_throughput_ratio" not in top:
        return f"vllm bench serve: {errors or 'one server only'}, failed requests {top['failed']} -> {path}"
    return (f"vllm bench serve, service / vLLM server: request throughput x{top['request_throughput_ratio']}, "
            f"output tok/s x{top['output_throughput_ratio']}, median TTFT x{top['median_ttft_ratio']}, "
            f"TPOT x{top['median_tpot_ratio']} (failed: {top['failed']}) -> {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    results = measure(args)
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))
    if not results["headline"]["complete"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
