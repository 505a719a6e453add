"""Health probes (no caller identity: probes carry none). /metrics is served on its own port (app.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from musicsplit.errors import NotReady
from musicsplit.gateway.schemas import E503, LIVE_RESPONSE, READY_RESPONSE
from musicsplit.gateway.service import SeparationService, service_of

router = APIRouter(tags=["operations"])


@router.get("/v2/health/live", summary="The gateway process is up", responses={200: LIVE_RESPONSE})
async def live():
    return {"live": True}


@router.get("/v2/health/ready", summary="Ready when at least one predictor endpoint is healthy",
            responses={200: READY_RESPONSE, 503: E503})
async def ready(service: Annotated[SeparationService, Depends(service_of)]):
    pool = service.pool
    if not any(s.healthy for s in pool.states):
        raise NotReady("no predictor endpoint is healthy", retry_after=5)
    return {"ready": True, "endpoints": [{"model": s.model, "region": s.region, "healthy": s.healthy,
                                          "breaker": s.breaker.state} for s in pool.states]}
