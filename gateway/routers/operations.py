"""Health probes and Prometheus metrics (no caller identity: probes and scrapers carry none)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from musicsplit.errors import NotReady
from musicsplit.gateway.schemas import E503, LIVE_RESPONSE, METRICS_RESPONSE, READY_RESPONSE
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


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", responses={200: METRICS_RESPONSE})
async def prom_metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
