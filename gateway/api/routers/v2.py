"""/v2/models/...: the KServe v2 pass-through; `name` may be an alias (e.g. `default`) resolved per user."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from musicsplit.errors import MusicsplitError, NotReady
from musicsplit.gateway.api.schemas import (E401, E403, E400, E413, E429, E503, V2_INFER_REQUEST, V2_INFER_RESPONSE,
                                        V2_METADATA_RESPONSE, V2_READY_RESPONSE)
from musicsplit.gateway.upstream.passthrough import SpooledBody, read_head
from musicsplit.gateway.service import SeparationService, service_of
from musicsplit.gateway.tenancy.callers import Caller, caller
from musicsplit.v2client import V2Error, decode_response

# Every route here authenticates (tenancy.caller) and counts against the tenant's requests per minute.
router = APIRouter(tags=["v2"], responses={401: E401, 403: E403, 429: E429})

Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]
FORWARDED = ("content-type", "inference-header-content-length")


@router.post("/v2/models/{name}/infer", openapi_extra=V2_INFER_REQUEST,
             responses={200: V2_INFER_RESPONSE, 400: E400, 413: E413, 429: E429, 503: E503},
             summary="KServe v2 inference; `name` may be an alias (e.g. `default`) resolved per user")
async def v2_infer(request: Request, service: Service, who: Calling, name: str):
    """The body goes to a healthy predictor as sent (binary tensor extension included) with retries,
    circuit breakers and region failover; the answer streams back. It says which model, version and
    arm served it."""
    await service.quotas.audio_left(who.tenant)
    choice = service.resolve(name, who)
    service.v2_slots.take()
    body = SpooledBody(service.settings.staging_dir)
    upstream = None
    try:
        with service.upload_slots.hold(who.tenant):
            await body.fill(request, service.limits.max_bytes)
        fwd = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        start = time.perf_counter()
        try:
            routed = await service.router.forward(choice.model, "/infer", body.chunks, body.length, fwd,
                                                  fallback=service.fallback_for(who))
        except MusicsplitError as exc:
            # Bad input says nothing about the arm.
            await service.observations.v2_failed(choice, bad_input=exc.status < 500 and exc.status != 429)
            raise
        upstream = routed.value
        chunks = upstream.aiter_bytes()
        head = await read_head(upstream, chunks, service.settings.v2_max_parsed_response_bytes)
        params = head.parameters
        version = str(params.get("model_version") or routed.endpoint.version or "unknown")
        seconds = _number(params.get("audio_seconds"))
        await service.observations.v2_succeeded(choice, routed.model, version, _number(params.get("quality_score")),
                                                time.perf_counter() - start, tenant=who.tenant,
                                                audio_seconds=seconds)
        await service.quotas.add_audio(who.tenant, seconds or 0.0)
    except BaseException:
        body.close()
        if upstream is not None:
            await upstream.aclose()
        service.v2_slots.give()
        raise
    # The user's answer is ready: a sample of answers is mirrored to a canary once they have gone by.
    mirror = service.shadow.offer_v2(routed.model, params.get("model_version"), body.length)
    answer = SpooledBody(service.settings.staging_dir) if mirror else None
    if mirror is None:
        body.close()
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARDED}
    if "content-encoding" not in upstream.headers and "content-length" in upstream.headers:
        headers["content-length"] = upstream.headers["content-length"]
    headers.update({"X-Musicsplit-Model": routed.model, "X-Musicsplit-Model-Version": version,
                    "X-Musicsplit-Arm": choice.arm})
    if routed.fallback:
        headers["X-Musicsplit-Fallback"] = f"{choice.model} unavailable"

    released = False

    async def release(sent: bool = False) -> None:  # idempotent: the stream's end, or the background task
        nonlocal released
        if released:
            return
        released = True
        await upstream.aclose()
        service.v2_slots.give()
        if mirror is not None:
            if sent:  # the mirror owns the spooled request and answer from here
                answer_headers = upstream.headers
                mirror.send(lambda: (body.read_all(), fwd),
                            lambda: decode_response(answer.read_all(), answer_headers).stems,
                            answer.length, lambda: (body.close(), answer.close()))
            else:
                mirror.abandon()
                body.close()
                answer.close()

    async def relay():
        sent = False
        try:
            if head.data:
                yield head.data
                if answer is not None:
                    await answer.append(head.data)
            async for chunk in chunks:
                yield chunk
                if answer is not None:
                    await answer.append(chunk)
            sent = True
        finally:
            await release(sent)

    # The background task also runs when the client left before the stream started (relay never ran).
    return StreamingResponse(relay(), status_code=upstream.status_code, headers=headers,
                             background=BackgroundTask(release))


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


def _number(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
