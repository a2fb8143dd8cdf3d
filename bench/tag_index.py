"""Tag index: load time, memory and lookup speed of our TagIndex vs the reference's Python sets.

    .venv/bin/python bench/tag_index.py [--repeats 3] [--out bench/results/tag_index.json]

Each measurement runs in a fresh interpreter (so RSS is not shared between the two): it loads the
four tipo-kgen tag lists, reports load time and RSS added (and the peak while loading), then times
`category`-style lookups (every category in order, like the reference's classifier) and the full
classification of tag lists. The reference side loads the files exactly as kgen.formatter does
(text mode, strip, split on newlines, one set per file) without importing kgen.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from service.tag_lists import find_tag_list_dir, load_tag_index
from service.tipo.tags import (
    CATEGORY_ORDER,
    LIST_FILE_CATEGORIES,
    QUALITY_TAGS,
    RATING_TAGS,
    SPECIAL_TAGS,
    classify,
)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_reference_sets() -> dict[str, set[str]]:
    """What kgen.formatter does at import time."""
    directory = find_tag_list_dir()
    lists = {}
    for category in LIST_FILE_CATEGORIES:
        with open(directory / f"{category}.txt") as file:
            lists[category] = set(file.read().strip().split("\n"))
    lists["special"] = set(SPECIAL_TAGS)
    lists["quality"] = set(QUALITY_TAGS)
    lists["rating"] = set(RATING_TAGS)
    return lists


def classify_with_sets(tags: list[str], lists: dict[str, set[str]]) -> dict[str, list[str]]:
    result = {category: [] for category in lists} | {"general": []}
    for raw in tags:
        tag = raw.strip()
        if not tag:
            continue
        spaced = tag.replace("_", " ")
        for category, members in lists.items():
            if tag in members:
                result[category].append(tag)
                break
            if spaced in members:
                result[category].append(spaced)
                break
        else:
            result["general"].append(tag if len(tag) < 4 else spaced)
    return result


def query_tags(count: int) -> list[str]:
    """Half hits (real tags of every list, some with underscores), half misses; fixed seed."""
    directory = find_tag_list_dir()
    rng = random.Random(0)
    hits: list[str] = []
    for category in LIST_FILE_CATEGORIES:
        lines = (directory / f"{category}.txt").read_text().splitlines()
        hits += rng.sample(lines, min(len(lines), count // 8))
    hits += rng.sample(SPECIAL_TAGS + QUALITY_TAGS + RATING_TAGS, 20)
    misses = [tag + " xq" for tag in rng.sample(hits, len(hits))]
    queries = hits + misses
    rng.shuffle(queries)
    return [tag.replace(" ", "_") if i % 5 == 0 else tag for i, tag in enumerate(queries)]


def timed_rate(function, items: list, min_seconds: float = 0.5) -> float:
    """Items per second, repeating the pass until `min_seconds` have passed."""
    done, start = 0, time.perf_counter()
    while True:
        for item in items:
            function(item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def child(kind: str) -> dict:
    gc.collect()
    rss_before = rss_mib()
    start = time.perf_counter()
    if kind == "ours":
        index = load_tag_index()
    else:
        sets = load_reference_sets()
    load_s = time.perf_counter() - start
    gc.collect()
    rss_added = rss_mib() - rss_before
    peak_added = peak_rss_mib() - rss_before

    queries = query_tags(8000)
    requests = [queries[i : i + 30] for i in range(0, len(queries), 30)]
    if kind == "ours":
        lookup = index.category
        classify_one = lambda tags: classify(tags, index)
    else:
        def lookup(tag):
            for category in CATEGORY_ORDER:
                if tag in sets[category]:
                    return category
            return None

        classify_one = lambda tags: classify_with_sets(tags, sets)
    return {
        "load_s": round(load_s, 4),
        "rss_added_mib": round(rss_added, 1),
        "peak_rss_added_mib": round(peak_added, 1),
        "category_lookups_per_s": round(timed_rate(lookup, queries)),
        "classify_tags_per_s": round(timed_rate(classify_one, requests) * 30),
    }


def measure(kind: str, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--child", kind], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout))
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"median": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "tag_index.json")
    parser.add_argument("--child", choices=["ours", "sets"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ours_sorted_blobs": measure("ours", args.repeats),
        "reference_sets": measure("sets", args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    ours, sets = results["ours_sorted_blobs"]["median"], results["reference_sets"]["median"]
    print(
        f"tag index: ours load {ours['load_s']:.2f}s +{ours['rss_added_mib']:.0f} MiB RSS "
        f"(peak +{ours['peak_rss_added_mib']:.0f}), {ours['category_lookups_per_s']:,.0f} lookups/s | "
        f"sets load {sets['load_s']:.2f}s +{sets['rss_added_mib']:.0f} MiB RSS, "
        f"{sets['category_lookups_per_s']:,.0f} lookups/s | classify tags/s ours "
        f"{ours['classify_tags_per_s']:,.0f} vs sets {sets['classify_tags_per_s']:,.0f} -> {args.out}"
    )


if __name__ == "__main__":
    main()
