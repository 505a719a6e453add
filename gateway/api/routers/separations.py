"""/v1/separations and /v1/batches: upload, jobs, progress over WebSocket, downloads, cancel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketState

from musicsplit.errors import BadRequest, MusicsplitError, NotFound, http_payload
from musicsplit.gateway.api.ingress import SEND_FILE, Form, read_form
from musicsplit.gateway.storage.jobstore import ACTIVE, TERMINAL
from musicsplit.gateway.storage.results import Download
from musicsplit.gateway.api.schemas import (E401, E403, BATCH_REQUEST, E400, E404, E409, E413, E429, E503,
                                        REDIRECT_RESPONSE, STEM_RESPONSE, UPLOAD_REQUEST, ZIP_RESPONSE, BatchView,
                                        JobList, JobView, ProgressTicket, SeparationFields, UploadFields,
                                        batch_view, job_headers, job_view, progress_message)
from musicsplit.gateway.service import SeparationRequest, SeparationService, service_of
from musicsplit.gateway.tenancy.callers import Caller, caller, websocket_caller

# Every route here authenticates (tenancy.caller) and counts against the tenant's requests per minute.
router = APIRouter(tags=["separations"], responses={401: E401, 403: E403, 429: E429})

Service = Annotated[SeparationService, Depends(service_of)]
Calling = Annotated[Caller, Depends(caller)]
HEARTBEAT_S = 15.0
POLL_S = 1.0
STATUSES = ACTIVE + TERMINAL


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


def _fields(form: Form, model: type[UploadFields] = UploadFields) -> UploadFields:
    try:
        return model.model_validate(form.fields)
    except ValidationError as exc:
        raise BadRequest("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from None


def _request(fields: UploadFields, filename: str | None, idempotency_key: str | None = None) -> SeparationRequest:
    return SeparationRequest(model=fields.model, stems=_parse_stems(fields.stems), output_format=fields.output_format,
                             shifts=fields.shifts, idempotency_key=idempotency_key, filename=filename,
                             callback_url=fields.callback_url or None)


@router.post("/v1/separations", status_code=202, response_model=JobView, openapi_extra=UPLOAD_REQUEST,
             responses={400: E400, 404: E404, 413: E413, 429: E429, 503: E503},
             summary="Upload a track (or name a presigned upload) and start a separation job")
async def create_separation(
    request: Request,
    service: Service,
    who: Calling,
    response: Response,
    idempotency_key: Annotated[str | None, Header(description="Retried submits with the same key return "
                                                              "the same job")] = None,
) -> JobView:
    """Validates the audio (same checks as the predictor), then queues a job, or answers at once from
    the result cache. Follow it with `GET /v1/separations/{id}` or the WebSocket `progress_url`.
    Credentials and quotas are checked before the upload is read; the upload streams to disk. Send
    either `file` or `upload_id` (404 if the upload is not there: not PUT yet, expired or used)."""
    await service.admit(who, idempotency_key=idempotency_key)
    with service.upload_slots.hold(who.tenant):
        return await _create_separation(request, service, who, response, idempotency_key)


async def _create_separation(request: Request, service: SeparationService, who: Caller, response: Response,
                             idempotency_key: str | None) -> JobView:
    form = await read_form(request, service.results.staging_path, max_file_bytes=service.limits.max_bytes,
                           max_files=1, expected=f"{SEND_FILE}, or the upload_id of a presigned upload "
                                                 "(POST /v1/uploads) as a form field")
    try:
        fields = _fields(form, SeparationFields)
        upload = next((f for f in form.files if f.field == "file"), None)
        if (upload is None) == (fields.upload_id is None):
            raise BadRequest("send the audio as a multipart/form-data field named 'file', or the upload_id of a "
                             "presigned upload (POST /v1/uploads), not both")
        req = _request(fields, upload.filename if upload else None, idempotency_key)
        job = await service.submit(upload, req, who, upload_id=fields.upload_id)
    finally:
        form.discard()
    response.headers.update(job_headers(job))
    response.headers["Location"] = f"/v1/separations/{job.id}"
    return job_view(job, service.settings.results_ttl_s)


@router.post("/v1/separations/batch", status_code=202, response_model=BatchView, openapi_extra=BATCH_REQUEST,
             responses={400: E400, 413: E413, 429: E429, 503: E503},
             summary="Upload several tracks at once: one job each, one batch status")
async def create_batch(request: Request, service: Service, who: Calling) -> BatchView:
    """Files are validated one by one: a bad file is listed under `rejected` with its reason and the
    others still run. Jobs of a batch are scheduled fairly with other users' jobs."""
    await service.admit(who)
    with service.upload_slots.hold(who.tenant):
        return await _create_batch(request, service, who)


async def _create_batch(request: Request, service: SeparationService, who: Caller) -> BatchView:
    limit = service.settings.max_batch_files
    form = await read_form(request, service.results.staging_path, max_file_bytes=service.limits.max_bytes,
                           max_files=limit)
    try:
        fields = _fields(form)
        uploads = [f for f in form.files if f.field == "files"]
        if not uploads:
            raise BadRequest("files: field required (send the audio files as multipart/form-data fields named "
                             "'files')")
        batch_id = uuid.uuid4().hex
        items = [(u, _request(fields, u.filename)) for u in uploads]
        results = await service.submit_batch(items, who, batch_id)
    finally:
        form.discard()
    rejected = [{"filename": req.filename, "error": r.message, "code": r.code}
                for (_, req), r in zip(items, results) if isinstance(r, MusicsplitError)]
    view = batch_view(batch_id, await service.batch(who, batch_id), service.settings.results_ttl_s)
    view.rejected = rejected
    if not view.jobs:
        raise BadRequest("no file in the batch could be accepted: " +
                         "; ".join(f"{r['filename']}: {r['error']}" for r in rejected))
    return view


@router.get("/v1/separations", response_model=JobList, responses={400: E400},
            summary="The tenant's jobs, newest first, a page at a time")
async def list_separations(
    service: Service,
    who: Calling,
    status: Annotated[str | None, Query(description="Only jobs in this status", examples=["running"])] = None,
    user_id: Annotated[str | None, Query(description="Only jobs of this end user (X-User-Id at submit)")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> JobList:
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status {status!r} is not one of {list(STATUSES)}")
    jobs = await service.jobs(who, status=status, user_id=user_id, limit=limit, after=_cursor(cursor))
    last = jobs[-1] if len(jobs) == limit else None
    next_cursor = base64.urlsafe_b64encode(json.dumps([last.created, last.id]).encode()).decode() if last else None
    return JobList(jobs=[job_view(j, service.settings.results_ttl_s) for j in jobs], next_cursor=next_cursor)


def _cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(created), str(job_id)
    except (ValueError, TypeError):
        raise BadRequest("cursor is not one this API gave out: pass the previous page's next_cursor") from None


@router.post("/v1/separations/{job_id}/progress-ticket", status_code=201, response_model=ProgressTicket,
             responses={404: E404}, summary="A one-time ticket for the job's progress WebSocket (for browsers)")
async def progress_ticket(service: Service, who: Calling, job_id: str) -> ProgressTicket:
    """Browsers cannot set Authorization on a WebSocket: open `progress_url` (it carries the ticket)
    within the ticket's lifetime. The ticket works once."""
    ticket, expires = await service.progress_ticket(who, job_id)
    return ProgressTicket(ticket=ticket, expires_at=expires,
                          progress_url=f"/v1/separations/{job_id}/progress?ticket={ticket}")


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
            responses={200: ZIP_RESPONSE, 307: REDIRECT_RESPONSE, 404: E404, 409: E409},
            summary="Download all stems as one zip")
async def download_zip(service: Service, who: Calling, job_id: str):
    job = await service.result_job(who, job_id)
    return _download(await service.zip(job), job_headers(job))


@router.get("/v1/separations/{job_id}/stems/{stem}", response_class=FileResponse,
            responses={200: STEM_RESPONSE, 307: REDIRECT_RESPONSE, 404: E404, 409: E409},
            summary="Download one stem")
async def download_stem(service: Service, who: Calling, job_id: str, stem: str):
    job = await service.result_job(who, job_id)
    return _download(await service.stem(job, stem), job_headers(job))


@router.websocket("/v1/separations/{job_id}/progress")
async def progress(ws: WebSocket, job_id: str, ticket: str | None = None):
    """Messages `{"id", "status", "chunks_done", "chunks_total", "progress", ...}` on every change,
    until the job succeeds, fails or is cancelled; then the server closes (code 1000)."""
    service = service_of(ws)
    # Refused at the handshake, as an HTTP answer (401, 404, 429), before anything is accepted or held.
    slot = contextlib.ExitStack()
    try:
        who = await websocket_caller(service, ws.headers, ticket, job_id)
        job = await service.store.get(job_id, tenant=who.tenant)
        if job is None:
            raise NotFound(f"no separation job {job_id}")
        slot.enter_context(service.socket_slots.hold(who.tenant, job_id))
    except MusicsplitError as exc:
        status, body, headers = http_payload(exc)
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
        return
    with slot:
        await ws.accept()
        # The client leaving frees its place at once, not at the next message sent to it.
        streaming = asyncio.create_task(_stream_progress(ws, service, who, job))
        closed = asyncio.create_task(_until_closed(ws))
        try:
            await asyncio.wait({streaming, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, closed):
                task.cancel()
            await asyncio.gather(streaming, closed, return_exceptions=True)
        if streaming.done() and not streaming.cancelled() and streaming.exception() is not None:
            raise streaming.exception()


async def _until_closed(ws: WebSocket) -> None:
    """Wait for the client to close (what it sends otherwise means nothing here)."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


async def _stream_progress(ws: WebSocket, service: SeparationService, who: Caller, job) -> None:
    job_id = job.id
    try:
        async with service.events.subscribe(job_id) as updates:
            job = await service.store.get(job_id, tenant=who.tenant) or job  # what changed while subscribing
            last, sent_at = None, time.monotonic()
            while True:
                message = progress_message(job)
                if message != last:
                    await ws.send_json(message)
                    last, sent_at = message, time.monotonic()
                if job.terminal:
                    break
                # With the event bus down, updates from other replicas do not come: poll the store.
                update = await updates.next(HEARTBEAT_S if service.events.up else POLL_S)
                if update is not None:
                    job = update
                    continue
                # Nothing came: read the store (an update the bus did not deliver), and say we are here.
                job = await service.store.get(job_id, tenant=who.tenant) or job
                if progress_message(job) == last and time.monotonic() - sent_at >= HEARTBEAT_S:
                    await ws.send_json({**last, "heartbeat": True})
                    sent_at = time.monotonic()
    except WebSocketDisconnect:
        return
    if ws.application_state == WebSocketState.CONNECTED:
        await ws.close(code=1000)
