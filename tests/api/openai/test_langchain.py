"""LangChain's OpenAI integration (langchain-openai) against the real service: the chat model gets the
optimized prompt, the completions model raw text, and what the service cannot honour is an error,
not a silent `None`."""

from __future__ import annotations

import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAI
from pydantic import BaseModel

TEMPLATE = "aspect_ratio: 1.0\ntarget: <|short|>\ntag: 1girl, solo"


@pytest.fixture(scope="module")
def chat(vllm_server) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{vllm_server}/v1", api_key="unused", model="tiny-test", max_retries=0, timeout=300,
                      seed=3, max_tokens=24, extra_body={"tag_length": "very_short", "nl_length": "very_short"})


def test_chat_model_answers_with_the_optimized_prompt(chat):
    reply = chat.invoke("1girl, hatsune miku, smile")
    assert reply.content and "hatsune miku" in reply.content
    assert reply.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat.stream("1girl, hatsune miku, smile"))
    assert streamed == reply.content


def test_structured_output_is_refused_not_silently_none(chat):
    class Prompt(BaseModel):
        tags: list[str]

    for method in ("function_calling", "json_mode"):
        with pytest.raises(openai.BadRequestError) as refused:
            chat.with_structured_output(Prompt, method=method).invoke("1girl")
        assert refused.value.body["code"] == "unsupported_parameter"


def test_completions_model_continues_template_text(vllm_server):
    llm = OpenAI(base_url=f"{vllm_server}/v1", api_key="unused", model="tiny-test", max_tokens=8, max_retries=0,
                 timeout=300, seed=5)
    text = llm.invoke(TEMPLATE)
    assert isinstance(text, str) and text
    assert text == llm.invoke(TEMPLATE)  # same seed, same text
