"""The demo model: a tiny LLaMA of TIPO's layout, trained in about two minutes on synthetic TIPO documents.

`python -m model_store make-tiny` (and `TIPO_MODEL=auto` without a real model) builds it offline. It is
NOT TIPO: it never saw a real image caption. It learnt TIPO's *format* from documents made here, so the
service's passes answer like they would with TIPO, in a few model calls:

* the documents are written with the service's own template (`service.tipo.template`), for every mode
  the planner sends (plain tag expansion, tag_to_long, long_to_tag, short_to_tag, short_to_tag_to_long,
  tag_to_short_to_long), with random meta lines (rating, artist, characters, copyrights, quality, meta
  from tipo-kgen's tag lists, aspect ratio) and a length token;
* the `tag:` slot holds special tags and common general tags (general_tags.txt beside this file), in
  that file's order, each present with a probability set by the length token, so a document stops
  (EOS) near the length the token asks for without the model having to count;
* captions are short template sentences about the document's tags, as many as the length token asks.

Training: a LLaMA (manifest shape `demo`) on CPU, seeded, a fixed number of steps. Logits are computed
only over the token ids the documents use, plus one constant logit log(number of unused ids): that is
exactly the full 32013-way softmax of an exported model whose unused lm_head rows are zero. Embeddings
are trained for the ids the documents use only; the other rows keep their random initialisation.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_SHAPE = "demo"
# Bump when the documents or the training change: `auto` rebuilds a demo model built by another version.
DEMO_VERSION = 4
GENERAL_TAGS_PATH = Path(__file__).resolve().parent / "general_tags.txt"

TRAIN_STEPS = 400  # about 90 s on 2 cores (the whole build must stay under 2 minutes)
TOKENS_PER_BATCH = 3072  # padded tokens per optimiser step
NUM_DOCUMENTS = 6000
MAX_DOCUMENT_TOKENS = 640
LEARNING_RATE = 4e-3
DECISION_WEIGHT = 8.0  # loss weight of the positions where the length token decides (see _tensors)
TORCH_THREADS = 2  # fixed, so the same seed gives the same weights on any machine of the same kind

LENGTHS = ("very_short", "short", "long", "very_long")
# Chance of each general-tag item (one tag, or one "(one)" group) to be in a document's tag list, by
# length token: about 12 / 26 / 44 / 61 tags with the special one (the service's targets are 6-18,
# 18-36, 36-54, 54-72; it cuts what is over them, and a list under them costs one more model call).
TAG_RATE = {"very_short": 0.038, "short": 0.085, "long": 0.148, "very_long": 0.205}
# Captions: the subject sentence, some of the middle sentences (in a fixed order), the closing
# sentence, then EOS: no counting needed to stop. The chance of each middle sentence, by length token,
# gives 2 / about 3-4 / 6-7 / all sentences (targets 1-2, 2-4, 4-8, 8 or more; overshoot is cut).
SENTENCE_RATE = {"very_short": 0.0, "short": 0.18, "long": 0.45, "very_long": 1.0}
# The modes the planner sends (service/tipo/plan.py), with their share of the documents.
MODES = (
    (None, 0.26),
    ("tag_to_long", 0.28),
    ("short_to_tag", 0.10),
    ("long_to_tag", 0.14),
    ("short_to_tag_to_long", 0.12),
    ("tag_to_short_to_long", 0.10),
)
LENGTH_WEIGHTS = (0.2, 0.2, 0.35, 0.25)
# Special tags (they come first in the tag slot), with their share and how captions name them.
SUBJECTS = (
    ("1girl", 0.55, "A girl", "She", "is", "has"),
    ("1boy", 0.14, "A boy", "He", "is", "has"),
    ("2girls", 0.08, "Two girls", "They", "are", "have"),
    ("1girl, 1boy", 0.05, "A girl and a boy", "They", "are", "have"),
    ("1other", 0.03, "A character", "They", "are", "have"),
    ("", 0.15, "A character", "They", "are", "have"),
)
MOODS = ("calm", "cheerful", "gentle", "quiet", "bright", "warm", "peaceful", "lively", "dreamy", "soft")
COLORS = ("soft", "vivid", "warm", "cool", "pale", "rich", "bright", "muted")
LIGHTS = ("soft", "bright", "warm", "natural", "gentle", "dim")
LAYOUTS = ("balanced", "simple", "dynamic", "centered", "open")
DETAILS = ("fine", "clean", "delicate", "sharp", "soft")
OPENINGS = {"short": "A picture of", "long": "The picture shows", "very_long": "This detailed picture shows"}
KINDS = ("an illustration", "a drawing", "a painting", "an anime picture", "a digital artwork")


@dataclass(frozen=True)
class TagGroup:
    name: str
    tags: tuple[str, ...]
    one: bool  # at most one tag of the group in a document


def load_general_tags(path: Path = GENERAL_TAGS_PATH, index=None) -> tuple[TagGroup, ...]:
    """The groups of general_tags.txt; with a TagIndex, tags that it files under another category
    (an artist called like a tag) are left out, so every tag the model writes counts as general."""
    groups: list[TagGroup] = []
    name, one, tags = "", False, []

    def close() -> None:
        if tags:
            groups.append(TagGroup(name, tuple(tags), one))

    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("## "):
            close()
            header = line[3:].strip()
            one = header.endswith("(one)")
            name, tags = header.removesuffix("(one)").strip(), []
        elif line and not line.startswith("#"):
            if index is None or index.category(line) is None:
                tags.append(line)
    close()
    return tuple(groups)


def _head_lines(path: Path, count: int) -> list[str]:
    lines = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                lines.append(line)
            if len(lines) >= count:
                break
    return lines


@dataclass
class Pools:
    """What the meta lines are drawn from: the first entries of tipo-kgen's tag lists."""

    artists: list[str]
    characters: list[str]
    copyrights: list[str]
    meta: list[str]

    @classmethod
    def from_tag_lists(cls, directory: Path | None = None) -> Pools:
        from service.tag_lists import find_tag_list_dir

        directory = directory or find_tag_list_dir()
        return cls(
            artists=_head_lines(directory / "artist.txt", 3000),
            characters=_head_lines(directory / "characters.txt", 3000),
            copyrights=_head_lines(directory / "copyrights.txt", 1000),
            meta=_head_lines(directory / "meta.txt", 40),
        )


def _weighted(rng: random.Random, items: Sequence, weights: Sequence[float]):
    return rng.choices(items, weights=weights)[0]


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class Scene:
    special: str
    subject: tuple  # (name, pronoun, is, has)
    by_group: dict[str, list[str]] = field(default_factory=dict)  # the tags of each group, in file order
    length: str = ""  # of the caption being written ("": a caption as a user would give it)


class DocumentMaker:
    """Synthetic TIPO documents: `document(rng)` gives a prompt the service could send plus the answer,
    as template segments (service.tipo.template.Segments), and the index of the first answer segment."""

    def __init__(self, groups: Sequence[TagGroup], pools: Pools):
        self.groups = tuple(groups)
        self.pools = pools
        self.meta_tags = list(pools.meta)
        from service.tipo.tags import QUALITY_TAGS, RATING_TAGS

        self.quality_tags = list(QUALITY_TAGS[:16])
        self.rating_tags = list(RATING_TAGS)
        copyrights = set(pools.copyrights)
        self.series_of = {}
        for character in pools.characters:
            if character.endswith(")") and " (" in character:
                series = character[character.rindex(" (") + 2 : -1]
                if series in copyrights:
                    self.series_of[character] = series

    # --- content

    def scene(self, rng: random.Random, length: str) -> Scene:
        subject = _weighted(rng, SUBJECTS, [s[1] for s in SUBJECTS])
        scene = Scene(special=subject[0], subject=(subject[2], subject[3], subject[4], subject[5]))
        rate = TAG_RATE[length]
        for group in self.groups:
            if group.one:  # the group counts as one item
                scene.by_group[group.name] = [rng.choice(group.tags)] if rng.random() < rate * 2 else []
            else:
                scene.by_group[group.name] = [tag for tag in group.tags if rng.random() < rate]
        return scene

    def tag_text(self, rng: random.Random, scene: Scene, prefix: bool) -> str:
        """Special tags, then the general ones in file order, so that the list ends (EOS) after the
        file's last groups without the model counting. With `prefix`, some of them come first in
        random order (a user's tags, or the shuffled tags a retry sends) and the others follow in file
        order from the start."""
        general = [tag for group in self.groups for tag in scene.by_group[group.name]]
        if prefix and general:
            given = rng.sample(general, rng.randint(1, min(len(general), 30)))
            general = given + [tag for tag in general if tag not in given]
        special = [scene.special] if scene.special else []
        return ", ".join(special + general)

    def sentences(self, rng: random.Random, scene: Scene) -> list[str]:
        """Every sentence a caption of this scene may use, in caption order (the first is the subject)."""
        name, pronoun, is_, has = scene.subject
        g = scene.by_group
        hair = (g.get("hair length", []) + g.get("hair color", []) + g.get("hairstyle", []))[:3]
        out = [f"{name} with {_listed(hair)}." if hair else f"{name} is in the picture."]
        # The first words of a written caption say its length (OPENINGS): each later "go on or stop"
        # then reads them nearby instead of the length token far back in the target line.
        opening = OPENINGS.get(scene.length)
        if opening:
            out = [f"{opening} {name[0].lower()}{name[1:]} with {_listed(hair)}." if hair
                   else f"{opening} {name[0].lower()}{name[1:]}."]

        def some(group: str, most: int = 3) -> list[str]:
            tags = g.get(group, [])
            return tags[:most] if len(tags) <= most else sorted(rng.sample(tags, most), key=tags.index)

        eyes = some("eye color", 1) + some("eyes", 2)
        optional = []
        if eyes:
            optional.append(f"{pronoun} {has} {_listed(eyes)}.")
        for group, template in (
            ("face", "{p} {is} shown with {x}."),
            ("body", "{p} {has} {x}."),
            ("clothes", "{p} {is} wearing {x}."),
            ("pose", "The composition shows {x}."),
            ("objects", "The scene includes {x}."),
            ("background", "The background shows {x}."),
            ("style", "The image has {x}."),
        ):
            tags = some(group)
            if tags:
                sentence = template.replace("{p}", pronoun).replace("{is}", is_).replace("{has}", has)
                optional.append(sentence.replace("{x}", _listed(tags)))
        optional.append(f"The mood is {rng.choice(MOODS)}.")
        optional.append(f"The colors are {rng.choice(COLORS)}.")
        optional.append(f"The lighting is {rng.choice(LIGHTS)}.")
        optional.append(f"The composition is {rng.choice(LAYOUTS)}.")
        optional.append(f"The details are {rng.choice(DETAILS)}.")
        optional.append(f"It looks like {rng.choice(KINDS)}.")  # always the last sentence
        return out + optional

    def caption(self, rng: random.Random, scene: Scene, length: str, written: bool = True) -> str:
        """A caption of `length`; `written`: one the model writes (its opening says the length), else
        one a user would give."""
        scene.length = length if written else ""
        first, *middle, last = self.sentences(rng, scene)
        rate = SENTENCE_RATE[length]
        return " ".join([first] + [sentence for sentence in middle if rng.random() < rate] + [last])

    def meta(self, rng: random.Random) -> dict[str, str]:
        def maybe(chance: float, pick) -> str:
            return pick() if rng.random() < chance else ""

        characters = maybe(0.45, lambda: ", ".join(rng.sample(self.pools.characters, rng.choice((1, 1, 1, 2)))))
        series = [self.series_of[c] for c in characters.split(", ") if c in self.series_of]
        if not series and rng.random() < 0.5:
            series = [rng.choice(self.pools.copyrights)]
        return {
            "meta": maybe(0.5, lambda: ", ".join(rng.sample(self.meta_tags, rng.randint(1, 3)))),
            "rating": maybe(0.6, lambda: rng.choice(self.rating_tags)),
            "artist": maybe(0.35, lambda: rng.choice(self.pools.artists)),
            "characters": characters,
            "copyrights": ", ".join(dict.fromkeys(series)),
            "quality": maybe(0.6, lambda: ", ".join(rng.sample(self.quality_tags, rng.randint(1, 3)))),
            "aspect_ratio": f"{rng.choice((0.5, 0.6, 0.7, 0.8, 1.0, 1.0, 1.0, 1.3, 1.5, 1.8, 2.0)):.1f}",
        }

    # --- documents

    def document(self, rng: random.Random):
        """(segments, index of the first answer segment, mode, length).

        The answer fills the last slot of the mode, like the service's fill-mode prompts; its expand-
        mode prompts (which end inside the last given content) are prefixes of such documents.
        """
        from service.tipo.template import build_prompt_segments, slots_of

        mode = _weighted(rng, [m for m, _ in MODES], [w for _, w in MODES])
        length = _weighted(rng, LENGTHS, LENGTH_WEIGHTS)
        slots = slots_of(mode)
        target = slots[-1]
        # The length token sizes the answer; given slots get a random size.
        tag_length = length if target == "tag" else _weighted(rng, LENGTHS, (0.25, 0.25, 0.3, 0.2))
        scene = self.scene(rng, tag_length)
        tags = self.tag_text(rng, scene, prefix=rng.random() < 0.5)
        if "tag" in slots[:-1] and rng.random() < 0.05:
            tags = ""  # an empty middle slot (`tag: ` + newline): a caption-only request
        content = {"tag": tags}
        if "short" in slots:
            content["short"] = self.caption(rng, scene, "very_short", written=False)
        if "long" in slots:
            content["long"] = (self.caption(rng, scene, length) if target == "long"
                               else self.caption(rng, scene, rng.choice(LENGTHS), written=rng.random() < 0.5))
        answer = content[target]
        if not answer:
            return None
        # The service writes its one caption into `short` when the mode has that slot, else into
        # `long`; the slot answered is left to the answer.
        if "short" in slots:
            nl = content["short"]
        else:
            nl = content["long"] if "long" in slots[:-1] else ""
        general = "" if target == "tag" else tags
        prompt = build_prompt_segments(self.meta(rng), general, nl, mode, length, expand=False)
        return prompt + ((" " + answer, False),), len(prompt), mode, length


# --- training -----------------------------------------------------------------------------------


def _tokenized_corpus(maker: DocumentMaker, tokenizer, count: int, seed: int):
    """[(token ids ending with EOS, first position whose token is learnt, position of the answer)],
    sorted by length."""
    rng = random.Random(seed)
    corpus = []
    while len(corpus) < count:
        document = maker.document(rng)
        if document is None:
            continue
        segments = document[0]
        ids = tokenizer.encode_segments(segments) + [tokenizer.eos_id]
        if len(ids) > MAX_DOCUMENT_TOKENS:
            continue
        # Learn everything after the target line (the meta values are random names: not learnt).
        head = [part for part in segments if part[1] and part[0].startswith("target:")]
        upto = segments.index(head[0])
        prefix = list(segments[:upto]) + [(head[0][0].rstrip("\n"), True)]
        answer_at = len(tokenizer.encode_segments(segments[:-1]))
        corpus.append((ids, len(tokenizer.encode_segments(prefix)), answer_at))
    corpus.sort(key=lambda item: len(item[0]))
    return corpus


def _batches(corpus, rng: random.Random):
    batches, start = [], 0
    while start < len(corpus):
        longest = len(corpus[start][0])
        size = max(1, TOKENS_PER_BATCH // longest)
        batches.append(corpus[start : start + size])
        start += size
    rng.shuffle(batches)
    return batches


def train_demo_weights(tokenizer, shape_config: dict, seed: int = 0, steps: int = TRAIN_STEPS,
                       documents: int = NUM_DOCUMENTS, maker: DocumentMaker | None = None):
    """Train the demo model; returns the state dict of a full `LlamaForCausalLM` (vocab 32013)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaModel

    started = time.monotonic()
    if maker is None:
        from service.tag_lists import load_tag_index

        maker = DocumentMaker(load_general_tags(index=load_tag_index()), Pools.from_tag_lists())
    corpus = _tokenized_corpus(maker, tokenizer, documents, seed)
    vocab_size = shape_config["vocab_size"]
    seen = sorted({token for item in corpus for token in item[0]})
    learnt = sorted({ids[i] for ids, start, _ in corpus for i in range(start, len(ids))} | {tokenizer.eos_id})
    seen_index = {token: i for i, token in enumerate(seen)}
    learnt_index = {token: i for i, token in enumerate(learnt)}
    log.info("demo model: %d documents (%d tokens) in %.1f s; %d token ids seen, %d learnt",
             len(corpus), sum(len(item[0]) for item in corpus), time.monotonic() - started, len(seen), len(learnt))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        torch.manual_seed(seed)
        # No padding_idx in the compact embedding: its row 2 is not the pad token (and would stay zero).
        config = LlamaConfig(**{**shape_config, "vocab_size": len(seen), "pad_token_id": None})
        config._attn_implementation = "sdpa"
        body = LlamaModel(config)
        head = torch.nn.Linear(config.hidden_size, len(learnt), bias=False)
        torch.nn.init.normal_(head.weight, std=0.02)
        # log(number of ids never learnt): their logit is 0 in the exported model (zero lm_head rows).
        unused_logit = math.log(vocab_size - len(learnt))
        parameters = list(body.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.0)
        warmup = max(1, steps // 20)

        def learning_rate(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, steps - warmup)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)
        batch_rng = random.Random(seed + 1)
        period = tokenizer.encode_template("a.")[-1]
        batches: list = []
        body.train()
        for step in range(steps):
            if not batches:
                batches = _batches(corpus, batch_rng)
            inputs, targets, weights = _tensors(batches.pop(), seen_index, learnt_index, period)
            hidden = body(input_ids=inputs).last_hidden_state
            logits = head(hidden)
            logits = torch.cat([logits, logits.new_full((*logits.shape[:2], 1), unused_logit)], dim=-1)
            losses = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1),
                                                       ignore_index=-100, reduction="none")
            loss = (losses * weights.view(-1)).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            if step % 100 == 0 or step == steps - 1:
                log.info("demo model: step %d/%d loss %.3f (%.0f s)", step + 1, steps, loss.item(),
                         time.monotonic() - started)
    finally:
        torch.set_num_threads(previous_threads)

    # The full model's weights: trained rows where ids were seen / learnt.
    generator = torch.Generator().manual_seed(seed)
    embed = torch.randn(vocab_size, config.hidden_size, generator=generator) * 0.02
    embed[torch.tensor(seen)] = body.embed_tokens.weight.detach()
    lm_head = torch.zeros(vocab_size, config.hidden_size)
    lm_head[torch.tensor(learnt)] = head.weight.detach()
    state = {f"model.{name}": tensor.detach().clone() for name, tensor in body.state_dict().items()}
    state["model.embed_tokens.weight"] = embed
    state["lm_head.weight"] = lm_head
    return state


def _tensors(batch, seen_index: dict, learnt_index: dict, period: int):
    """Inputs, targets (-100: not learnt) and position weights of a batch.

    The positions where the length token decides weigh DECISION_WEIGHT: the first tokens of the
    answer (which tag comes first sets the pace of the list; a caption's opening says its length)
    and those right after a "." (a caption ends or goes on). They are few, and the shared loss would
    learn them last. A weight on positions (not on targets) leaves the learnt distributions unbiased.
    """
    import torch

    width = max(len(item[0]) for item in batch)
    inputs = torch.zeros(len(batch), width, dtype=torch.long)
    targets = torch.full((len(batch), width), -100, dtype=torch.long)
    weights = torch.zeros(len(batch), width)
    for row, (ids, start, answer_at) in enumerate(batch):
        inputs[row, : len(ids)] = torch.tensor([seen_index[t] for t in ids])
        # Position i predicts token i + 1; learnt from token `start` on (right padding needs no mask:
        # attention is causal, so no real token sees a pad).
        for i in range(max(start, 1), len(ids)):
            targets[row, i - 1] = learnt_index[ids[i]]
            decides = ids[i - 1] == period or answer_at <= i < answer_at + 8
            weights[row, i - 1] = DECISION_WEIGHT if decides else 1.0
    return inputs, targets, weights


def write_demo_model(dest: Path, seed: int = 0, steps: int = TRAIN_STEPS, documents: int = NUM_DOCUMENTS) -> dict:
    """config.json, generation_config.json, model.safetensors of the trained demo model in `dest`
    (whose tokenizer files must be written already). Returns facts for the marker file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from model_store.tiny import write_generation_config

    from model_store.manifest import load_manifest
    from service.engine.tokenizer import PromptTokenizer

    started = time.monotonic()
    shape_config = load_manifest().llama_config(DEMO_SHAPE)
    tokenizer = PromptTokenizer.from_model_dir(dest)
    state = train_demo_weights(tokenizer, shape_config, seed=seed, steps=steps, documents=documents)
    config = LlamaConfig(**shape_config)
    config.dtype = "float32"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, assign=True, strict=True)
    model.save_pretrained(dest, safe_serialization=True)
    write_generation_config(dest)
    return {"train_steps": steps, "documents": documents, "build_seconds": round(time.monotonic() - started, 1)}


DEMO_WARNING = ("demo model trained for two minutes on synthetic TIPO-format documents (template sentences, "
                "random common tags): NOT TIPO, its prompts are not meaningful")


def build_demo_model(dest: Path, seed: int = 0, overwrite: bool = False, steps: int = TRAIN_STEPS,
                     documents: int = NUM_DOCUMENTS) -> Path:
    """Train and write the demo model directory at `dest` (atomically, like build_random_model); an
    existing demo model of this version is kept unless `overwrite`."""
    from model_store.tiny import build_model_dir, is_demo_model

    dest = Path(dest)
    if is_current_demo_model(dest) and not overwrite:
        return dest
    if is_demo_model(dest):
        overwrite = True  # a random demo model, or one of another version of this builder
    marker = {
        "demo": True,
        "kind": "trained",
        "version": DEMO_VERSION,
        "shape": DEMO_SHAPE,
        "seed": seed,
        "warning": DEMO_WARNING,
        "built_by": "python -m model_store make-tiny",
    }
    log.warning("building the demo model into %s: about 2 minutes of training on 2 idle CPU cores (once)", dest)
    return build_model_dir(dest, lambda work: write_demo_model(work, seed, steps, documents), marker, overwrite)


def is_current_demo_model(path: Path) -> bool:
    """A trained demo model written by this version of the builder."""
    from model_store.tiny import read_marker

    marker = read_marker(path)
    return marker.get("kind") == "trained" and marker.get("version") == DEMO_VERSION
