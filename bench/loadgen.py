"""HTTP load generator: POST a list of JSON bodies to one URL with N requests in flight (closed loop).

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/tipo --bodies bodies.json --concurrency 32 --out out.json

The bench scripts run it as a child process, so the client's CPU work (aiohttp, JSON) does not run in
the service's process. Workers take the bodies in order; each records its request's latency (send to
last byte). Output: wall_s (first send -> last answer), latencies_s and statuses in body order, the
answers (with --keep-answers; error answers are always kept), and the client's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

import aiohttp


async def run(url: str, bodies: list[dict], concurrency: int, keep_answers: bool) -> dict:
    latencies = [0.0] * len(bodies)
    statuses = [0] * len(bodies)
    answers: list = [None] * len(bodies)
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                index = next_index
                next_index += 1
                started = time.perf_counter()
                async with session.post(url, json=bodies[index]) as response:
                    payload = await response.read()
                latencies[index] = time.perf_counter() - started
                statuses[index] = response.status
                if keep_answers or response.status != 200:
                    try:
                        answers[index] = json.loads(payload)
                    except ValueError:
                        answers[index] = payload.decode(errors="replace")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
        wall_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall_s, "latencies_s": latencies, "statuses": statuses, "answers": answers,
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep-answers", action="store_true")
    args = parser.parse_args()
    bodies = json.loads(args.bodies.read_text())
    result = asyncio.run(run(args.url, bodies, args.concurrency, args.keep_answers))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
