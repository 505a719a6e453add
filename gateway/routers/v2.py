"""/v2/models/...: the KServe v2 pass-through; `name` may be an alias (e.g. `default`) resolved per user."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from musicsplit.errors import MusicsplitError, NotReady
from musicsplit.gateway.schemas import (E400, E413, E429, E503, V2_INFER_REQUEST, V2_INFER_RESPONSE,
                                        V2_METADATA_RESPONSE, V2_READY_RESPONSE)
from musicsplit.gateway.service import SeparationService, service_of
from musicsplit.gateway.tenancy import Caller, caller
from musicsplit.v2client import V2Error
from musicsplit.validation import check_size

router = APIRouter(tags=["v2"])

Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]
FORWARDED = ("content-type", "inference-header-content-length")


@router.post("/v2/models/{name}/infer", openapi_extra=V2_INFER_REQUEST,
             responses={200: V2_INFER_RESPONSE, 400: E400, 413: E413, 429: E429, 503: E503},
             summary="KServe v2 inference; `name` may be an alias (e.g. `default`) resolved per user")
async def v2_infer(request: Request, service: Service, who: Calling, name: str):
    """The body goes to a healthy predictor as sent (binary tensor extension included) with retries,
    circuit breakers and region failover. The answer says which model, version and arm served it."""
    body = await request.body()
    check_size(len(body), service.limits)
    choice = service.resolve(name, who)
    fwd = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
    start = time.perf_counter()
    try:
        routed = await service.router.forward(choice.model, "/infer", body, fwd, fallback=service.fallback_for(who))
    except MusicsplitError as exc:
        # Bad input says nothing about the arm.
        await service.observations.v2_failed(choice, bad_input=exc.status < 500 and exc.status != 429)
        raise
    upstream = routed.value
    params = _response_parameters(upstream)
    version = str(params.get("model_version") or routed.endpoint.version or "unknown")
    await service.observations.v2_succeeded(choice, routed.model, version, params.get("quality_score"),
                                            time.perf_counter() - start)
    # The user's answer is ready: a sample of answers is mirrored to a canary, in the background.
    service.shadow.offer_v2(routed.model, params.get("model_version"), body, fwd, upstream)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARDED}
    headers.update({"X-Musicsplit-Model": routed.model, "X-Musicsplit-Model-Version": version,
                    "X-Musicsplit-Arm": choice.arm})
    if routed.fallback:
        headers["X-Musicsplit-Fallback"] = f"{choice.model} unavailable"
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)


@router.get("/v2/models/{name}", summary="v2 model metadata (of the model the alias resolves to)",
            responses={200: V2_METADATA_RESPONSE, 400: E400, 503: E503})
async def v2_metadata(service: Service, who: Calling, name: str):
    choice = service.resolve(name, who)

    async def one(state):
        r = await service.router.http.get(f"{state.url}/v2/models/{state.model}", timeout=10.0)
        if r.status_code >= 500:
            raise V2Error(r.status_code, r.text)
        return r

    routed = await service.router.call(choice.model, one)
    return Response(routed.value.content, status_code=routed.value.status_code, media_type="application/json",
                    headers={"X-Musicsplit-Model": routed.model, "X-Musicsplit-Arm": choice.arm})


@router.get("/v2/models/{name}/ready", summary="Is some endpoint of the model ready",
            responses={200: V2_READY_RESPONSE, 400: E400, 503: E503})
async def v2_model_ready(service: Service, who: Calling, name: str):
    choice = service.resolve(name, who)
    if any(s.healthy and s.breaker.available() for s in service.pool.for_model(choice.model)):
        return {"name": choice.model, "ready": True}
    raise NotReady(f"no endpoint of {choice.model} is ready", retry_after=service.pool.retry_after(choice.model) or 5)


def _response_parameters(response) -> dict:
    """`parameters` of a v2 response (JSON, or the JSON header of a binary one)."""
    try:
        length = response.headers.get("inference-header-content-length")
        raw = response.content[: int(length)] if length else response.content
        return json.loads(raw).get("parameters", {}) or {}
    except (ValueError, AttributeError):
        return {}
