"""/v2/models/...: the KServe v2 pass-through; `name` may be an alias (e.g. `default`) resolved per user.

The routes authenticate and answer; the pass-through itself is upstream/passthrough.py (PassThrough)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from musicsplit.gateway.api.schemas import (E401, E403, E400, E413, E429, E503, V2_INFER_REQUEST, V2_INFER_RESPONSE,
                                        V2_METADATA_RESPONSE, V2_READY_RESPONSE)
from musicsplit.gateway.service import SeparationService, service_of
from musicsplit.gateway.tenancy.callers import Caller, caller

# Every route here authenticates (tenancy.caller) and counts against the tenant's requests per minute.
router = APIRouter(tags=["v2"], responses={401: E401, 403: E403, 429: E429})

Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]


@router.post("/v2/models/{name}/infer", openapi_extra=V2_INFER_REQUEST,
             responses={200: V2_INFER_RESPONSE, 400: E400, 413: E413, 429: E429, 503: E503},
             summary="KServe v2 inference; `name` may be an alias (e.g. `default`) resolved per user")
async def v2_infer(request: Request, service: Service, who: Calling, name: str):
    """The body goes to a healthy predictor as sent (binary tensor extension included) with retries,
    circuit breakers and region failover; the answer streams back. It says which model, version and
    arm served it."""
    answer = await service.passthrough.infer(name, who, request.stream(), request.headers)
    # The background task also runs when the client left before the stream started (the body never ran).
    return StreamingResponse(answer.body, status_code=answer.status, headers=answer.headers,
                             background=BackgroundTask(answer.release))


@router.get("/v2/models/{name}", summary="v2 model metadata (of the model the alias resolves to)",
            responses={200: V2_METADATA_RESPONSE, 400: E400, 503: E503})
async def v2_metadata(service: Service, who: Calling, name: str):
    meta = await service.passthrough.metadata(name, who)
    return Response(meta.content, status_code=meta.status, media_type="application/json", headers=meta.headers)


@router.get("/v2/models/{name}/ready", summary="Is some endpoint of the model ready",
            responses={200: V2_READY_RESPONSE, 400: E400, 503: E503})
async def v2_model_ready(service: Service, who: Calling, name: str):
    return {"name": service.passthrough.ready(name, who), "ready": True}
