"""Routes of the structured TIPO API (logic in serving.py, models in protocol.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.errors import GENERATION_ERRORS, error_responses
from service.api.state import ServiceState, get_state
from service.api.tipo.protocol import (
    TipoBatchBody,
    TipoBatchResponse,
    TipoFormatBody,
    TipoFormatResponse,
    TipoRequestBody,
    TipoResponse,
)
from service.api.tipo.serving import TipoServing

# API keys are checked by service.api.auth.ApiKeyGuard (a middleware) before the body is read.
router = APIRouter(prefix="/v1", tags=["tipo"])


@router.post("/tipo", response_model=TipoResponse, response_model_exclude_none=True, responses=GENERATION_ERRORS,
             summary="Optimize one prompt with TIPO")
async def tipo(body: TipoRequestBody, request: Request, state: ServiceState = Depends(get_state)) -> TipoResponse:
    return await TipoServing(state).tipo(body, request)


@router.post("/tipo/batch", response_model=TipoBatchResponse, response_model_exclude_none=True,
             responses=GENERATION_ERRORS,
             summary="Optimize many prompts, n variants each (variant i uses seed + i)")
async def tipo_batch(body: TipoBatchBody, request: Request,
                     state: ServiceState = Depends(get_state)) -> TipoBatchResponse:
    return await TipoServing(state).batch(body, request)


@router.post("/tipo/format", response_model=TipoFormatResponse, responses=error_responses(400, 401, 413, 422, 503),
             summary="Format a single operation's output (ComfyUI 'TIPO Format' node; no model call)")
async def tipo_format(body: TipoFormatBody, state: ServiceState = Depends(get_state)) -> TipoFormatResponse:
    return await TipoServing(state).format(body)
