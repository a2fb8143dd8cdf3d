"""Routes of the OpenAI-compatible API (logic in serving.py, models in protocol.py)."""

from __future__ import annotations

import inspect

from fastapi import APIRouter, Depends, Request

from service.api.errors import OPENAI_ERRORS, error_responses
from service.api.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from service.api.openai.serving import OpenAIServing, split_partial_prompt
from service.api.state import ServiceState, get_state

# API keys are checked by service.api.auth.ApiKeyGuard (a middleware) before the body is read.
router = APIRouter(prefix="/v1", tags=["openai"])


# A streamed answer (stream: true) is Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`.
STREAMED = {200: {"content": {"text/event-stream": {}}}}


@router.get("/models", response_model=ModelList, summary="The served model", responses=error_responses(401))
async def models(state: ServiceState = Depends(get_state)) -> ModelList:
    return OpenAIServing(state).models()


@router.post("/completions", response_model=CompletionResponse, summary="Complete TIPO template text "
             "(stream: true for SSE)", responses={**OPENAI_ERRORS, **STREAMED})
async def completions(body: CompletionRequest, request: Request, state: ServiceState = Depends(get_state)):
    return await OpenAIServing(state).completions(body, request)


@router.post("/chat/completions", response_model=ChatCompletionResponse, summary="The last user message is a "
             "partial prompt; the reply is the optimized prompt", responses={**OPENAI_ERRORS, **STREAMED},
             description="TIPO options (tag_length, nl_length, ban_tags, format, width, height, profile) may be sent "
             "as extra fields. The reply is one TIPO optimization (several model calls): max_tokens is the budget "
             "of each model call, usage sums every call, and stop, penalties, logprobs, response_format and tools "
             "are refused with 400 (use /v1/completions for raw model text).\n\n"
             + inspect.cleandoc(split_partial_prompt.__doc__ or ""))
async def chat_completions(body: ChatCompletionRequest, request: Request, state: ServiceState = Depends(get_state)):
    return await OpenAIServing(state).chat(body, request)
