"""OpenAI-compatible request and response models (/v1/completions, /v1/chat/completions, /v1/models).

Unknown fields are ignored (clients send `user`, `metadata`, ... freely), as vLLM's server does.
Sampling fields left out take the model's defaults (completions: its generation_config.json, else
OpenAI's; chat: TIPO's, as the ComfyUI node). Fields this service cannot honour are refused with a
400 that names them (serving.py), never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.tipo.protocol import TipoPromptOptions, without_lone_surrogates

MAX_STOP_SEQUENCES = 16  # each is matched against every new piece of text
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    """OpenAI's sampling fields plus vLLM's extras (top_k, min_p, repetition_penalty). Absent: the
    model's default (see the module docstring)."""

    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=32013, description="0 or -1: no top-k cut.")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="TIPO's 1.17 penalises repeated tags.")
    seed: int | None = Field(None, ge=-1, lt=2**63, description="Same seed, same output (choice i: seed + i). "
                             "Absent or -1: a random seed.")
    n: int = Field(1, ge=1, le=16, description="Choices to generate; choice i uses seed + i.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="Not supported; must be absent.")


class CompletionRequest(SamplingFields):
    model: str | None = Field(None, description="The served model's id (GET /v1/models); absent: that model.")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="TIPO template text (BOS is added) or token ids (sent as they are); a list for several.",
        examples=["aspect_ratio: 1.0\ntarget: <|short|>\ntag: 1girl, solo"])
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate; absent: what the context leaves "
                                   "(prompt + max_tokens must fit the context, else 400).")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} strings that end the "
                                         "completion (not included in the text).")
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Log-probabilities of each generated "
                                 "token and of this many alternatives.")
    echo: bool = Field(False, description="Put the prompt text before each completion.")
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = Field(True, description="vLLM's default; false keeps <s>/</s> in the text.")
    spaces_between_special_tokens: bool = True
    suffix: str | None = Field(None, description="Not supported; must be absent.")
    best_of: int | None = Field(None, description="Not supported beyond 1.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _encodable(cls, value):
        # The prompt is template text and goes to the model as given; only what UTF-8 cannot carry goes.
        if isinstance(value, str):
            return without_lone_surrogates(value)
        if isinstance(value, list):
            return [without_lone_surrogates(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES or any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences of at most {MAX_STOP_CHARS} characters")
        return value


class LogprobsResult(BaseModel):
    """OpenAI's completions logprobs: per generated token, its text, log-probability, the top
    alternatives and its offset in the choice's text."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LogprobsResult | None = None
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


class ChatCompletionRequest(SamplingFields, TipoPromptOptions):
    """The last user message is the partial prompt; TIPO's options (TipoPromptOptions: tag_length,
    nl_length, ban_tags, format, width, height, profile) may be sent as extra fields."""

    model: str | None = Field(None, description="The served model's id (GET /v1/models); absent: that model.")
    messages: list[ChatMessage] = Field(..., min_length=1, examples=[[
        {"role": "user", "content": "1girl, hatsune miku, smile\nShe stands in a park at dusk."}
    ]])
    max_tokens: int | None = Field(None, ge=1, le=8192, description="Token budget of each model call.")
    max_completion_tokens: int | None = Field(None, ge=1, le=8192, description="Alias of max_tokens.")
    # What a TIPO optimization cannot honour: refused with 400 when set (serving.py).
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None


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
