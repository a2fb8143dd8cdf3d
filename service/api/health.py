"""Probes and metrics: GET /health/live, GET /health/ready, GET /metrics (the probes also answer HEAD).

live  — 200 while the process can serve; 503 once the engine has died or stalls (work pending, no
        progress for settings.engine_stall_s): restarting the pod is the fix.
ready — 200 only after the engine produced a real generation (warm-up) and while it stays alive and
        unstalled; 503 while loading, after a failed start, while shutting down.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from service.api.errors import error_responses
from service.api.state import ServiceState, get_state
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


class ProbeAnswer(BaseModel):
    status: str = Field(description="ok / failed (live), ready / not_ready (ready).")
    detail: str = Field(description="Why, in words.")
    model: str | None = Field(None, description="The served model (ready only).")


PROBE_RESPONSES = {200: {"model": ProbeAnswer}, 503: {"model": ProbeAnswer, "description": "Failing."}}


# HEAD: the same status without a body (uvicorn drops it); not in the OpenAPI schema, which documents GET.
@router.api_route("/health/live", methods=["HEAD"], include_in_schema=False)
@router.get("/health/live", summary="Liveness probe", responses=PROBE_RESPONSES)
async def live(state: ServiceState = Depends(get_state)) -> JSONResponse:
    ok, reason = state.liveness()
    return JSONResponse({"status": "ok" if ok else "failed", "detail": reason}, status_code=200 if ok else 503)


@router.api_route("/health/ready", methods=["HEAD"], include_in_schema=False)
@router.get("/health/ready", summary="Readiness probe: 200 once a real generation succeeded",
            responses=PROBE_RESPONSES)
async def ready(state: ServiceState = Depends(get_state)) -> JSONResponse:
    ok, reason = state.readiness()
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "detail": reason, "model": state.model_name},
        status_code=200 if ok else 503,
    )


@router.get("/metrics", summary="Prometheus metrics (API key needed when metrics_require_key)",
            response_class=PlainTextResponse, responses=error_responses(401))
async def metrics(state: ServiceState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
