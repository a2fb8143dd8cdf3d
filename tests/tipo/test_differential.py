"""Differential property tests: our core against tipo-kgen 0.3.1 (installed here) in the kgen profile.

Generated inputs must give identical templates, plans, parses, classifications, post-processing
(same seed, same RNG state afterwards), formats, and whole multi-pass runs driven by a scripted
fake model. kgen uses module-level state (global `random`, `BAN_TAGS`); the tests set it for each
example and never run kgen concurrently.
"""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# A hard dependency (pyproject), so a broken install fails here instead of skipping (imports torch: once per module).
import kgen.executor.tipo as kgen_tipo  # noqa: E402
import kgen.formatter as kgen_formatter  # noqa: E402

from service.tipo.constants import FORMAT_PRESETS, LENGTHS, SINGLE_OPERATIONS, TRAINED_MODES  # noqa: E402
from service.tipo.format import apply_format  # noqa: E402
from service.tipo.parse import parse_output  # noqa: E402
from service.tipo.plan import plan_request, plan_single_operation  # noqa: E402
from service.tipo.postprocess import BanList, postprocess  # noqa: E402
from service.tipo.profile import FIXED, KGEN, ReferenceFailure  # noqa: E402
from service.tipo.request import TipoRequest  # noqa: E402
from service.tipo.runner import TipoRunner
from service.tipo.tags import classify  # noqa: E402
from service.tipo.template import build_prompt, one_field  # noqa: E402
from tests.shared import shared_tag_index  # noqa: E402

# The reference orders its tag-list categories by os.listdir; pin the order behind vectors.json (docs/REFERENCE.md §7-21).
kgen_formatter.tag_lists = {
    name: kgen_formatter.tag_lists[name]
    for name in ("copyrights", "meta", "artist", "characters", "special", "quality", "rating")
}

EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# --- strategies ---------------------------------------------------------------------------------------

KNOWN_TAGS = [
    "1girl", "2boys", "male focus", "masterpiece", "best quality", "score_9", "score_7_up", "newest",
    "safe", "general", "sensitive", "explicit", "highres", "absurdres", "commentary request",
    "ask (askzy)", "hatsune miku", "hatsune_miku", "vocaloid", "honkai: star rail",
    "long hair", "long_hair", "smile", "twintails", "bangs", "blue sky", "sky", "skyline", "^_^", ">_<",
    "hair ornament", "looking at viewer", "looking_at_viewer", "solo", "dress", "long sleeves", "a_b",
    "Hatsune Miku", "no humans", "scenery",
]
SENTENCES = [
    "A girl stands outdoors.", "She has blue eyes.", "The sky is clear.", "She smiles at the viewer.",
    "A girl stands outdoors and waves.", "Note: this is a caption.", "Cherry blossoms fall", "...", "",
    "It is 3.5 meters tall.", "A girl",
]
odd_text = st.text(alphabet="abs <>/|_:.,\n()-", max_size=12)
tag = st.one_of(st.sampled_from(KNOWN_TAGS), odd_text)
tag_list = st.lists(tag, max_size=12)
tags_text = tag_list.map(", ".join)
caption = st.one_of(
    st.lists(st.sampled_from(SENTENCES), max_size=6).map(" ".join),
    st.sampled_from(["", " ", "  \n", ".", "...", "<|empty|>", "<|empty|"]),
    odd_text,
)
length = st.sampled_from(LENGTHS)
mode = st.sampled_from([None, *TRAINED_MODES, "tag_to_short", "tag_to_long_to_short"])
ban_entries = st.lists(st.sampled_from(["sky", ".*hair", "official", "^s", "1girl", "general", "a|b", "e$"]), max_size=3)


@st.composite
def model_texts(draw):
    """Texts shaped like model output: meta lines, target, tag and caption fields, noise."""
    keys = ["meta", "rating", "artist", "characters", "copyrights", "quality", "aspect_ratio", "target",
            "tag", "short", "long", "Note", "general", "extended"]
    lines = []
    for _ in range(draw(st.integers(0, 7))):
        key = draw(st.one_of(st.sampled_from(keys), odd_text))
        value = draw(st.one_of(tags_text, caption))
        lines.append(f"{key}:{draw(st.sampled_from(['', ' ']))}{value}")
    text = "\n".join(lines) + draw(st.sampled_from(["", "s", "</s>", " <|empty|>", "\n", "tails"]))
    return draw(st.sampled_from(["", "<s> ", "<s>", " \n"])) + text


story = st.lists(st.sampled_from(SENTENCES), min_size=2, max_size=8).map(" ".join)


@st.composite
def answer_texts(draw):
    """Texts shaped like a real answer: the prompt's fields, then tags and captions of several sentences."""
    lines = [f"rating: {draw(st.sampled_from(['safe', 'sensitive, general']))}", "target: <|long|>"]
    fields = {"short": draw(story), "tag": draw(tags_text), "long": draw(story)}
    for key in draw(st.permutations(list(fields)))[: draw(st.integers(1, 3))]:
        lines.append(f"{key}: {fields[key]}")
    return "\n".join(lines)


@st.composite
def meta_dicts(draw):
    values = st.one_of(st.none(), st.just(""), tags_text)
    meta = {key: draw(values) for key in ("meta", "rating", "artist", "characters", "copyrights", "quality")}
    if draw(st.booleans()):
        meta["aspect_ratio"] = draw(st.sampled_from(["0.7", "1.0", "1.8"]))
    return meta


# --- pure functions -----------------------------------------------------------------------------------


@EXAMPLES
@given(meta=meta_dicts(), general=tags_text, nl=caption, mode=mode, length=st.one_of(length, st.just("")),
       expand=st.booleans(), gen_meta=st.booleans())
def test_template_matches_reference(meta, general, nl, mode, length, expand, gen_meta):
    # kgen (raw_user_text): content as typed, exactly the reference's prompt.
    expected = kgen_tipo.apply_tipo_prompt(meta, general, nl, mode, length, expand, gen_meta)
    assert build_prompt(meta, general, nl, mode, length, expand, gen_meta, raw_user_text=KGEN.raw_user_text) == expected
    # fixed (docs/PROFILES.md): a newline in content that would start a new `key:` field is joined into
    # a space. `one_field` leaves every other text as it is.
    joined = {key: one_field(value) if value else value for key, value in meta.items()}
    expected = kgen_tipo.apply_tipo_prompt(joined, one_field(general), one_field(nl), mode, length, expand, gen_meta)
    assert build_prompt(meta, general, nl, mode, length, expand, gen_meta, raw_user_text=FIXED.raw_user_text) == expected


@EXAMPLES
@given(tags=tag_list)
def test_classification_matches_reference(tags):
    tag_index = shared_tag_index()
    expected = kgen_formatter.seperate_tags(tags)
    assert list(classify(tags, tag_index).items()) == list(expected.items())


@EXAMPLES
@given(tags=tag_list, nl=caption, expand_tags=st.booleans(), expand_prompt=st.booleans(),
       extra=st.booleans(), tag_first=st.booleans(), tag_length=st.one_of(length, st.just("")),
       nl_length=st.one_of(length, st.just("")), operation=st.one_of(st.none(), st.sampled_from(SINGLE_OPERATIONS)))
def test_plan_matches_reference(tags, nl, expand_tags, expand_prompt, extra, tag_first, tag_length, nl_length,
                                operation):
    tag_index = shared_tag_index()
    tag_map = kgen_formatter.seperate_tags(tags)
    if operation is None:
        meta, operations, general, nl_out = kgen_tipo.parse_tipo_request(
            tag_map, nl, expand_tags=expand_tags, expand_prompt=expand_prompt, generate_extra_nl_prompt=extra,
            tag_first=tag_first, tag_length_target=tag_length, nl_length_target=nl_length,
        )
        plan = plan_request(classify(tags, tag_index), nl, expand_tags=expand_tags, expand_prompt=expand_prompt,
                            extra_caption=extra, tag_first=tag_first, tag_length=tag_length, nl_length=nl_length)
    else:
        meta, operations, general, nl_out = kgen_tipo.tipo_single_request(
            tag_map, nl, tag_length_target=tag_length, nl_length_target=nl_length, operation=operation
        )
        plan = plan_single_operation(classify(tags, tag_index), nl, operation, tag_length=tag_length,
                                     nl_length=nl_length)
    assert list(plan.meta.items()) == list(meta.items())
    assert [op.as_list() for op in plan.operations] == operations
    assert (plan.general, plan.nl) == (general, nl_out)


@EXAMPLES
@given(text=st.one_of(model_texts(), st.text(max_size=60)))
def test_parse_matches_reference(text):
    tag_index = shared_tag_index()
    expected = kgen_tipo.parse_tipo_result(text)
    assert list(parse_output(text, tag_index, KGEN).items()) == list(expected.items())


@EXAMPLES
@given(text=st.one_of(model_texts(), answer_texts()), general=tags_text, nl=st.one_of(caption, story), mode=mode,
       length=length, ban=ban_entries,
       seed=st.integers(0, 2**40))
def test_postprocess_matches_reference(text, general, nl, mode, length, ban, seed):
    tag_index = shared_tag_index()
    parsed = parse_output(text, tag_index, KGEN)
    kgen_tipo.BAN_TAGS = list(ban)
    random.seed(seed)
    try:
        expected = kgen_tipo.post_generate_process(copy.deepcopy(parsed), general, nl, mode, length)
    except (IndexError, AttributeError):
        expected = None
    finally:
        kgen_tipo.BAN_TAGS = []
    rng = random.Random(seed)
    if expected is None:
        with pytest.raises(ReferenceFailure):
            postprocess(parsed, general, nl, mode, length, BanList.of(ban), rng, KGEN)
        return
    result = postprocess(parsed, general, nl, mode, length, BanList.of(ban), rng, KGEN)
    assert list(result.items()) == list(expected.items())
    assert rng.random() == random.random()  # the same number of draws


@st.composite
def tag_maps(draw):
    keys = ["special", "characters", "copyrights", "artist", "general", "quality", "meta", "rating", "extended",
            "generated", "tag", "target"]
    tag_map = {}
    for key in draw(st.permutations(keys))[: draw(st.integers(0, len(keys)))]:
        if key in ("extended", "generated"):
            tag_map[key] = draw(st.one_of(caption, st.just("A caption <|general|>")))
        else:
            tag_map[key] = draw(tag_list)
    return tag_map


template_piece = st.sampled_from([
    "<|special|>", "<|general|>", "<|extended|>", "<|generated|>", "<|rating|>", "<|unknown|>", "<|tag|>",
    ", ", ",", "\n", "\n\n\n", "  ", " ", ".", "<|", "|>", "text",
])
templates = st.one_of(st.sampled_from(list(FORMAT_PRESETS.values())), st.lists(template_piece, max_size=14).map("".join))


@EXAMPLES
@given(tag_map=tag_maps(), template=templates)
def test_format_matches_reference(tag_map, template):
    assert apply_format(tag_map, template, KGEN) == kgen_formatter.apply_format(tag_map, template)


@EXAMPLES
@given(ban=ban_entries, tags=tag_list)
def test_ban_filter_matches_reference(ban, tags):
    kgen_tipo.BAN_TAGS = list(ban)
    try:
        expected = [kgen_tipo.tag_filter(t) for t in tags]
    finally:
        kgen_tipo.BAN_TAGS = []
    ours = BanList.of(ban)
    assert [not ours.bans(t) for t in tags] == expected


# --- whole runs against the reference's runner, with a scripted fake model -----------------------------

POOL = ["solo", "smile", "blush", "bangs", "long hair", "twintails", "skirt", "dress", "sky", "blue sky",
        "hair ornament", "outdoors", "day", "tree", "flower", "1girl", "masterpiece", "sensitive", "highres",
        "hatsune miku", "vocaloid", "long sleeves", "thighhighs", "petals", "cloud", "holding", "standing"]
STORY = ["A girl stands outdoors", "She has blue eyes", "The sky is clear", "Petals drift in the wind",
         "She smiles", "Her dress is white", "Trees line the path", "Note: calm scene"]


def fake_completion(prompt: str, seed: int) -> str:
    """A deterministic stand-in for the model (never touches the global random)."""
    draw = random.Random(f"{seed}|{prompt}")
    if draw.random() < 0.15:
        return ""  # an immediate EOS: repeats, retries, "same output" stops
    tags = ", ".join(draw.sample(POOL, draw.choice([1, 5, 12, 20, len(POOL)])))
    if draw.random() < 0.3:
        tags += ", " + ", ".join(f"extra tag {i}" for i in range(draw.choice([10, 40])))
    story = ". ".join(draw.sample(STORY, draw.randint(1, 6))) + draw.choice([".", "", " <|empty|>"])
    last_line = prompt.rsplit("\n", 1)[-1]
    if last_line in ("tag:",):
        return " " + tags
    if last_line in ("long:", "short:"):
        return " " + (story if draw.random() < 0.9 else "<|empty|>") + draw.choice(["", "\ntag: " + tags])
    if last_line.startswith("tag:") or last_line.startswith("target:"):
        return (", " if last_line.startswith("tag:") else "\ntag: ") + tags + draw.choice(["", "\nlong: " + story])
    return ". " + story + "\ntag: " + tags  # continuing a caption


def reference_node(tags: str, nl: str, seed: int, tag_length: str, nl_length: str, ban: list[str], template: str):
    """The ComfyUI node's flow for plain input (no emphasis syntax), built from kgen's functions."""
    calls = []

    def fake_generate(prompt="", **kwargs):
        calls.append((prompt, kwargs))
        return prompt + fake_completion(prompt, kwargs["seed"]), 0, 0

    kgen_tipo.BAN_TAGS = ban
    original_generate, kgen_tipo.generate = kgen_tipo.generate, fake_generate
    try:
        user_map = kgen_formatter.seperate_tags([t.strip() for t in tags.split(",") if t.strip()])
        meta, operations, general, nl = kgen_tipo.parse_tipo_request(
            user_map, nl, tag_length_target=tag_length, nl_length_target=nl_length,
            generate_extra_nl_prompt=(not nl and "<|extended|>" in template) or "<|generated|>" in template,
        )
        meta["aspect_ratio"] = "1.0"
        tag_map, _ = kgen_tipo.tipo_runner(meta, operations, general, nl, temperature=0.5, seed=seed, top_p=0.95,
                                           min_p=0.05, top_k=80)
    except (IndexError, AttributeError):  # what the reference raises on such input (crash_like_reference)
        return calls, None
    finally:
        kgen_tipo.generate = original_generate
        kgen_tipo.BAN_TAGS = []
    return calls, tag_map


plain_tag = st.sampled_from([t for t in KNOWN_TAGS if "(" not in t] + POOL)
plain_caption = st.one_of(st.lists(st.sampled_from(SENTENCES), max_size=4).map(" ".join), st.sampled_from(["  ", "..."]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tags=st.lists(plain_tag, max_size=8).map(", ".join), nl=plain_caption, seed=st.integers(1, 2**40),
       tag_length=length, nl_length=length, ban=st.lists(st.sampled_from(["sky", ".*hair", "extra tag 3"]), max_size=2),
       template=st.sampled_from(list(FORMAT_PRESETS.values())))
def test_whole_run_matches_reference(tags, nl, seed, tag_length, nl_length, ban, template):
    tag_index = shared_tag_index()
    calls, tag_map = reference_node(tags, nl, seed, tag_length, nl_length, ban, template)
    request = TipoRequest(tags=tags, nl_prompt=nl, seed=seed, tag_length=tag_length, nl_length=nl_length,
                          ban_tags=tuple(ban), format=template, profile="kgen")
    runner = TipoRunner(request, tag_index)
    sent = []
    try:
        while (call := runner.next_call()) is not None:
            sent.append((call.prompt, call.sampling.seed))
            runner.feed(fake_completion(call.prompt, call.sampling.seed))
    except ReferenceFailure:
        assert tag_map is None, "we failed where the reference did not"
        assert sent == [(prompt, kwargs["seed"]) for prompt, kwargs in calls]
        return
    assert tag_map is not None, "the reference crashed but we did not"
    assert sent == [(prompt, kwargs["seed"]) for prompt, kwargs in calls]
    result = runner.result()
    assert result.prompt == kgen_formatter.apply_format(tag_map, template)
    for category, tags_of_category in result.tags.items():
        assert tags_of_category == tag_map.get(category, [])
    assert result.captions == {key: tag_map.get(key, "") for key in ("extended", "generated")}


# --- multi-line input, typed markers and literal formats: whole runs and the node's four strings ------
# kgen inserts user text as typed (profile flag raw_user_text), so a caption line `Style: ...` or a tag
# text `1girl\ntarget: <|very_long|>` reaches the model (and the parser) exactly as in the reference.

KEY_LINES = ["Style: the scene feels melancholic.", "target: <|very_long|>", "tag: 1boy, solo", "long: injected.",
             "short: x", "Note: calm scene", " target: z", "rating: explicit", "generated: y", "extended: z",
             "quality: masterpiece", ": no key", "aspect_ratio: 2.0"]
MARKERS = ["<|long|>", "<|tag_to_long|>", "<|empty|>", "<|short|>", "<|very_long|>", "<|gen_meta|>", "</s>", "<s>"]
line_text = st.one_of(st.sampled_from(SENTENCES[:7] + STORY), st.sampled_from(KEY_LINES), st.sampled_from(MARKERS))
multiline_caption = st.one_of(
    st.lists(line_text, min_size=1, max_size=5).flatmap(
        lambda lines: st.lists(st.sampled_from(["\n", "\n\n", " ", "\n "]), min_size=len(lines), max_size=len(lines))
        .map(lambda seps: "".join(sep + line for sep, line in zip(seps, lines)).lstrip(" "))),
    st.just("Her amber eyes sparkle with curiosity.\nStyle: the scene feels melancholic."),
    plain_caption,
)
multiline_tag = st.one_of(
    plain_tag,
    st.tuples(plain_tag, st.sampled_from(["\n", "\n\n"]), st.sampled_from(KEY_LINES + MARKERS)).map("".join),
    st.sampled_from(MARKERS),
)
LITERAL_FORMATS = ["masterpiece, best quality, ", "score_9, score_8_up, source_anime", "plain text\nline two",
                   "<|long| almost a placeholder", "", "  "]
any_format = st.one_of(st.sampled_from(list(FORMAT_PRESETS.values())), st.sampled_from(LITERAL_FORMATS),
                       st.just("<|general|>\n<|generated|>\n<|extended|>."))


def reference_outputs(tags: str, nl: str, seed: int, tag_length: str, nl_length: str, template: str):
    """The model calls and the ComfyUI node's four strings (docs/REFERENCE.md §4.4) for plain input (no emphasis
    syntax), from kgen's functions; None for the strings where the reference crashes."""
    user_map = kgen_formatter.seperate_tags([t.strip() for t in tags.split(",") if t.strip()])
    meta, _, general, plan_nl = kgen_tipo.parse_tipo_request(
        copy.deepcopy(user_map), nl, tag_length_target=tag_length, nl_length_target=nl_length,
        generate_extra_nl_prompt=(not nl and "<|extended|>" in template) or "<|generated|>" in template,
    )
    meta["aspect_ratio"] = "1.0"
    document = kgen_tipo.apply_tipo_prompt(meta, general, plan_nl, "short_to_tag_to_long", tag_length, True, True)
    user_prompt = kgen_formatter.apply_format(kgen_tipo.parse_tipo_result(document), template)
    calls, tag_map = reference_node(tags, nl, seed, tag_length, nl_length, [], template)
    if tag_map is None:
        return calls, None
    new_tags, caption = [], ""
    for key, value in tag_map.items():  # the node's addon: the caption visited last wins (docs/REFERENCE.md §4.4)
        if key in ("generated", "extended"):
            caption = value if key == "extended" or not caption else caption
        elif key in user_map:
            new_tags.extend(t for t in value if t not in user_map[key])
    strings = {
        "prompt": kgen_formatter.apply_format(tag_map, template),
        "user_prompt": user_prompt,
        "unformatted_prompt": tags + ", " + ", ".join(new_tags) + "\n" + caption,
        "unformatted_user_prompt": tags + nl,
    }
    return calls, (tag_map, strings)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tags=st.lists(multiline_tag, max_size=6).map(", ".join), nl=multiline_caption, seed=st.integers(1, 2**40),
       tag_length=length, nl_length=length, template=any_format)
def test_multiline_input_typed_markers_and_literal_formats_match_reference(tags, nl, seed, tag_length, nl_length,
                                                                           template):
    tag_index = shared_tag_index()
    calls, expected = reference_outputs(tags, nl, seed, tag_length, nl_length, template)
    request = TipoRequest(tags=tags, nl_prompt=nl, seed=seed, tag_length=tag_length, nl_length=nl_length,
                          format=template, profile="kgen")
    runner = TipoRunner(request, tag_index)
    sent = []
    try:
        while (call := runner.next_call()) is not None:
            assert all(is_template for _, is_template in call.segments)  # tokenised like the reference
            sent.append((call.prompt, call.sampling.seed))
            runner.feed(fake_completion(call.prompt, call.sampling.seed))
    except ReferenceFailure:
        assert expected is None, "we failed where the reference did not"
        assert sent == [(prompt, kwargs["seed"]) for prompt, kwargs in calls]
        return
    assert expected is not None, "the reference crashed but we did not"
    assert sent == [(prompt, kwargs["seed"]) for prompt, kwargs in calls]
    tag_map, strings = expected
    result = runner.result()
    assert {name: getattr(result, name) for name in strings} == strings
    for category, tags_of_category in result.tags.items():
        assert tags_of_category == tag_map.get(category, [])
    assert result.captions == {key: tag_map.get(key, "") for key in ("extended", "generated")}


def test_multiline_caption_of_the_issue_matches_reference():
    """The issue's example, one fixed case: the `Style:` line is a prompt line of its own, as typed."""
    nl = "Her amber eyes sparkle with curiosity.\nStyle: the scene feels melancholic."
    template = FORMAT_PRESETS["Both, tag first (recommend)"]
    calls, expected = reference_outputs("1girl, solo", nl, 1234, "short", "short", template)
    runner = TipoRunner(TipoRequest(tags="1girl, solo", nl_prompt=nl, seed=1234, tag_length="short",
                                    nl_length="short", format=template, profile="kgen"), shared_tag_index())
    sent = []
    while (call := runner.next_call()) is not None:
        sent.append((call.prompt, call.sampling.seed))
        runner.feed(fake_completion(call.prompt, call.sampling.seed))
    assert sent == [(prompt, kwargs["seed"]) for prompt, kwargs in calls]
    assert "\nshort: Her amber eyes sparkle with curiosity.\nStyle: the scene feels melancholic.\n" in sent[0][0]
    result = runner.result()
    assert {name: getattr(result, name) for name in expected[1]} == expected[1]
