"""HTTP load generator: POST a list of JSON bodies to one URL with N requests in flight (closed loop), or
at a fixed rate with Poisson arrivals (open loop, `--rate`).

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/tipo --bodies bodies.json --concurrency 32 --out out.json
    python bench/loadgen.py --url URL [--url URL2 ...] --bodies bodies.json --rate 200 --out out.json

Open loop: request i is sent at its arrival time whatever the answers before it (exponential gaps of mean
1/rate, seeded), so a slow server builds a queue instead of slowing the client down; with several
`--url`s, request i goes to URL i mod n (gateways behind no balancer). Latency counts from the arrival
time, so a client that falls behind shows it; `lateness_s` is how late the sends were (the client's own
limit).

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

KEEPALIVE_S = 2.0  # idle connections are dropped before the service's keep-alive (5 s) closes them under a request


async def run(url: str, bodies: list[dict], concurrency: int, keep_answers: bool) -> dict:
    latencies = [0.0] * len(bodies)
    statuses = [0] * len(bodies)
    answers: list = [None] * len(bodies)
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=KEEPALIVE_S)
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


async def run_open(urls: list[str], bodies: list[dict], rate: float, keep_answers: bool, seed: int = 0) -> dict:
    import random

    latencies = [0.0] * len(bodies)
    statuses = [0] * len(bodies)
    answers: list = [None] * len(bodies)
    rng = random.Random(seed)
    arrivals, at = [], 0.0
    for _ in bodies:
        at += rng.expovariate(rate)
        arrivals.append(at)
    lateness = []
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int, scheduled: float) -> None:
            try:
                async with session.post(urls[index % len(urls)], json=bodies[index]) as response:
                    payload = await response.read()
                statuses[index] = response.status
            except aiohttp.ClientError as exc:
                payload, statuses[index] = json.dumps({"error": {"code": f"client: {exc}"}}).encode(), 599
            latencies[index] = time.perf_counter() - scheduled
            if keep_answers or statuses[index] != 200:
                try:
                    answers[index] = json.loads(payload)
                except ValueError:
                    answers[index] = payload.decode(errors="replace")

        started = time.perf_counter()
        tasks = []
        for index, arrival in enumerate(arrivals):
            delay = started + arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(0.0, -delay))
            tasks.append(asyncio.ensure_future(one(index, started + arrival)))
        await asyncio.gather(*tasks)
        wall_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lateness.sort()
    return {"wall_s": wall_s, "send_span_s": arrivals[-1] if arrivals else 0.0, "latencies_s": latencies,
            "statuses": statuses, "answers": answers, "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "lateness_s": {"p50": lateness[len(lateness) // 2] if lateness else 0.0,
                           "max": lateness[-1] if lateness else 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, action="append", help="repeat: open-loop requests go round-robin")
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, help="open loop: requests per second, Poisson arrivals")
    parser.add_argument("--keep-answers", action="store_true")
    args = parser.parse_args()
    bodies = json.loads(args.bodies.read_text())
    if args.rate:
        result = asyncio.run(run_open(args.url, bodies, args.rate, args.keep_answers))
    else:
        result = asyncio.run(run(args.url[0], bodies, args.concurrency, args.keep_answers))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
