"""Start-up and memory of the service process: `python -m service` from launch to ready, and its RSS.

    python bench/startup.py [--device cpu|cuda] [--shape tiny|200m|500m] [--repeats 2]

Each run launches `python -m service` (TIPO_* environment) on a free port and polls /health/ready every
20 ms; the readiness detail names the start-up phase, so the time of each phase is recorded (loading
the model, loading the tag lists, warm-up generation). At ready: RSS of the service process and of its
child processes (vLLM's EngineCore and worker). Then SIGTERM, and the time to exit.
Engines: `scripted` (the HTTP layer and the tag index, no model) and `vllm` (the --shape model; not in
--quick). The tag index's share: RSS a fresh interpreter gains by loading it (bench/tag_index.py --child).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
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

NAME = "startup"
MIB = 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readiness(port: int) -> tuple[int, str]:
    import httpx

    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
    except httpx.ConnectError:
        return 0, "not listening"
    except httpx.TimeoutException:  # listening, but the event loop is busy (a blocking call in it)
        return 0, "no answer within 1 s"
    return answer.status_code, answer.json().get("detail", "")


def rss(process) -> tuple[float, float]:
    """(RSS of the process, RSS of its children) in MiB."""
    import psutil

    children = 0
    for child in process.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:
            pass
    return process.memory_info().rss / MIB, children / MIB


def one_start(environment: dict[str, str], timeout_s: float) -> dict:
    import psutil

    port = free_port()
    env = {**os.environ, **environment, "TIPO_PORT": str(port), "TIPO_HOST": "127.0.0.1", "TIPO_LOG_LEVEL": "warning"}
    launched = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phases: dict[str, float] = {}
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited with {process.returncode}: {process.stderr.read()[-3000:]}")
            status, detail = readiness(port)
            now = time.perf_counter() - launched
            phase = "ready" if status == 200 else detail.split(":")[-1].strip() if detail else "starting"
            phases.setdefault(phase, round(now, 3))
            if status == 200:
                break
            if now > timeout_s:
                raise RuntimeError(f"not ready after {timeout_s} s: {detail}")
            time.sleep(0.02)
        own, children = rss(psutil.Process(process.pid))
        stop_started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        stopped_s = time.perf_counter() - stop_started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {"ready_s": phases["ready"], "phases_first_seen_s": phases, "service_rss_mib": round(own, 1),
            "children_rss_mib": round(children, 1), "total_rss_mib": round(own + children, 1),
            "shutdown_s": round(stopped_s, 2)}


def tag_index_share() -> dict:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "tag_index.py"), "--child", "ours"],
                          capture_output=True, text=True, check=True)
    child = json.loads(done.stdout)
    return {"load_s": child["load_s"], "rss_added_mib": child["rss_added_mib"],
            "peak_rss_added_mib": child["peak_rss_added_mib"]}


def measure(args: argparse.Namespace) -> dict:
    engines = {}
    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as scratch:
        script = Path(scratch) / "empty-script.json"
        script.write_text("[]")
        configurations = {"scripted": {"TIPO_ENGINE": "scripted", "TIPO_SCRIPTED_PATH": str(script)}}
        if not args.quick:
            configurations["vllm"] = {
                "TIPO_ENGINE": "vllm", "TIPO_MODEL": str(prepare_model(args).path), "TIPO_DEVICE": args.device,
                "TIPO_KV_CACHE_GIB": "1" if args.shape == "tiny" else "2",
                "TIPO_ENFORCE_EAGER": "true" if args.device == "cpu" and not args.compile else "false",
            }
        for name, environment in configurations.items():
            runs = [one_start(environment, args.timeout) for _ in range(args.repeats)]
            engines[name] = {"runs": runs, "median": {key: statistics.median(run[key] for run in runs)
                                                      for key in ("ready_s", "service_rss_mib", "children_rss_mib",
                                                                  "total_rss_mib", "shutdown_s")}}
            print(f"  {name}: ready in {engines[name]['median']['ready_s']:.1f} s, service RSS "
                  f"{engines[name]['median']['service_rss_mib']:.0f} MiB", file=sys.stderr)
    share = tag_index_share()
    headline = {}
    for name, engine in engines.items():
        headline[name] = {**engine["median"],
                          "tag_index_share_of_service_rss": ratio(share["rss_added_mib"],
                                                                  engine["median"]["service_rss_mib"])}
    return {"engines": engines, "tag_index": share, "headline": headline}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, help="starts per engine (default 2; quick 1)")
    parser.add_argument("--timeout", type=float, default=600, help="longest wait for ready, seconds")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


def summary(results: dict, path: Path) -> str:
    parts = [f"{name} ready {h['ready_s']:.1f} s, RSS {h['service_rss_mib']:.0f} MiB (+{h['children_rss_mib']:.0f} "
             f"children), tag index {h['tag_index_share_of_service_rss']:.0%} of it"
             for name, h in results["headline"].items()]
    return f"start-up: {' | '.join(parts)} -> {path}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), load_average()
    results = measure(args)
    path = write_results(NAME, args, results, started, load_before)
    print(summary(results, path))


if __name__ == "__main__":
    main()
