"""Will one service keep a GPU busy? Offered load -> optimized prompts/s and latency, one service process
and N gateway processes in front of one engine (issue 14).

    python bench/gpu_sim.py                                   # simulated H200 (TIPO_ENGINE=simulated)
    python bench/gpu_sim.py --engine vllm --model DIR         # the same on a real GPU (bench/gpu.sh)

Topologies, each a set of real `python -m service` processes on 127.0.0.1:

* `inproc`: one service process with the engine inside it (TIPO_ENGINE=simulated, or vllm: AsyncLLM's
  client in the process, the EngineCore a child), as `python -m service` runs today;
* `split-N`: one engine host serving `/v1/completions` (the service itself with the engine inside, or with
  `--host vllm`, vLLM's own OpenAI server with `--api-server-count`) and N gateway processes
  (TIPO_ENGINE=remote, TIPO_REMOTE_URL=the host) that run the TIPO logic; the load goes round-robin to
  the gateways (a balancer's job in a deployment).

For every topology and offered load (open loop, Poisson arrivals, bench/loadgen.py in its own process)
it records achieved prompts/s (200 answers / send span), p50/p95/p99 latency, errors, the CPU seconds
of every service process (psutil, the process itself, not its children), and `os.getloadavg()`. From the
CPU it derives the front end's cost per prompt, which projects a machine with more cores: on a 2-core
box the load generator and the processes share two cores, so the achieved rates here are a floor.
Then one load level again with the inproc service under cProfile (bench/profiled_service.py).

Admission: TIPO_ADAPTIVE_LIMIT=false and TIPO_MAX_IN_FLIGHT=256 (the engine's max_num_seqs), so the
engine, not the service's limiter, decides the batch; a queue of 4096 and 60 s timeouts, so overload
shows as latency rather than 429s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, failure_kind, load_average, percentile, write_results
from bench.workload import make_workload

NAME = "gpu_sim"
SERVICE_ENV = {
    "TIPO_HOST": "127.0.0.1", "TIPO_LOG_LEVEL": "warning", "TIPO_ADAPTIVE_LIMIT": "false",
    "TIPO_MAX_IN_FLIGHT": "256", "TIPO_MAX_QUEUE": "4096", "TIPO_QUEUE_TIMEOUT_S": "60",
    "TIPO_REQUEST_TIMEOUT_S": "60", "TIPO_MAX_CONNECTIONS": "8192", "TIPO_MAX_BATCH": "256",
    "TIPO_ENGINE_STALL_S": "120", "TIPO_SHUTDOWN_GRACE_S": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A server process on 127.0.0.1:port, its CPU clock and its log."""

    def __init__(self, name: str, command: list[str], env: dict, port: int, ready_path: str, log_dir: Path,
                 topology: str = "") -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.api_servers = False  # vLLM's server: count its API-server children too (cpu_s)
        log_name = f"{topology}-{name}.log" if topology else f"{name}.log"
        self.log = open(log_dir / log_name, "w")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(command, env={**os.environ, **env}, cwd=REPO_ROOT, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout_s} s; see {self.log.name}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        """CPU seconds of the process itself; for vLLM's server (`api_servers`), also of its API-server
        children, not of its EngineCore and GPU worker (the engine side, which the simulation sleeps)."""
        import psutil

        try:
            me = psutil.Process(self.popen.pid)
            total = sum(me.cpu_times()[:2])
            if self.api_servers:
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        title = " ".join(child.cmdline())
                        if "EngineCore" not in title and "Worker" not in title:
                            total += sum(child.cpu_times()[:2])
            return total
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log.close()


def engine_env(args: argparse.Namespace) -> dict:
    env = {"TIPO_ENGINE": args.engine}
    if args.model:
        env["TIPO_MODEL"] = str(args.model)
    if args.engine == "vllm":
        env["TIPO_ENFORCE_EAGER"] = "false" if args.device == "cuda" else "true"
    return env


def start_topology(topology: str, args: argparse.Namespace, log_dir: Path,
                   profile_out: str | None = None) -> list[Proc]:
    """The processes of a topology, ready; the gateways (or the one service) first."""
    python = sys.executable
    if topology == "inproc":
        port = free_port()
        # `python -m service` behind a cProfile switch that stays off until SIGUSR1 (bench/profiled_service.py).
        command = [python, str(REPO_ROOT / "bench" / "profiled_service.py")]
        env = {**SERVICE_ENV, **engine_env(args), "TIPO_PORT": str(port), "TIPO_PROFILE_OUT": profile_out or os.devnull}
        proc = Proc("service", command, env, port, "/health/ready", log_dir, topology)
        proc.wait_ready(args.ready_timeout)
        return [proc]
    gateways = int(topology.split("-")[1])
    host_port = free_port()
    if args.host == "vllm":
        # `vllm serve` (through bench/vllm_cli.py, which also runs on the CPU build), with its API servers.
        command = [python, str(REPO_ROOT / "bench" / "vllm_cli.py"), "serve", str(args.model), "--host", "127.0.0.1",
                   "--port", str(host_port), "--max-model-len", "1024", "--max-num-seqs", "256",
                   "--generation-config", "vllm", "--api-server-count", str(args.api_server_count)]
        host = Proc("host", command, {}, host_port, "/health", log_dir, topology)
        host.api_servers = True
    else:
        env = {**SERVICE_ENV, **engine_env(args), "TIPO_PORT": str(host_port)}
        if args.engine == "simulated" and args.host_client_cpu is not None:
            env["TIPO_SIM_CLIENT_CPU_US_PER_TOKEN"] = str(args.host_client_cpu)
            env["TIPO_SIM_CLIENT_CPU_US_PER_REQUEST"] = str(args.host_client_cpu and 450.0)
        host = Proc("host", [python, "-m", "service"], env, host_port, "/health/ready", log_dir, topology)
    host.wait_ready(args.ready_timeout)
    procs = []
    for index in range(gateways):
        port = free_port()
        env = {**SERVICE_ENV, "TIPO_ENGINE": "remote", "TIPO_REMOTE_URL": f"{host.url}/v1", "TIPO_PORT": str(port),
               "TIPO_REMOTE_TIMEOUT_S": "60"}
        if args.model:
            env["TIPO_MODEL"] = str(args.model)  # the gateways send the reference's token ids
        procs.append(Proc(f"gateway{index}", [python, "-m", "service"], env, port, "/health/ready", log_dir, topology))
    for proc in procs:
        proc.wait_ready(args.ready_timeout)
    return [*procs, host]


def run_load(urls: list[str], bodies: list[dict], rate: float, scratch: Path) -> dict:
    bodies_file, out_file = scratch / "bodies.json", scratch / "out.json"
    bodies_file.write_text(json.dumps(bodies))
    command = [sys.executable, str(REPO_ROOT / "bench" / "loadgen.py"), "--bodies", str(bodies_file),
               "--rate", str(rate), "--out", str(out_file)]
    for url in urls:
        command += ["--url", url + "/v1/tipo"]
    subprocess.run(command, check=True, timeout=600)
    return json.loads(out_file.read_text())


def level(procs: list[Proc], bodies: list[dict], rate: float, scratch: Path) -> dict:
    gateways = procs[:-1] if len(procs) > 1 else procs
    cpu_before = {proc.name: proc.cpu_s() for proc in procs}
    started = time.perf_counter()
    load = run_load([proc.url for proc in gateways], bodies, rate, scratch)
    wall = time.perf_counter() - started
    cpu = {proc.name: round(proc.cpu_s() - cpu_before[proc.name], 2) for proc in procs}
    ok = [latency for latency, status in zip(load["latencies_s"], load["statuses"]) if status == 200]
    failures: dict[str, int] = {}
    for status, answer in zip(load["statuses"], load["answers"]):
        kind = failure_kind(status, answer)
        if kind:
            failures[kind] = failures.get(kind, 0) + 1
    span = load["wall_s"]
    front_cpu = sum(cpu.values())
    return {
        "offered_per_s": rate, "requests": len(bodies), "ok": len(ok), "failures": failures,
        "achieved_per_s": round(len(ok) / span, 1) if span else None,
        "latency_ms": {"p50": round(percentile(ok, 0.5) * 1000, 1), "p95": round(percentile(ok, 0.95) * 1000, 1),
                       "p99": round(percentile(ok, 0.99) * 1000, 1), "max": round(max(ok) * 1000, 1) if ok else None},
        "wall_s": round(span, 2), "process_cpu_s": cpu,
        "process_cpu_share": {name: round(seconds / wall, 3) for name, seconds in cpu.items()},
        "front_end_cpu_ms_per_prompt": round(front_cpu / len(ok) * 1000, 2) if ok else None,
        "load_generator_cpu_s": load["client_cpu_s"], "client_lateness_s": load.get("lateness_s"),
        "load_average": load_average(),
    }


def engine_stats(proc: Proc) -> dict:
    import httpx

    try:
        text = httpx.get(proc.url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("tipo_engine") and " " in line and not line.startswith("#")}


def profile_rows(path: str, limit: int) -> list[dict]:
    stats = pstats.Stats(path)
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        short = filename
        for marker in ("site-packages/", str(REPO_ROOT) + "/", "python3.11/"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                break
        rows.append({"function": f"{short}:{line}({function})", "calls": calls, "own_s": round(own, 4),
                     "own_share": round(own / total, 4), "cumulative_share": round(cumulative / total, 4)})
    return sorted(rows, key=lambda row: row["own_s"], reverse=True)[:limit]


def gpu_capacity(args: argparse.Namespace, concurrency: int = 256, seconds: float = 10.0) -> dict:
    """The simulated GPU alone: the workload's model calls (recorded once through the TIPO runner with the
    synthetic model, which the engine answers identically) replayed in this process straight into a
    SimulatedEngine whose client costs nothing (no HTTP, no TIPO logic, no CPU charge), each prompt's calls
    in order, `concurrency` prompts at once: the prompts/s the cost model allows, the ceiling a front end
    should reach. `lag_resets` > 0 would mean this process could not keep up (then it is a floor)."""
    import asyncio

    from model_store.resolve import resolve_model
    from service.api.tipo.protocol import TipoRequestBody
    from service.engine.simulated import CostModel, SimulatedEngine
    from service.engine.synthetic import synthetic_completion
    from service.settings import Settings
    from service.tag_lists import load_tag_index
    from service.tipo.runner import TipoRunner

    settings, tag_index = Settings(), load_tag_index()
    cost = CostModel(step_fixed_ms=settings.sim_step_fixed_ms, decode_us_per_seq=settings.sim_decode_us_per_seq,
                     decode_us_per_context_token=settings.sim_decode_us_per_context_token,
                     prefill_us_per_token=settings.sim_prefill_us_per_token, max_num_seqs=settings.max_num_seqs,
                     max_batched_tokens=settings.sim_max_batched_tokens)
    prompts = []
    for raw in make_workload(100 if args.quick else 600, seed=5):
        body = TipoRequestBody(**raw)
        runner = TipoRunner(body.core_request(profile="fixed", seed=body.seed), tag_index)
        calls = []
        while (call := runner.next_call()) is not None:
            calls.append((call.prompt, call.sampling, call.segments))
            runner.feed(synthetic_completion(call.prompt, call.sampling.seed))
        prompts.append(calls)

    async def run() -> dict:
        engine = SimulatedEngine(resolve_model(str(args.model) if args.model else "auto").path, cost=cost)
        await engine.start()
        done, calls, next_prompt = 0, 0, 0
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, calls, next_prompt
            while time.monotonic() < deadline:
                prompt_calls = prompts[next_prompt % len(prompts)]
                next_prompt += 1
                began = time.monotonic()
                for prompt, sampling, segments in prompt_calls:
                    await engine.generate(prompt, sampling, f"c{calls}", segments)
                    calls += 1
                if time.monotonic() < deadline:
                    done += 1
                    latencies.append(time.monotonic() - began)

        engine.reset_counters()
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - began
        stats = engine.stats().extra
        await engine.shutdown()
        return {"concurrency": concurrency, "prompts_per_s": round(done / seconds, 1),
                "calls_per_prompt": round(calls / max(next_prompt, 1), 2),
                "latency_ms": {"p50": round(percentile(latencies, 0.5) * 1000),
                               "p95": round(percentile(latencies, 0.95) * 1000)},
                "generated_tokens_per_s": round(stats["generated_tokens"] / wall),
                "prefill_tokens_per_s": round(stats["prefill_tokens"] / wall), "mean_batch": stats["mean_batch"],
                "gpu_busy_share": stats["gpu_busy_share"], "lag_resets": stats["lag_resets"],
                "load_average": load_average()}

    cpu_before = time.process_time()
    result = asyncio.run(run())
    result["cpu_s_of_this_driver"] = round(time.process_time() - cpu_before, 2)
    return result


def profile_level(proc: Proc, args: argparse.Namespace, profile_out: str, scratch: Path) -> dict:
    """One more load level with the service's profiler on; the stats land in profile_out."""
    proc.popen.send_signal(signal.SIGUSR1)
    bodies = make_workload(max(int(args.profile_load * args.duration), 10), seed=7)
    profiled = level([proc], bodies, args.profile_load, scratch)
    proc.popen.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not Path(profile_out).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return profiled


def measure(args: argparse.Namespace) -> dict:
    results: dict = {"engine": args.engine, "topologies": {}, "settings": SERVICE_ENV,
                     "duration_s_per_level": args.duration, "host": args.host,
                     "host_client_cpu_us": args.host_client_cpu}
    if args.engine == "simulated":
        from service.settings import Settings

        defaults = Settings()
        results["cost_model"] = {name: getattr(defaults, name) for name in Settings.model_fields
                                 if name.startswith("sim_")} | {"max_num_seqs": defaults.max_num_seqs}
        results["gpu_capacity"] = [gpu_capacity(args, concurrency, seconds=2 if args.quick else 10)
                                   for concurrency in ([256] if args.quick else [64, 128, 256, 512])]
        print(f"  simulated GPU alone: {results['gpu_capacity']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tipo-gpu-sim-") as scratch_dir:
        scratch = Path(scratch_dir)
        log_dir = args.log_dir or scratch
        log_dir.mkdir(parents=True, exist_ok=True)
        # Every topology is started first and the levels alternate between them (load 1: each topology,
        # load 2: each ...), so other work on a shared machine weighs on all of them alike.
        running: dict[str, list[Proc]] = {}
        try:
            for topology in [] if args.capacity_only else args.topologies:
                running[topology] = start_topology(topology, args, log_dir, profile_out=str(scratch / "service.prof"))
                results["topologies"][topology] = []
            for topology, procs in running.items():
                run_load([proc.url for proc in (procs[:-1] if len(procs) > 1 else procs)],
                         make_workload(20, seed=99), 20, scratch)  # warm-up
            for rate in args.loads:
                bodies = make_workload(max(int(rate * args.duration), 10), seed=int(rate))
                for topology, procs in running.items():
                    row = level(procs, bodies, rate, scratch)
                    row["engine_metrics"] = engine_stats(procs[-1])
                    results["topologies"][topology].append(row)
                    print(f"  {topology} {rate}/s: {row['achieved_per_s']}/s ok {row['ok']}/{row['requests']}, "
                          f"p50 {row['latency_ms']['p50']} p95 {row['latency_ms']['p95']} ms, "
                          f"cpu {row['process_cpu_share']}, "
                          f"{row['front_end_cpu_ms_per_prompt']} ms CPU/prompt, load {row['load_average'][0]}",
                          file=sys.stderr)
            if args.profile_load and "inproc" in running:  # the same inproc process, one more level profiled
                profile_out = str(scratch / "service.prof")
                profiled = profile_level(running["inproc"][0], args, profile_out, scratch)
                results["profile"] = {"offered_per_s": args.profile_load, "level": profiled,
                                      "top_by_own_time": profile_rows(profile_out, args.top)}
        finally:
            for procs in running.values():
                for proc in procs:
                    proc.stop()
        if args.profile_load and not args.capacity_only and "profile" not in results:
            profile_out = str(scratch / "service.prof")
            procs = start_topology("inproc", args, log_dir, profile_out=profile_out)
            try:
                run_load([procs[0].url], make_workload(20, seed=99), 20, scratch)
                profiled = profile_level(procs[0], args, profile_out, scratch)
            finally:
                procs[0].stop()
            results["profile"] = {"offered_per_s": args.profile_load, "level": profiled,
                                  "top_by_own_time": profile_rows(profile_out, args.top)}
    results["headline"] = headline(results)
    return results


def headline(results: dict) -> dict:
    """Per topology: the highest achieved rate with p95 <= 1 s and no failures, and the front end's least CPU per
    prompt over the levels without failures (busy levels amortise the per-step work): prompts per CPU-second,
    the figure that projects to more cores."""
    out = {"simulated_gpu_prompts_per_s": max((row["prompts_per_s"] for row in results.get("gpu_capacity", [])),
                                              default=None)}
    for topology, levels in results["topologies"].items():
        good = [row for row in levels if not row["failures"] and row["latency_ms"]["p95"] <= 1000]
        costs = sorted(row["front_end_cpu_ms_per_prompt"] for row in levels
                       if row["front_end_cpu_ms_per_prompt"] and not row["failures"])
        out[topology] = {
            "best_achieved_per_s_p95_under_1s": max((row["achieved_per_s"] for row in good), default=0),
            "max_achieved_per_s": max((row["achieved_per_s"] or 0 for row in levels), default=0),
            "front_end_cpu_ms_per_prompt": costs[0] if costs else None,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["simulated", "vllm"], default="simulated")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="names the results file; vllm: cuda "
                        "compiles and captures CUDA graphs")
    parser.add_argument("--model", type=Path, help="model directory (simulated: its tokenizer only; default 'auto')")
    parser.add_argument("--loads", type=float, nargs="+", help="offered prompts/s (default 25 50 100 200 300 400)")
    parser.add_argument("--duration", type=float, help="seconds of arrivals per level (default 12; quick 2)")
    parser.add_argument("--topologies", nargs="+", help="inproc and/or split-N (default inproc split-1 split-2)")
    parser.add_argument("--host", choices=["service", "vllm"], default="service",
                        help="split: the engine host (vllm: vLLM's OpenAI server, --engine vllm only)")
    parser.add_argument("--api-server-count", type=int, default=4, help="--host vllm: its API processes")
    parser.add_argument("--host-client-cpu", type=float, help="split, simulated: the host's client CPU per token "
                        "(us); 0 = a host whose vLLM client runs in other processes (vLLM's --api-server-count), "
                        "so only the gateways' own cost is measured; default: the inproc figure")
    parser.add_argument("--profile-load", type=float, help="profile the inproc service at this load (default 100; "
                        "0: no profile)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--ready-timeout", type=float, default=900)
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    parser.add_argument("--capacity-only", action="store_true", help="simulated: only the GPU's own capacity")
    parser.add_argument("--quick", action="store_true", help="seconds: one low load, inproc only (smoke test)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.shape = "demo" if args.engine == "simulated" else "500m"
    args.compile = False
    args.loads = args.loads or ([10] if args.quick else [25, 50, 100, 200, 300, 400])
    args.duration = args.duration or (2 if args.quick else 12)
    args.topologies = args.topologies or (["inproc"] if args.quick else ["inproc", "split-1", "split-2"])
    if args.profile_load is None:
        args.profile_load = 10 if args.quick else 100
    started, load_before = time.perf_counter(), load_average()
    results = measure(args)
    if not args.out:
        directory = REPO_ROOT / "bench" / "results" / ("quick" if args.quick else "")
        args.out = directory / f"{NAME}_{args.engine}_{args.device}.json"
    path = write_results(NAME, args, results, started, load_before)
    parts = [f"{name}: {row['best_achieved_per_s_p95_under_1s']}/s with p95 <= 1 s, "
             f"{row['front_end_cpu_ms_per_prompt']} ms front-end CPU per prompt"
             for name, row in results["headline"].items() if isinstance(row, dict)]
    if results["headline"].get("simulated_gpu_prompts_per_s"):
        parts.insert(0, f"simulated GPU alone {results['headline']['simulated_gpu_prompts_per_s']} prompts/s")
    print(f"gpu_sim ({args.engine}): " + " | ".join(parts) + f" -> {path}")


if __name__ == "__main__":
    main()
