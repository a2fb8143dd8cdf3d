"""Every case of /work/shared/tipo/vectors.json, in the kgen profile, byte for byte.

The e2e groups are replayed through TipoRunner with the recorded model outputs (each is
prompt + completion; the runner is fed the part after the prompt): every prompt, every sampling
setting including the seed, and the final strings must match.
"""

from __future__ import annotations

import random

import pytest

from service.tipo.format import apply_format
from service.tipo.parse import parse_output
from service.tipo.plan import plan_request, plan_single_operation
from service.tipo.postprocess import BanList, postprocess
from service.tipo.profile import KGEN
from service.tipo.request import TipoRequest
from service.tipo.runner import TipoRunner
from service.tipo.tags import classify
from service.tipo.template import build_prompt
from tests.shared import load_vectors


def ids(group):
    return [v["id"] for v in load_vectors(group)]


def cases(group):
    return pytest.mark.parametrize("vector", load_vectors(group), ids=ids(group))


def split_tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


@cases("template")
def test_template(vector):
    inputs = dict(vector["inputs"])
    inputs["nl"] = inputs.pop("nl_prompt")
    assert build_prompt(**inputs) == vector["expected"]


@cases("plan")
def test_plan(vector, tag_index):
    inputs, expected = vector["inputs"], vector["expected"]
    tag_map = classify(split_tags(inputs["tags"]), tag_index)
    if "operation" in inputs:
        plan = plan_single_operation(
            tag_map,
            inputs["nl_prompt"],
            inputs["operation"],
            tag_length=inputs["tag_length_target"],
            nl_length=inputs["nl_length_target"],
        )
    else:
        names = {
            "generate_extra_nl_prompt": "extra_caption",
            "tag_length_target": "tag_length",
            "nl_length_target": "nl_length",
        }
        kwargs = {names.get(key, key): value for key, value in inputs["kwargs"].items()}
        plan = plan_request(tag_map, inputs["nl_prompt"], **kwargs)
    assert list(plan.meta.items()) == list(expected["meta"].items())
    assert [op.as_list() for op in plan.operations] == expected["operations"]
    assert plan.general == expected["general"]
    assert plan.nl == expected["nl_prompt"]


@cases("classify")
def test_classify(vector, tag_index):
    assert classify(vector["inputs"]["tags"], tag_index) == vector["expected"]


@cases("parse")
def test_parse(vector, tag_index):
    parsed = parse_output(vector["inputs"]["text"], tag_index, KGEN)
    assert list(parsed.items()) == list(vector["expected"].items())


@cases("postprocess")
def test_postprocess(vector, tag_index):
    inputs = vector["inputs"]
    parsed = parse_output(inputs["text"], tag_index, KGEN)
    result = postprocess(
        parsed,
        inputs["general"],
        inputs["nl_prompt"],
        inputs["mode"],
        inputs["length"],
        BanList.of(()),
        random.Random(inputs["seed"]),
        KGEN,
    )
    assert list(result.items()) == list(vector["expected"].items())


@cases("format")
def test_format(vector):
    inputs = vector["inputs"]
    assert apply_format(inputs["tag_map"], inputs["format"], KGEN) == vector["expected"]


@cases("ban")
def test_ban(vector):
    ban = BanList.of(vector["inputs"]["ban_tags"])
    assert {tag: not ban.bans(tag) for tag in vector["inputs"]["tags"]} == vector["expected"]


# --- end to end -------------------------------------------------------------------------------------


def replay(runner: TipoRunner, expected: dict, transformers: bool = False) -> None:
    """Feed the recorded model outputs; check every prompt and sampling setting on the way."""
    for number, (call, output) in enumerate(zip(expected["model_calls"], expected["model_outputs"]), 1):
        model_call = runner.next_call()
        assert model_call is not None, f"call {number}: the runner stopped early"
        assert model_call.prompt == call["prompt"], f"call {number}: prompt"
        sampling = model_call.sampling
        sent = {
            "temperature": sampling.temperature,
            "min_p": sampling.min_p,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_new_tokens": sampling.max_new_tokens,
            "seed": sampling.seed,
        }
        assert sent == call["generate_kwargs"], f"call {number}: sampling"
        assert sampling.repetition_penalty == 1.17
        head = ("<s> " if transformers else "") + model_call.prompt
        tail = "</s>" if transformers else ""
        assert output.startswith(head) and output.endswith(tail)
        runner.feed(output[len(head) : len(output) - len(tail)])
    assert runner.next_call() is None, "the runner wants more calls than recorded"


@cases("e2e_comfy")
def test_e2e_comfy(vector, tag_index):
    inputs, expected = vector["inputs"], vector["expected"]
    request = TipoRequest(
        tags=inputs["tags"],
        nl_prompt=inputs["nl_prompt"],
        width=inputs["width"],
        height=inputs["height"],
        seed=inputs["seed"],
        tag_length=inputs["tag_length"],
        nl_length=inputs["nl_length"],
        ban_tags=tuple(tag.strip() for tag in inputs["ban_tags"].split(",") if tag.strip()),
        format=inputs["format"],
        temperature=inputs["temperature"],
        top_p=inputs["top_p"],
        min_p=inputs["min_p"],
        top_k=inputs["top_k"],
        profile="kgen",
        backend=inputs["backend_emulated"],
    )
    runner = TipoRunner(request, tag_index)
    assert runner.seed == inputs["seed"]
    replay(runner, expected, transformers=inputs["backend_emulated"] == "transformers")
    result = runner.result()
    assert result.prompt == expected["prompt"]
    assert result.user_prompt == expected["user_prompt"]
    assert result.unformatted_prompt == expected["unformatted_prompt"]
    assert result.unformatted_user_prompt == expected["unformatted_user_prompt"]
    assert len(result.calls) == len(expected["model_calls"])


@cases("e2e_comfy_operation")
def test_e2e_comfy_operation(vector, tag_index):
    inputs, expected = vector["inputs"], vector["expected"]
    request = TipoRequest(
        tags=inputs["tags"],
        nl_prompt=inputs["nl_prompt"],
        seed=inputs["seed"],
        tag_length=inputs["tag_length"],
        nl_length=inputs["nl_length"],
        operation=inputs["operation"],
        profile="kgen",
    )
    runner = TipoRunner(request, tag_index)
    replay(runner, expected)
    result = runner.result()
    assert list(result.full_map.items()) == list(expected["full_output"].items())
    assert list(result.addon_map.items()) == list(expected["addon_output"].items())


@cases("e2e_webui")
def test_e2e_webui(vector, tag_index):
    inputs, expected = vector["inputs"], vector["expected"]
    request = TipoRequest(
        tags=inputs["prompt"],
        nl_prompt=inputs["nl_prompt"],
        aspect_ratio=inputs["aspect_ratio"],
        seed=inputs["seed"],
        tag_length=inputs["tag_length"],
        nl_length=inputs["nl_length"],
        ban_tags=tuple(tag.strip() for tag in inputs["ban_tags"].split(",") if tag.strip()),
        format=inputs["format"],
        temperature=inputs["temperature"],
        top_p=inputs["top_p"],
        top_k=inputs["top_k"],
        no_formatting=inputs["no_formatting"],
        profile="kgen",
        frontend="webui",
    )
    runner = TipoRunner(request, tag_index)
    replay(runner, expected)
    assert runner.result().prompt == expected["result"]


def test_every_vector_is_covered():
    groups = {v["group"] for v in load_vectors()}
    assert groups == {
        "template", "plan", "classify", "parse", "postprocess", "format", "ban",
        "e2e_comfy", "e2e_comfy_operation", "e2e_webui",
    }
    assert len(load_vectors()) == 75
