"""Markdown tables from bench/gpu_sim.py results (docs/BENCHMARKS.md, "GPU simulation (issue 14)").

    python bench/gpu_table.py bench/results/gpu_sim_simulated_cpu.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def capacity(record: dict) -> list[str]:
    rows = record.get("gpu_capacity") or []
    if not rows:
        return []
    lines = ["The simulated GPU alone (closed loop, no front end):", "",
             "| prompts at once | prompts/s | p50 / p95 ms | generated tok/s | prefill tok/s | mean batch | lag resets |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['concurrency']} | {row['prompts_per_s']} | {row['latency_ms']['p50']} / "
                     f"{row['latency_ms']['p95']} | {row['generated_tokens_per_s']} | {row['prefill_tokens_per_s']} | "
                     f"{row['mean_batch']} | {row['lag_resets']:g} |")
    return [*lines, ""]


def table(record: dict) -> str:
    gpu = f", GPU {record['machine']['gpu']}" if record["machine"].get("gpu") else ""
    lines = [f"`{record['command']}` ({record['time']}, {record['machine']['nproc']} cores "
             f"{record['machine']['cpu_model']}{gpu}, "
             f"engine {record['engine']}, load average before/after {record['load_average']['before'][0]} / "
             f"{record['load_average']['after'][0]})", "",
             *capacity(record),
             "| topology | offered /s | achieved /s | ok / sent | p50 ms | p95 ms | CPU share per process | "
             "front-end CPU ms / prompt | load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for topology, levels in record["topologies"].items():
        for row in levels:
            shares = ", ".join(f"{name} {share:.2f}" for name, share in row["process_cpu_share"].items())
            failures = f" ({', '.join(f'{k} {v}' for k, v in row['failures'].items())})" if row["failures"] else ""
            lines.append(f"| {topology} | {row['offered_per_s']:g} | {row['achieved_per_s']} | {row['ok']} / "
                         f"{row['requests']}{failures} | {row['latency_ms']['p50']} | {row['latency_ms']['p95']} | "
                         f"{shares} | {row['front_end_cpu_ms_per_prompt']} | {row['load_average'][0]} |")
    if record.get("profile"):
        lines += ["", f"Profile of the inproc service at {record['profile']['offered_per_s']:g}/s (own time):", "",
                  "| function | calls | own share |", "| --- | --- | --- |"]
        for row in record["profile"]["top_by_own_time"][:15]:
            lines.append(f"| `{row['function']}` | {row['calls']} | {row['own_share'] * 100:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    for index, path in enumerate(sys.argv[1:]):
        if index:
            print()
        print(table(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main()
