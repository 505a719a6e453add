"""Health probes (no caller identity: probes carry none). /metrics is served on its own port (app.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from musicsplit.gateway.api.schemas import LIVE_RESPONSE, NOT_READY_RESPONSE, READY_RESPONSE
from musicsplit.gateway.service import SeparationService, service_of

router = APIRouter(tags=["operations"])


@router.get("/v2/health/live", summary="The gateway process is up", responses={200: LIVE_RESPONSE})
async def live():
    return {"live": True}


@router.get("/v2/health/ready", summary="Ready when this replica can take work (its job store and result store "
                                        "answer); a degraded state is listed in the body",
            responses={200: READY_RESPONSE, 503: NOT_READY_RESPONSE})
async def ready(service: Annotated[SeparationService, Depends(service_of)]):
    """Predictors down, Redis events down, the cache or Unleash down only degrade the replica: status,
    downloads and queued work go on. 503 (with Retry-After) only when its job store or result store is
    unreachable."""
    report = await service.health.check()
    if not report.ready:
        return JSONResponse({**report.body(), "error": "this replica cannot take work: " + "; ".join(report.degraded),
                             "code": "not_ready"}, status_code=503, headers={"Retry-After": "5"})
    return report.body()
