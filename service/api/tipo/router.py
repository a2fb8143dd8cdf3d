"""Routes of the structured TIPO API (logic in serving.py, models in protocol.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.errors import GENERATION_ERRORS
from service.api.state import ServiceState, get_state
from service.api.tipo.protocol import TipoBatchBody, TipoBatchResponse, TipoRequestBody, TipoResponse
from service.api.tipo.serving import TipoServing

# API keys are checked by service.api.auth.ApiKeyGuard (a middleware) before the body is read.
router = APIRouter(prefix="/v1", tags=["tipo"], responses=GENERATION_ERRORS)


@router.post("/tipo", response_model=TipoResponse, response_model_exclude_none=True,
             summary="Optimize one prompt with TIPO")
async def tipo(body: TipoRequestBody, request: Request, state: ServiceState = Depends(get_state)) -> TipoResponse:
    return await TipoServing(state).tipo(body, request)


@router.post("/tipo/batch", response_model=TipoBatchResponse, response_model_exclude_none=True,
             summary="Optimize many prompts, n variants each (variant i uses seed + i)")
async def tipo_batch(body: TipoBatchBody, request: Request,
                     state: ServiceState = Depends(get_state)) -> TipoBatchResponse:
    return await TipoServing(state).batch(body, request)
