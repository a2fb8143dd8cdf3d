"""Smoke test of bench/: every script runs for a few seconds (--quick) and writes results of the right shape.

Scripts that need a vLLM engine get the session's shared one (tests/conftest.py `engine_thread`), so no
extra engine starts; the others run as the command docs/BENCHMARKS.md gives. Nothing here checks a
speed: only that each measurement runs end to end and reports what it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import calls_per_request, service_vs_engine, service_vs_reference
from bench.common import REPO_ROOT, load_average, write_results

RECORD_KEYS = {"benchmark", "command", "time", "device", "shape", "machine", "load_average", "headline"}


def run_script(name: str, out: Path, *flags: str, timeout: float = 300) -> dict:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out),
                           *flags], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout.strip().splitlines()[-1]  # the one-line summary names the results file
    return json.loads(out.read_text())


def check_record(record: dict, name: str) -> None:
    assert RECORD_KEYS <= set(record), RECORD_KEYS - set(record)
    assert record["benchmark"] == name
    assert record["quick"] is True
    assert record["machine"]["nproc"] >= 1 and record["machine"]["cpu_model"]
    assert len(record["load_average"]["before"]) == 3


def write(name: str, args, results: dict) -> dict:
    path = write_results(name, args, results, time.perf_counter(), load_average())
    return json.loads(path.read_text())


def test_overhead_cli(tmp_path):
    record = run_script("overhead", tmp_path / "overhead.json")
    check_record(record, "overhead")
    assert record["core_only"]["requests_per_s"] > 0 and record["core_only"]["model_calls_per_request"] >= 1
    for path in ("/v1/tipo", "/v1/completions"):
        levels = record["endpoints"][path]
        assert [level["concurrency"] for level in levels] == [1, 8]
        for level in levels:
            assert level["requests"] > 0 and level["requests_per_s"] > 0
            assert set(level["latency_ms"]) == {"p50", "p90", "p99", "mean", "max"}
        profile = record["profile"][path]
        assert profile["top_by_own_time"] and profile["top_by_cumulative_time"]
        assert {"function", "calls", "own_s", "cumulative_s"} <= set(profile["top_by_own_time"][0])


def test_startup_cli(tmp_path):
    record = run_script("startup", tmp_path / "startup.json")
    check_record(record, "startup")
    scripted = record["engines"]["scripted"]["runs"][0]
    assert scripted["phases_first_seen_s"]["ready"] == scripted["ready_s"] > 0
    assert scripted["service_rss_mib"] > 0
    assert record["tag_index"]["rss_added_mib"] > 0
    assert 0 < record["headline"]["scripted"]["tag_index_share_of_service_rss"] < 1


def test_vllm_bench_serve_cli(tmp_path):
    # Two real servers, one after the other (the service, then vLLM's own), each 20-60 s to start on 2 cores.
    record = run_script("vllm_bench_serve", tmp_path / "vllm_bench_serve.json", timeout=600)
    check_record(record, "vllm_bench_serve")
    assert record["workload"]["num_prompts"] == 8 and record["workload"]["max_concurrency"] == 2
    for name in ("service", "vllm"):
        server = record["servers"][name]
        assert server["completed"] == 8 and server["failed"] == 0, server
        assert server["output_tokens_per_request"] == {"min": 16, "max": 16}  # ignore_eos honoured
        assert server["request_throughput"] > 0 and server["output_throughput"] > 0
        for metric in ("ttft", "tpot", "itl"):
            assert {"mean", "median", "p99"} <= set(server[f"{metric}_ms"])
        assert "bench/vllm_cli.py bench serve" in server["client_command"]
    headline = record["headline"]
    assert headline["complete"] and headline["failed"] == {"service": 0, "vllm": 0}
    assert headline["request_throughput_ratio"] > 0 and headline["median_ttft_ratio"] > 0


def test_service_vs_engine(engine_thread, tag_index, tmp_path):
    args = service_vs_engine.parse_args(["--quick", "--out", str(tmp_path / "engine.json")])
    record = write(service_vs_engine.NAME, args, engine_thread.run(
        service_vs_engine.measure(args, engine_thread.engine, tag_index), timeout=600))
    check_record(record, "service_vs_engine")
    assert [level["concurrency"] for level in record["levels"]] == [1, 2]
    for level in record["levels"]:
        assert level["model_calls_per_request"] >= 1
        for side in ("service", "raw_engine"):
            assert level[side]["requests_per_s"] > 0 and level[side]["latency_ms"]["p50"] > 0
        assert level["throughput_ratio"] > 0
        # The replay sends exactly the recorded calls: same count on both sides.
        identical, calls = map(int, level["replayed_completions_identical"].split("/"))
        assert calls == round(level["model_calls_per_request"] * level["requests"]) and 0 <= identical <= calls
    assert record["headline"]["concurrency"] == 2


def test_service_vs_reference(engine_thread, tiny_model, tag_index, tmp_path):
    args = service_vs_reference.parse_args(["--quick", "--model", str(tiny_model.path),
                                            "--out", str(tmp_path / "reference.json")])
    results = service_vs_reference.measure(args, lambda bodies: engine_thread.run(
        service_vs_reference.measure_service(args, engine_thread.engine, tag_index, bodies), timeout=600))
    record = write(service_vs_reference.NAME, args, results)
    check_record(record, "service_vs_reference")
    reference, service = record["reference"][0], record["service"]
    assert reference["dtype"] == "float16" and reference["requests"] == 2
    assert reference["model_calls_per_request"] >= 1 and reference["prompts_per_s"] > 0
    assert service["requests"] == 3 and service["prompts_per_s"] > 0 and service["model_calls_per_request"] >= 1
    assert record["headline"]["ratio"]["float16"] > 0


def test_calls_per_request(engine_thread, tiny_model, tag_index, tmp_path):
    args = calls_per_request.parse_args(["--quick", "--model", str(tiny_model.path),
                                         "--out", str(tmp_path / "calls.json")])
    results = {"synthetic": calls_per_request.measure_synthetic(args, tag_index),
               "vllm": engine_thread.run(calls_per_request.measure_engine(args, engine_thread.engine, tag_index),
                                         timeout=600)}
    record = write(calls_per_request.NAME, args, {**results, "headline": calls_per_request.headline(results)})
    check_record(record, "calls_per_request")
    for engine in ("synthetic", "vllm"):
        for profile in ("fixed", "kgen"):
            per_request = record[engine][profile]["per_request"]
            assert per_request["model_calls"] >= 1 and per_request["completion_tokens"] > 0
            assert set(record[engine][profile]["per_kind"]) == {"tags", "caption", "both"}
        assert isinstance(record[engine]["comparison"]["fixed_not_more_calls"], bool)
    # The synthetic model meets length targets, so the profiles' retry rules decide: fixed never retries more.
    assert record["synthetic"]["comparison"]["fixed_not_more_calls"] is True


def test_gpu_sim_cli(tmp_path):
    # The simulated GPU behind one real service process (~25 s): the GPU's own capacity, one load level, a profile.
    record = run_script("gpu_sim", tmp_path / "gpu_sim.json", timeout=300)
    check_record(record, "gpu_sim")
    assert record["engine"] == "simulated" and record["cost_model"]["sim_step_fixed_ms"] > 0
    capacity = record["gpu_capacity"][0]
    assert capacity["prompts_per_s"] > 0 and capacity["mean_batch"] > 1 and capacity["calls_per_prompt"] >= 1
    (row,) = record["topologies"]["inproc"]
    assert row["ok"] == row["requests"] > 0 and not row["failures"]
    assert row["achieved_per_s"] > 0 and row["latency_ms"]["p95"] >= row["latency_ms"]["p50"] > 0
    assert row["process_cpu_s"]["service"] > 0 and len(row["load_average"]) == 3
    assert row["engine_metrics"]["tipo_engine_generated_tokens"] > 0
    assert record["profile"]["top_by_own_time"]
    assert record["headline"]["inproc"]["front_end_cpu_ms_per_prompt"] > 0
