"""The OpenAI-compatible endpoints, driven by the official `openai` client against a real server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from service.api.openai.serving import split_partial_prompt
from service.tipo.sampling import Sampling

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


def test_streamed_completion_equals_the_plain_one_with_the_engines_finish_reason_and_counts(client):
    kwargs = dict(model="tiny-test", prompt=TEMPLATE, max_tokens=16, seed=5, extra_body=TIPO_EXTRAS)
    plain = client.completions.create(**kwargs)
    pieces, finish_reasons, usage = [], [], None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish_reasons.append(choice.finish_reason)
    assert "".join(pieces) == plain.choices[0].text
    assert len([p for p in pieces if p]) > 1  # token by token, not one block
    # The last token chunk carries the engine's reason (16 tokens: the budget ended it), no extra chunk.
    assert finish_reasons[-1] == plain.choices[0].finish_reason
    assert all(reason is None for reason in finish_reasons[:-1])
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    if plain.choices[0].finish_reason == "length":
        assert plain.usage.completion_tokens == 16


def test_a_budget_end_is_length_and_counts_come_from_the_engine(client):
    answer = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=6, seed=1,
                                       extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 6


def test_token_id_prompts_are_accepted_and_equal_their_text(client, engine_thread):
    ids = engine_thread.engine.tokenizer.encode_template(TEMPLATE)
    by_text = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=8, seed=4)
    by_ids = client.completions.create(model="tiny-test", prompt=ids, max_tokens=8, seed=4)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)
    several = client.completions.create(model="tiny-test", prompt=[ids, ids[:-1]], max_tokens=4, seed=4)
    assert [c.index for c in several.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-test", prompt=[1, 99_999], max_tokens=4)
    assert bad.value.body["param"] == "prompt" and "99999" in bad.value.message


def test_stop_strings_and_ids_end_the_completion(client, engine_thread):
    free = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=24, seed=8,
                                     extra_body={"ignore_eos": True})
    text = free.choices[0].text
    cut = text[len(text) // 2:len(text) // 2 + 2]
    stopped = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=24, seed=8, stop=[cut],
                                        extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(cut)]

    # The same call straight on the engine (the server's) tells the generated ids.
    sampling = Sampling(temperature=0.5, top_p=0.95, top_k=80, min_p=0.05, repetition_penalty=1.17,
                        max_new_tokens=24, seed=8, ignore_eos=True, skip_special_tokens=True,
                        spaces_between_special_tokens=True)
    direct = engine_thread.run(engine_thread.engine.generate(TEMPLATE, sampling, "stop-ids-probe"))
    assert direct.text == text
    stop_id = direct.token_ids[6]
    first = direct.token_ids.index(stop_id)
    by_id = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=24, seed=8,
                                      extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert by_id.choices[0].finish_reason == "stop"
    assert by_id.usage.completion_tokens == first + 1  # the stop token is generated, its text is not kept
    assert text.startswith(by_id.choices[0].text)


def test_logprobs_echo_penalties_and_min_tokens(client):
    answer = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=6, seed=2, logprobs=3,
                                       echo=False, presence_penalty=0.5, frequency_penalty=0.5,
                                       extra_body={"min_tokens": 6})
    choice = answer.choices[0]
    assert answer.usage.completion_tokens == 6 and choice.finish_reason == "length"
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == choice.text
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 4 for top in logprobs.top_logprobs)  # the 3 best, and the chosen one
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[1] == len(logprobs.tokens[0])
    echoed = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=6, seed=2, echo=True,
                                       presence_penalty=0.5, frequency_penalty=0.5, extra_body={"min_tokens": 6})
    assert echoed.choices[0].text == TEMPLATE + choice.text


def test_sampling_defaults_come_from_the_models_generation_config(client, tiny_model):
    config = json.loads((tiny_model.path / "generation_config.json").read_text())
    explicit = {name: config[name] for name in ("temperature", "top_p")}
    extras = {name: config[name] for name in ("top_k", "min_p", "repetition_penalty")}
    assert explicit["temperature"] == 0.5 and extras["repetition_penalty"] == 1.17  # TIPO's, written by make-tiny
    implicit = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=12, seed=13)
    spelled = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=12, seed=13, **explicit,
                                        extra_body=extras)
    neutral = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=12, seed=13, temperature=1.0,
                                        top_p=1.0, extra_body={"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0})
    assert implicit.choices[0].text == spelled.choices[0].text
    assert implicit.choices[0].text != neutral.choices[0].text


def test_chat_reply_is_the_optimized_prompt(client, vllm_server):
    messages = [{"role": "system", "content": "You improve prompts."},
                {"role": "user", "content": "1girl, hatsune miku, smile\nShe waves at the viewer."}]
    extra = {"tag_length": "very_short", "nl_length": "very_short"}
    reply = client.chat.completions.create(model="tiny-test", messages=messages, seed=3, extra_body=extra,
                                           max_tokens=24)
    text = reply.choices[0].message.content
    same = httpx.post(f"{vllm_server}/v1/tipo", timeout=300, json={
        "tags": "1girl, hatsune miku, smile", "nl_prompt": "She waves at the viewer.", "seed": 3,
        "tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 24}).json()
    assert text == same["prompt"]
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model="tiny-test", messages=messages, seed=3, stream=True,
                                                 extra_body=extra, max_tokens=24))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs, param, code", [
    ({"max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"temperature": 5}, "temperature", "invalid_value"),
    ({"prompt": None}, "prompt", "invalid_value"),
    ({"suffix": "tail"}, "suffix", "unsupported_parameter"),
    ({"extra_body": {"best_of": 3}}, "best_of", "unsupported_parameter"),
    ({"max_tokens": 5000}, "max_tokens", "context_length_exceeded"),
    ({"prompt": "x " * 2000}, "prompt", "context_length_exceeded"),
])
def test_bad_completion_requests_are_openai_bad_requests(client, kwargs, param, code):
    kwargs = {"model": "tiny-test", "prompt": TEMPLATE, **kwargs}
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(**kwargs)
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error"
    assert bad.value.body["param"] == param and bad.value.body["code"] == code, bad.value.body


def test_bad_json_and_a_missing_prompt_are_400(vllm_server):
    broken = httpx.post(f"{vllm_server}/v1/completions", content=b'{"prompt": ', timeout=30,
                        headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    missing = httpx.post(f"{vllm_server}/v1/completions", json={"model": "tiny-test"}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"
    assert missing.json()["error"]["param"] == "prompt"


def test_an_unknown_model_is_404_model_not_found(client):
    for call in (lambda: client.completions.create(model="gpt-4", prompt=TEMPLATE, max_tokens=2),
                 lambda: client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "1girl"}])):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert missing.value.body["code"] == "model_not_found" and "tiny-test" in missing.value.message


@pytest.mark.parametrize("kwargs, param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"stop": ["\n"]}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
])
def test_chat_refuses_what_it_cannot_honour_with_400_naming_it(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": "1girl"}], **kwargs)
    assert bad.value.body["param"] == param and bad.value.body["code"] == "unsupported_parameter"


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


def test_logprobs_are_bounded_by_what_an_answer_may_carry(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-test", prompt=[TEMPLATE] * 4, n=16, max_tokens=100, logprobs=20)
    assert bad.value.body["param"] == "logprobs" and "65536" in bad.value.message
    fits = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=8, logprobs=20)
    assert len(fits.choices[0].logprobs.top_logprobs) == fits.usage.completion_tokens


async def test_the_async_client_streams_and_gets_the_same_text(vllm_server, client):
    plain = client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=10, seed=31)
    async with openai.AsyncOpenAI(base_url=f"{vllm_server}/v1", api_key="unused", timeout=300,
                                  max_retries=0) as async_client:
        stream = await async_client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=10, seed=31,
                                                       stream=True)
        text = "".join([choice.text async for chunk in stream for choice in chunk.choices])
        with pytest.raises(openai.BadRequestError):
            await async_client.completions.create(model="tiny-test", prompt=TEMPLATE, max_tokens=0)
    assert text == plain.choices[0].text
