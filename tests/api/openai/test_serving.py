"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real server."""

from __future__ import annotations

import httpx
import openai
import pytest

from service.api.openai.serving import split_partial_prompt

TEMPLATE = "aspect_ratio: 1.0\ntarget: <|short|>\ntag: 1girl, solo"
TIPO_EXTRAS = {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.17}


@pytest.fixture(scope="module")
def client(vllm_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_server}/v1", api_key="unused", timeout=300, max_retries=0)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-test"]


def test_completion_with_tipo_sampling_extras_is_reproducible(client):
    kwargs = dict(model="tiny-test", prompt=TEMPLATE, max_tokens=12, temperature=0.8, seed=11, extra_body=TIPO_EXTRAS)
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert first.object == "text_completion"
    assert first.choices[0].text and first.choices[0].text == second.choices[0].text
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 1 and 0 < first.usage.completion_tokens <= 12


def test_completion_n_choices_use_seed_plus_index(client):
    several = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=8, n=2, seed=20)
    one = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=8, seed=21)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[1].text == one.choices[0].text


def test_streamed_completion_equals_the_plain_one(client):
    kwargs = dict(model="tiny-test", prompt=TEMPLATE, max_tokens=16, seed=5, extra_body=TIPO_EXTRAS)
    plain = client.completions.create(**kwargs).choices[0].text
    pieces, finish_reasons = [], []
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish_reasons.append(choice.finish_reason)
    assert "".join(pieces) == plain
    assert len([p for p in pieces if p]) > 1  # token by token, not one block
    assert finish_reasons[-1] == "stop"


def test_chat_reply_is_the_optimized_prompt(client, vllm_server):
    messages = [{"role": "system", "content": "You improve prompts."},
                {"role": "user", "content": "1girl, hatsune miku, smile\nShe waves at the viewer."}]
    extra = {"tag_length": "very_short", "nl_length": "very_short", "max_tokens": 24}
    reply = client.chat.completions.create(model="anything", messages=messages, seed=3,
                                           extra_body={k: v for k, v in extra.items() if k != "max_tokens"},
                                           max_tokens=24)
    text = reply.choices[0].message.content
    same = httpx.post(f"{vllm_server}/v1/tipo", timeout=300, json={
        "tags": "1girl, hatsune miku, smile", "nl_prompt": "She waves at the viewer.", "seed": 3,
        "tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 24}).json()
    assert text == same["prompt"]
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens > 0

    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="anything", messages=messages, seed=3, stream=True,
        extra_body={k: v for k, v in extra.items() if k != "max_tokens"}, max_tokens=24) if chunk.choices)
    assert streamed == text


def test_bad_input_is_422_with_a_message_naming_the_field(client):
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.completions.create(model="tiny-test", prompt=TEMPLATE, temperature=5)
    assert "temperature" in bad.value.message
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.completions.create(model="tiny-test", prompt=TEMPLATE, stop=["\n"])
    assert "stop" in bad.value.message


@pytest.mark.parametrize("message, tags, caption", [
    ("1girl, hatsune miku, smile", "1girl, hatsune miku, smile", ""),
    ("A girl reading a book in a quiet library", "", "A girl reading a book in a quiet library"),
    ("1girl, solo\nShe smiles. The sky is blue.", "1girl, solo", "She smiles. The sky is blue."),
    ("tags: a girl with a red umbrella\ncaption: rainy street", "a girl with a red umbrella", "rainy street"),
    ("masterpiece\n\nlooking at viewer, hand on own hip\nWhat a day!",
     "masterpiece, looking at viewer, hand on own hip", "What a day!"),
    ("", "", ""),
])
def test_chat_message_split_into_tags_and_caption(message, tags, caption):
    assert split_partial_prompt(message) == (tags, caption)
