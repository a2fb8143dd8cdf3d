"""The bench workload: fixed-seed /v1/tipo request bodies, and a synthetic TIPO model for engine-free runs.

`make_workload(count)` gives a realistic mix that any prefix covers evenly: request i is tags only,
caption only or both (i % 3), with every tag length and caption length in turn, a common image size,
tags of the kinds users write (a subject count, characters and their series, general tags, quality
and rating tags) and captions of one to three sentences. Same count, same bodies.

`synthetic_completion(prompt, seed)` answers a TIPO prompt the way a trained model does: it reads the
target line, writes the slots the mode asks for, with a tag count / sentence count in the target range
(one answer in eight falls short, so the retry loop runs sometimes). Deterministic in (prompt, seed).
It stands in for the model where model time must be zero (bench/overhead.py) or where random weights
would hide the difference between profiles (bench/calls_per_request.py).
"""

from __future__ import annotations

import random
import re

from service.tipo.constants import (
    LENGTHS,
    MAX_SENTENCES,
    MAX_TAGS,
    MIN_SENTENCES,
    MIN_TAGS,
)

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
GENERAL = (
    "solo", "long hair", "short hair", "looking at viewer", "smile", "open mouth", "blush", "bangs", "blue eyes",
    "red eyes", "green eyes", "brown hair", "black hair", "blonde hair", "white hair", "silver hair", "twintails",
    "ponytail", "braid", "hair ornament", "hair ribbon", "hair between eyes", "ahoge", "sidelocks", "skirt",
    "dress", "white dress", "shirt", "white shirt", "long sleeves", "school uniform", "serafuku", "jacket",
    "thighhighs", "gloves", "bow", "ribbon", "hat", "holding", "standing", "sitting", "upper body", "full body",
    "cowboy shot", "outdoors", "indoors", "sky", "blue sky", "cloud", "day", "night", "sunset", "tree",
    "flower", "cherry blossoms", "petals", "water", "ocean", "beach", "city", "street", "building", "window",
    "closed eyes", "closed mouth", "hand up", "arms up", "from side", "from above", "depth of field",
    "blurry background", "simple background", "white background", "jewelry", "earrings", "necklace",
    "collarbone", "medium breasts", "bare shoulders", "frills", "pleated skirt", "necktie", "boots",
    "holding umbrella", "umbrella", "rain", "snow", "scarf", "coat", "kimono", "japanese clothes", "smile",
    "animal ears", "cat ears", "tail", "wings", "halo", "glasses", "headphones", "book", "cup", "food",
    "grass", "field", "mountain", "moon", "star (sky)", "starry sky", "light particles", "sunlight",
    "lens flare", "wind", "floating hair", "motion blur", "dutch angle", "portrait", "profile", "parted lips",
    ":d", "^_^", "one eye closed", "v", "peace sign", "looking back", "hand on own chest", "crossed arms",
    "leaning forward", "walking", "running", "jumping", "dynamic pose", "detached sleeves", "sleeveless",
    "midriff", "navel", "shorts", "pantyhose", "sneakers", "backpack", "bag", "phone", "chair", "table",
    "bed", "pillow", "curtains", "lamp", "candle", "fire", "smoke", "sword", "weapon", "armor", "cape",
    "crown", "flower field", "river", "bridge", "lantern", "festival", "fireworks", "yukata", "hair flower",
)  # fmt: skip
SENTENCES = (
    "A girl stands in a field of flowers under a clear sky.", "She smiles softly at the viewer.",
    "Her long hair flows in the wind.", "The city lights glow behind her at night.",
    "A small cat sleeps on the windowsill.", "Rain falls on the quiet street.",
    "He holds a sword and looks into the distance.", "Cherry blossom petals drift through the air.",
    "The sunset paints the clouds orange and pink.", "She wears a white dress and a straw hat.",
    "Two friends walk along the beach at dawn.", "An old library is filled with warm light.",
    "Snow covers the mountain village.", "A lantern festival lights up the river.",
    "She reads a book in a cozy cafe.", "The knight stands before the castle gate.",
)

_TARGET_LINE = re.compile(r"^target: (.*)$", re.MULTILINE)
_TOKEN = re.compile(r"<\|([a-z_]+)\|>")


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


# --- the synthetic model -----------------------------------------------------------------------------------


def synthetic_completion(prompt: str, seed: int | None) -> str:
    """What a trained TIPO model might append to `prompt` (deterministic in prompt and seed)."""
    rng = random.Random(f"{seed}|{prompt}")
    target = _TARGET_LINE.search(prompt)
    tokens = _TOKEN.findall(target.group(1)) if target else []
    length = next((token for token in tokens if token in LENGTHS), "long")
    mode = next((token for token in tokens if "_to_" in token), None)
    slots = mode.split("_to_") if mode else ["tag"]
    short_answer = rng.random() < 0.125

    last_line = prompt.rsplit("\n", 1)[-1]
    key, _, value = last_line.partition(":")
    pieces = []
    if key in slots and not value:  # the prompt ends with "<slot>:": fill it
        current = key
        pieces.append(" " + _slot_text(current, length, rng, short_answer))
    elif key in slots:  # the prompt ends inside a slot: continue it
        current = key
        more = _slot_text(current, length, rng, short_answer)
        pieces.append((", " if current == "tag" else " ") + more)
    else:  # the prompt ends with the target line: start with the first slot
        current = slots[0]
        pieces.append(f"\n{current}: " + _slot_text(current, length, rng, short_answer))
    # Then every later slot of the mode, as the model was trained to write them.
    for slot in slots[slots.index(current) + 1:]:
        pieces.append(f"\n{slot}: " + _slot_text(slot, length, rng, short_answer))
    return "".join(pieces)


def _slot_text(slot: str, length: str, rng: random.Random, short_answer: bool) -> str:
    if slot == "tag":
        low, high = MIN_TAGS[length], MAX_TAGS[length]
        count = rng.randint(1, low) if short_answer else rng.randint(low, high)
        return ", ".join(rng.sample(GENERAL, min(count, len(GENERAL))))
    low, high = MIN_SENTENCES[length], min(MAX_SENTENCES[length], 10)
    if slot == "short":
        low, high = 1, 2
    count = rng.randint(1, low) if short_answer else rng.randint(low, high)
    return " ".join(rng.choice(SENTENCES) for _ in range(count))
