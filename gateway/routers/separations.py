"""/v1/separations and /v1/batches: upload, jobs, progress over WebSocket, downloads, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Response, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, RedirectResponse
from starlette.websockets import WebSocketState

from musicsplit.errors import BadRequest, MusicsplitError, NotFound
from musicsplit.gateway.results import Download
from musicsplit.gateway.schemas import (E400, E404, E409, E413, E429, E503, STEM_RESPONSE, ZIP_RESPONSE, BatchView,
                                        JobView, batch_view, job_headers, job_view, progress_message)
from musicsplit.gateway.service import SeparationRequest, SeparationService, service_of
from musicsplit.gateway.tenancy import Caller, caller

router = APIRouter(tags=["separations"])

Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]
HEARTBEAT_S = 15.0


def _parse_stems(stems: str | None) -> list[str] | None:
    if not stems:
        return None
    names = [s.strip() for s in stems.split(",") if s.strip()]
    for n in names:
        if not n.replace("_", "").isalnum():
            raise BadRequest(f"stem name {n!r} is not valid: give a comma-separated list such as 'vocals,drums'")
    return names or None


def _download(download: Download, headers: dict[str, str]) -> Response:
    if download.url:  # a shared result store hands out presigned URLs
        return RedirectResponse(download.url, status_code=307, headers=headers)
    return FileResponse(download.path, media_type=download.media_type, filename=download.filename, headers=headers)


@router.post("/v1/separations", status_code=202, response_model=JobView,
             responses={400: E400, 413: E413, 429: E429, 503: E503},
             summary="Upload a track and start a separation job")
async def create_separation(
    service: Service,
    who: Calling,
    response: Response,
    file: Annotated[UploadFile, File(description="The audio: wav, flac, ogg or mp3")],
    model: Annotated[str, Form(description="Model name or alias; `default` lets flags choose (A/B)")] = "default",
    stems: Annotated[str | None, Form(description="Comma-separated stems to return (default: all)",
                                      examples=["vocals,drums"])] = None,
    output_format: Annotated[str, Form(description="wav (32-bit float) or flac (24-bit)")] = "wav",
    shifts: Annotated[int | None, Form(ge=0, le=10, description="Random shifts (quality vs time)")] = None,
    idempotency_key: Annotated[str | None, Header(description="Retried submits with the same key return "
                                                              "the same job")] = None,
) -> JobView:
    """Validates the audio (same checks as the predictor), then queues a job, or answers at once from
    the result cache. Follow it with `GET /v1/separations/{id}` or the WebSocket `progress_url`."""
    data = await file.read()
    req = SeparationRequest(model=model, stems=_parse_stems(stems), output_format=output_format, shifts=shifts,
                            idempotency_key=idempotency_key, filename=file.filename)
    job = await service.submit(data, req, who)
    response.headers.update(job_headers(job))
    response.headers["Location"] = f"/v1/separations/{job.id}"
    return job_view(job, service.settings.results_ttl_s)


@router.post("/v1/separations/batch", status_code=202, response_model=BatchView,
             responses={400: E400, 413: E413, 429: E429, 503: E503},
             summary="Upload several tracks at once: one job each, one batch status")
async def create_batch(
    service: Service,
    who: Calling,
    files: Annotated[list[UploadFile], File(description="The audio files")],
    model: Annotated[str, Form()] = "default",
    stems: Annotated[str | None, Form()] = None,
    output_format: Annotated[str, Form()] = "wav",
) -> BatchView:
    """Files are validated one by one: a bad file is listed under `rejected` with its reason and the
    others still run. Jobs of a batch are scheduled fairly with other users' jobs."""
    if len(files) > service.settings.max_batch_files:
        raise BadRequest(f"{len(files)} files in one batch; send at most {service.settings.max_batch_files}")
    batch_id = uuid.uuid4().hex
    items = [(await f.read(), SeparationRequest(model=model, stems=_parse_stems(stems), output_format=output_format,
                                                filename=f.filename)) for f in files]
    results = await service.submit_batch(items, who, batch_id)
    rejected = [{"filename": req.filename, "error": r.message, "code": r.code}
                for (_, req), r in zip(items, results) if isinstance(r, MusicsplitError)]
    view = batch_view(batch_id, await service.batch(who, batch_id), service.settings.results_ttl_s)
    view.rejected = rejected
    if not view.jobs:
        raise BadRequest("no file in the batch could be accepted: " +
                         "; ".join(f"{r['filename']}: {r['error']}" for r in rejected))
    return view


@router.get("/v1/batches/{batch_id}", response_model=BatchView, responses={404: E404}, summary="Status of a batch")
async def get_batch(service: Service, who: Calling, batch_id: str) -> BatchView:
    jobs = await service.batch(who, batch_id)
    if not jobs:
        raise NotFound(f"no batch {batch_id}")
    return batch_view(batch_id, jobs, service.settings.results_ttl_s)


@router.get("/v1/separations/{job_id}", response_model=JobView, responses={404: E404},
            summary="Job status, model/version/arm, quality, warnings, cost and result links")
async def get_separation(service: Service, who: Calling, response: Response, job_id: str) -> JobView:
    job = await service.job(who, job_id)
    response.headers.update(job_headers(job))
    return job_view(job, service.settings.results_ttl_s)


@router.delete("/v1/separations/{job_id}", response_model=JobView, responses={404: E404},
               summary="Cancel a queued or running job")
async def cancel_separation(service: Service, who: Calling, response: Response, job_id: str) -> JobView:
    """Stops the job (chunks in flight are abandoned) and deletes its partial results. A job that
    already finished is returned unchanged."""
    job = await service.cancel(who, job_id)
    response.headers.update(job_headers(job))
    return job_view(job, service.settings.results_ttl_s)


@router.get("/v1/separations/{job_id}/stems.zip", response_class=FileResponse,
            responses={200: ZIP_RESPONSE, 404: E404, 409: E409}, summary="Download all stems as one zip")
async def download_zip(service: Service, who: Calling, job_id: str):
    job = await service.result_job(who, job_id)
    return _download(await service.zip(job), job_headers(job))


@router.get("/v1/separations/{job_id}/stems/{stem}", response_class=FileResponse,
            responses={200: STEM_RESPONSE, 404: E404, 409: E409}, summary="Download one stem")
async def download_stem(service: Service, who: Calling, job_id: str, stem: str):
    job = await service.result_job(who, job_id)
    return _download(await service.stem(job, stem), job_headers(job))


@router.websocket("/v1/separations/{job_id}/progress")
async def progress(ws: WebSocket, job_id: str, who: Calling):
    """Messages `{"id", "status", "chunks_done", "chunks_total", "progress", ...}` on every change,
    until the job succeeds, fails or is cancelled; then the server closes (code 1000)."""
    service = service_of(ws)
    await ws.accept()
    job = await service.store.get(job_id, tenant=who.tenant)
    if job is None:
        await ws.send_json({"error": f"no separation job {job_id}", "code": "not_found"})
        await ws.close(code=4404)
        return
    try:
        async with service.events.subscribe(job_id) as updates:
            job = await service.store.get(job_id, tenant=who.tenant) or job  # what changed while subscribing
            last = None
            while True:
                message = progress_message(job)
                if message != last:
                    await ws.send_json(message)
                    last = message
                if job.terminal:
                    break
                update = await updates.next(HEARTBEAT_S)
                if update is None:  # heartbeat; also covers an update the bus did not deliver
                    job = await service.store.get(job_id, tenant=who.tenant) or job
                    await ws.send_json({**progress_message(job), "heartbeat": True})
                else:
                    job = update
    except WebSocketDisconnect:
        return
    if ws.application_state == WebSocketState.CONNECTED:
        await ws.close(code=1000)
