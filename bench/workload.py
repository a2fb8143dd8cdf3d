"""The bench workload: fixed-seed /v1/tipo request bodies, and a synthetic TIPO model for engine-free runs.

`make_workload(count)` gives a realistic mix that any prefix covers evenly: request i is tags only,
caption only or both (i % 3), with every tag length and caption length in turn, a common image size,
tags of the kinds users write (a subject count, characters and their series, general tags, quality
and rating tags) and captions of one to three sentences. Same count, same bodies.

`synthetic_completion(prompt, seed)` (service/engine/synthetic.py, shared with the simulated GPU engine)
answers a TIPO prompt the way a trained model does: it reads the target line, writes the slots the mode
asks for, with a tag count / sentence count in the target range (one answer in eight falls short, so the
retry loop runs sometimes). Deterministic in (prompt, seed). It stands in for
the model where model time must be zero (bench/overhead.py) or where random weights would hide the
difference between profiles (bench/calls_per_request.py).
"""

from __future__ import annotations

import random

from service.engine.synthetic import GENERAL, SENTENCES, synthetic_completion
from service.tipo.constants import LENGTHS

__all__ = ["GENERAL", "KINDS", "SENTENCES", "SIZES", "kind_of", "make_tags", "make_workload", "synthetic_completion"]

KINDS = ("tags", "caption", "both")
SIZES = ((1024, 1024), (832, 1216), (1216, 832), (896, 1152))

SUBJECTS = ("1girl", "1girl", "1boy", "2girls", "1other", "no humans", "multiple girls")
CHARACTERS = (
    ("hatsune miku", "vocaloid"), ("hakurei reimu", "touhou"), ("kirisame marisa", "touhou"),
    ("artoria pendragon (fate)", "fate (series)"), ("rem (re:zero)", "re:zero kara hajimeru isekai seikatsu"),
    ("gawr gura", "hololive"), ("asuka langley soryu", "neon genesis evangelion"), ("link", "the legend of zelda"),
)
QUALITY = ("masterpiece", "best quality", "very aesthetic", "absurdres", "highres", "newest")
RATING = ("safe", "sensitive", "general")


def make_workload(count: int, seed: int = 0, max_new_tokens: int = 512, profile: str | None = None,
                  return_trace: bool = False) -> list[dict]:
    """`count` /v1/tipo bodies; body i depends only on (seed, i)."""
    bodies = []
    for index in range(count):
        rng = random.Random(f"{seed}-{index}")
        kind = KINDS[index % len(KINDS)]
        width, height = SIZES[rng.randrange(len(SIZES))]
        body = {
            "tags": make_tags(rng) if kind in ("tags", "both") else "",
            "nl_prompt": " ".join(rng.sample(SENTENCES, rng.randint(1, 3))) if kind in ("caption", "both") else "",
            "width": width,
            "height": height,
            "tag_length": LENGTHS[(index // len(KINDS)) % len(LENGTHS)],
            "nl_length": LENGTHS[(index // len(KINDS) + index // 12 + 1) % len(LENGTHS)],
            "seed": rng.randrange(1, 2**31),
            "max_new_tokens": max_new_tokens,
        }
        if profile:
            body["profile"] = profile
        if return_trace:
            body["return_trace"] = True
        bodies.append(body)
    return bodies


def kind_of(body: dict) -> str:
    return "both" if body["tags"] and body["nl_prompt"] else ("tags" if body["tags"] else "caption")


def make_tags(rng: random.Random) -> str:
    tags = [rng.choice(SUBJECTS)]
    if rng.random() < 0.4:
        tags += list(rng.choice(CHARACTERS))
    tags += rng.sample(GENERAL, rng.randint(2, 12))
    if rng.random() < 0.6:
        tags += rng.sample(QUALITY, rng.randint(1, 3))
    if rng.random() < 0.3:
        tags.append(rng.choice(RATING))
    return ", ".join(tags)
