"""A synthetic TIPO model: answers a TIPO prompt the way a trained model does, with no model.

`synthetic_completion(prompt, seed)` reads the prompt's target line, writes the slots its mode asks for,
with a tag count / sentence count in the target's range (one answer in eight falls short, so the TIPO
retry loop runs sometimes). Deterministic in (prompt, seed). Used by the simulated GPU engine
(service/engine/simulated.py) and by the benches that need realistic answers without model time
(bench/workload.py re-exports it).
"""

from __future__ import annotations

import random
import re

from service.tipo.constants import LENGTHS, MAX_SENTENCES, MAX_TAGS, MIN_SENTENCES, MIN_TAGS

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
