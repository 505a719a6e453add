"""The web UI (/ui: static files from gateway/ui/) and the public endpoints it needs beyond the
separations API: the models and their rollouts, a job's place in the queue, the v2 pass-through
pinned to one model version (the listening room's stable and canary), and listening-room verdicts.

The page is a client like any other: everything it does goes through these and the public
/v1 and /v2 routes, with the caller's own credentials. `ui_enabled` off serves no page (the
endpoints stay: they are API). Kept in one module (with experiments/verdicts.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from musicsplit.errors import Conflict
from musicsplit.gateway.api.schemas import (E400, E401, E403, E404, E413, E429, E503, V2_INFER_RESPONSE,
                                            error_doc)
from musicsplit.gateway.experiments.verdicts import Verdict, VerdictIn, VerdictList, VerdictStore
from musicsplit.gateway.service import SeparationService, service_of
from musicsplit.gateway.storage.schema import jobs
from musicsplit.gateway.tenancy.callers import Caller, caller
from musicsplit.gateway.upstream.canaries import Canary

STATIC = Path(__file__).resolve().parents[2] / "ui"
# The page's own files and the API on this origin; progress over ws(s); presigned uploads go to a
# bucket on another origin (https, or the http S3 endpoint of a test or private network).
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
       "connect-src 'self' ws: wss: https: {extra}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

E409_VERSION = error_doc("No endpoint answered with the pinned version",
                         "no endpoint of htdemucs answered with version '4.1.0' (the last answered with 4.0.1); "
                         "GET /v1/models lists the versions of a rollout", "conflict")
E409_ROLLOUT = error_doc("No such rollout under way", "htdemucs has no rollout of stable 4.0.1 and canary 4.1.0 under "
                         "way (now: none); judge the versions GET /v1/models lists", "conflict")

router = APIRouter(responses={401: E401, 403: E403, 429: E429})
Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]


class Rollout(BaseModel):
    stable_version: str = Field(examples=["4.0.1"])
    canary_version: str = Field(examples=["4.1.0"])


class ModelInfo(BaseModel):
    name: str = Field(examples=["htdemucs"])
    ready: bool = Field(description="Some endpoint of the model is healthy now")
    rollout: Rollout | None = Field(None, description="A canary step under way (the listening room compares "
                                                      "the two versions); null otherwise")


class ModelList(BaseModel):
    models: list[ModelInfo]
    aliases: dict[str, str] = Field(description="Alias -> model; `default` is chosen per user by flags",
                                    examples=[{"fast": "htdemucs"}])
    stems_url: str = Field("/v2/models/{name}", description="Each model's stems: the `outputs` of its v2 metadata")


class QueuePlace(BaseModel):
    status: str = Field(examples=["queued"])
    position: int | None = Field(None, description="1 = next; jobs queued earlier, of any tenant, go first "
                                                   "(fair turns between tenants may reorder them); null unless "
                                                   "queued", examples=[3])
    queued: int = Field(description="Jobs waiting in all", examples=[7])


def install(app: FastAPI) -> None:
    """The UI's API routes, and the page itself unless `ui_enabled` is off."""
    app.include_router(router)
    app.openapi_tags = [*(app.openapi_tags or []), {
        "name": "listening room", "description": "Verdicts of people comparing a rollout's canary with its stable "
                                                 "by ear (the /ui listening room)"}]
    settings = app.state.settings
    if not settings.ui_enabled:
        return

    @app.get("/ui", include_in_schema=False)
    async def _ui_root():
        return RedirectResponse("/ui/", status_code=307)

    app.mount("/ui/", PageFiles(directory=STATIC, html=True, csp=CSP.format(extra=settings.s3_endpoint_url or "")),
              name="ui")


class PageFiles(StaticFiles):
    """The page's files, with headers that keep it to its own origin (and the bucket of presigned uploads)."""

    def __init__(self, *, csp: str, **kwargs):
        super().__init__(**kwargs)
        self.headers = {"Content-Security-Policy": " ".join(csp.split()), "X-Content-Type-Options": "nosniff",
                        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(self.headers)
        return response


def _rollout(service: SeparationService, model: str) -> Canary | None:
    directory = service.shadow.directory
    return directory.get(model) if directory is not None else None


def _verdicts(request: Request) -> VerdictStore:
    if getattr(request.app.state, "verdicts", None) is None:
        request.app.state.verdicts = VerdictStore(request.app.state.service.store.engine)
    return request.app.state.verdicts


@router.get("/v1/models", response_model=ModelList, tags=["separations"],
            summary="The models this gateway serves, whether they are ready, and any rollout under way")
async def list_models(service: Service, who: Calling) -> ModelList:
    """Stems per model: `GET /v2/models/{name}` (its `outputs`). A rollout is listed while the model's
    canary step serves both versions (SeparationModel status, read when shadow traffic is on)."""
    models = []
    for name in sorted(service.pool.models()):
        canary = _rollout(service, name)
        models.append(ModelInfo(
            name=name, ready=any(s.healthy and s.breaker.available() for s in service.pool.for_model(name)),
            rollout=Rollout(stable_version=canary.stable_version, canary_version=canary.canary_version)
            if canary else None))
    return ModelList(models=models, aliases=dict(service.settings.aliases))


@router.get("/v1/separations/{job_id}/queue", response_model=QueuePlace, tags=["separations"],
            responses={404: E404}, summary="A queued job's place in the queue")
async def queue_place(service: Service, who: Calling, job_id: str) -> QueuePlace:
    job = await service.job(who, job_id)  # another tenant's job: 404
    async with service.store.engine.connect() as conn:
        queued = (await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                     .where(jobs.c.status == "queued"))).scalar_one()
        if job.status != "queued":
            return QueuePlace(status=job.status, queued=queued)
        ahead = (await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
            jobs.c.status == "queued",
            sa.or_(jobs.c.created < job.created, sa.and_(jobs.c.created == job.created, jobs.c.id < job.id)))
        )).scalar_one()
    return QueuePlace(status=job.status, position=ahead + 1, queued=queued)


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"],
             responses={200: V2_INFER_RESPONSE, 400: E400, 409: E409_VERSION, 413: E413, 429: E429, 503: E503},
             summary="KServe v2 inference by one version of a model (the listening room's stable and canary)")
async def v2_infer_version(request: Request, service: Service, who: Calling, name: str, version: str):
    """As `POST /v2/models/{name}/infer`, answered by `version` only: a rollout's canary version goes
    to the canary's own URL, any other version to the model's endpoints last seen serving it. 409 if
    no endpoint answers with that version. Counts against the tenant's audio quota; never mirrored."""
    answer = await service.passthrough.infer_version(name, who, version, request.stream(), request.headers)
    return StreamingResponse(answer.body, status_code=answer.status, headers=answer.headers,
                             background=BackgroundTask(answer.release))


@router.post("/v1/verdicts", status_code=201, response_model=Verdict, tags=["listening room"],
             responses={400: E400, 409: E409_ROLLOUT}, summary="Record a listening-room verdict on a canary")
async def record_verdict(request: Request, service: Service, who: Calling, body: VerdictIn) -> Verdict:
    """Only for a rollout under way (the versions `GET /v1/models` lists for the model), so the metric's
    labels stay the versions the platform published (409 otherwise)."""
    canary = _rollout(service, body.model)
    if canary is None or (canary.stable_version, canary.canary_version) != (body.stable_version,
                                                                          body.canary_version):
        now = f"stable {canary.stable_version}, canary {canary.canary_version}" if canary else "none"
        raise Conflict(f"{body.model} has no rollout of stable {body.stable_version} and canary "
                       f"{body.canary_version} under way (now: {now}); judge the versions GET /v1/models lists")
    return await _verdicts(request).record(body, who.tenant, who.user_id)


@router.get("/v1/verdicts", response_model=VerdictList, tags=["listening room"],
            summary="Your tenant's listening-room verdicts, newest first, and their counts")
async def list_verdicts(request: Request, who: Calling,
                        model: Annotated[str | None, Query(description="Only this model's")] = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> VerdictList:
    return await _verdicts(request).list(who.tenant, model=model, limit=limit)
