"""OpenAI-compatible request and response models (/v1/completions, /v1/chat/completions, /v1/models).

Unknown fields are ignored (clients send `user`, `metadata`, ... freely); fields whose non-default
values this service cannot honour (logprobs, echo, suffix, best_of, stop, penalties) are refused with
422 by the serving class rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.tipo.protocol import Length, ProfileName, without_lone_surrogates
from service.tipo.sampling import Sampling

_DEFAULT = Sampling()


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    """OpenAI's sampling fields plus TIPO's extras (top_k, min_p, repetition_penalty)."""

    temperature: float = Field(_DEFAULT.temperature, ge=0, le=2, description="0 = greedy.")
    top_p: float = Field(_DEFAULT.top_p, gt=0, le=1)
    top_k: int = Field(_DEFAULT.top_k, ge=-1, le=32013, description="0 or -1: no top-k cut.")
    min_p: float = Field(_DEFAULT.min_p, ge=0, le=1)
    repetition_penalty: float = Field(_DEFAULT.repetition_penalty, gt=0, le=2,
                                      description="TIPO's 1.17 penalises repeated tags.")
    seed: int | None = Field(None, ge=-1, lt=2**63, description="Same seed, same output (choice i: seed + i). "
                             "Absent or -1: a random seed.")
    n: int = Field(1, ge=1, le=16, description="Choices to generate; choice i uses seed + i.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="Not supported (TIPO stops at EOS); must be empty.")
    presence_penalty: float = Field(0.0, description="Not supported; must be 0.")
    frequency_penalty: float = Field(0.0, description="Not supported; must be 0.")
    logprobs: Any = Field(None, description="Not supported.")


class CompletionRequest(SamplingFields):
    model: str = Field("", description="Accepted for compatibility; the served model answers.")
    prompt: str | list[str] = Field(..., description="TIPO template text (BOS is added by the engine).",
                                    examples=["aspect_ratio: 1.0\ntarget: <|short|>\ntag: 1girl, solo"])
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Tokens to generate (default 512).")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _encodable(cls, value):
        # The prompt is template text and goes to the model as given; only what UTF-8 cannot carry goes.
        if isinstance(value, str):
            return without_lone_surrogates(value)
        if isinstance(value, list):
            return [without_lone_surrogates(v) if isinstance(v, str) else v for v in value]
        return value


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatContentPart(_Lenient):
    type: str = "text"
    text: str = ""


class ChatMessage(_Lenient):
    role: str
    content: str | list[ChatContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.type == "text")


class ChatCompletionRequest(SamplingFields):
    """The last user message is the partial prompt; TIPO options may be sent as extra fields."""

    model: str = Field("", description="Accepted for compatibility; the served model answers.")
    messages: list[ChatMessage] = Field(..., min_length=1, examples=[[
        {"role": "user", "content": "1girl, hatsune miku, smile\nShe stands in a park at dusk."}
    ]])
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Token budget of each model call.")
    max_completion_tokens: int | None = Field(None, ge=1, le=8192, description="Alias of max_tokens.")
    # TIPO options (same meaning as in POST /v1/tipo)
    tag_length: Length = "long"
    nl_length: Length = "long"
    ban_tags: str | list[str] = ""
    format: str | None = Field(None, description="Format preset name or template; default: the ComfyUI node's.")
    width: int = Field(1024, ge=1, le=16384)
    height: int = Field(1024, ge=1, le=16384)
    profile: ProfileName | None = None


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    finish_reason: str | None = "stop"


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tipo-service"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
