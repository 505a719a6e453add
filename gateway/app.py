"""The gateway's HTTP and WebSocket API (FastAPI).

Users are identified by the `X-User-Id` header set by the product's auth
proxy in front of the gateway; flags assign models and A/B arms by it.
Every response about a separation says the model, version and arm (in the
body and in X-Musicsplit-* headers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Request, Response, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketState

from musicsplit.errors import BadRequest, Conflict, MusicsplitError, NotFound, NotReady, PayloadTooLarge, http_payload
from musicsplit.gateway import metrics
from musicsplit.gateway.jobs import Job
from musicsplit.gateway.service import EXPLICIT_ARM, Request as SepRequest, SeparationService
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.telemetry import extract
from musicsplit.v2client import V2Error
from musicsplit.validation import check_size

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")

JOB_ID = "3f2b9c0e8d7a4b6f9e1d2c3b4a5f6e7d"

# -- documented shapes ---------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and what to do about it")
    code: str = Field(description="Stable machine-readable code (bad_audio, bad_request, payload_too_large, "
                                  "saturated, not_ready, upstream_unavailable, not_found, conflict)")


def _err(description: str, message: str, code: str, retry: bool = False) -> dict:
    doc: dict[str, Any] = {"model": ErrorBody, "description": description,
                           "content": {"application/json": {"example": {"error": message, "code": code}}}}
    if retry:
        doc["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again",
                                          "schema": {"type": "integer"}}}
    return doc


E400 = _err("Bad input: the message says what to fix",
            "sample rate 8000 Hz is below the minimum of 16000 Hz; send audio sampled at 16 kHz or more "
            "(44.1 kHz is best)", "bad_audio")
E404 = _err("No such job", f"no separation job {JOB_ID}", "not_found")
E409 = _err("The job has no result (yet)", "job 3f2b... is running (3/8 chunks); wait until it succeeds",
            "conflict")
E413 = _err("Upload over the size limit", "request is 262144000 bytes, over the limit of 209715200 bytes; "
            "split the track or use the gateway's chunked jobs", "payload_too_large")
E429 = _err("Queue full: come back after Retry-After seconds", "64 jobs are waiting; try again shortly",
            "saturated", retry=True)
E503 = _err("No predictor can take the request now", "no predictor for model 'htdemucs' is answering right "
            "now; try again later", "upstream_unavailable", retry=True)


class Progress(BaseModel):
    chunks_done: int = Field(examples=[3])
    chunks_total: int = Field(examples=[8])
    fraction: float = Field(examples=[0.375])


class JobView(BaseModel):
    id: str = Field(examples=[JOB_ID])
    status: str = Field(description="queued | running | succeeded | failed | cancelled | expired",
                        examples=["succeeded"])
    model: str = Field(examples=["htdemucs"])
    model_version: str | None = Field(None, examples=["4.0.1"])
    arm: str = Field(description="A/B arm ('control' outside an experiment, 'explicit' when the caller named "
                                 "the model)", examples=["control"])
    batch_id: str | None = None
    filename: str | None = Field(None, examples=["song.flac"])
    created: float = Field(examples=[1764030000.0])
    finished: float | None = None
    expires_at: float | None = Field(None, description="When the results are deleted (unix time)")
    progress: Progress
    cached: bool = Field(False, description="Answered from the result cache")
    quality_score: float | None = Field(None, description="Reference-free quality proxy, 0..1", examples=[0.93])
    warnings: list[str] = Field(default_factory=list, examples=[["mono_upmixed: mono input was duplicated to stereo"]])
    audio_seconds: float | None = Field(None, examples=[215.4])
    compute_seconds: float | None = Field(None, examples=[9.8])
    cost_usd: float | None = Field(None, examples=[0.0028])
    error: ErrorBody | None = None
    stems: dict[str, str] = Field(default_factory=dict, description="Stem name -> download URL",
                                  examples=[{"vocals": f"/v1/separations/{JOB_ID}/stems/vocals"}])
    zip_url: str | None = Field(None, examples=[f"/v1/separations/{JOB_ID}/stems.zip"])
    progress_url: str = Field(examples=[f"/v1/separations/{JOB_ID}/progress"])


class BatchView(BaseModel):
    batch_id: str = Field(examples=["b7e1c2d3a4f5e6d7c8b9a0f1e2d3c4b5"])
    status: str = Field(description="running until every job is terminal, then succeeded / partial / failed",
                        examples=["running"])
    counts: dict[str, int] = Field(examples=[{"queued": 2, "running": 1, "succeeded": 5}])
    jobs: list[JobView]
    rejected: list[dict] = Field(default_factory=list, description="Files refused at upload, with the reason",
                                 examples=[[{"filename": "notes.txt", "error": "could not decode the audio ...",
                                             "code": "bad_audio"}]])


def job_view(job: Job, settings: GatewaySettings) -> JobView:
    r = job.result or {}
    base = f"/v1/separations/{job.id}"
    done = job.status == "succeeded"
    return JobView(
        id=job.id, status=job.status, model=job.model, model_version=job.model_version,
        arm=job.arm or EXPLICIT_ARM, batch_id=job.batch_id, filename=job.filename, created=job.created,
        finished=job.finished,
        expires_at=(job.finished + settings.results_ttl_s) if job.finished and job.status != "expired" else None,
        progress=Progress(chunks_done=job.chunks_done, chunks_total=job.chunks_total, fraction=round(job.progress, 4)),
        cached=job.cached, quality_score=r.get("quality_score"),
        warnings=r.get("warnings", r.get("input_warnings", [])),
        audio_seconds=r.get("audio_seconds"), compute_seconds=r.get("compute_seconds"), cost_usd=r.get("cost_usd"),
        error=ErrorBody(error=job.error, code=job.error_code or "failed") if job.error else None,
        stems={s: f"{base}/stems/{s}" for s in r.get("stems", [])} if done else {},
        zip_url=f"{base}/stems.zip" if done else None,
        progress_url=f"{base}/progress",
    )


def _headers(job: Job) -> dict[str, str]:
    return {"X-Musicsplit-Model": job.model, "X-Musicsplit-Model-Version": job.model_version or "unknown",
            "X-Musicsplit-Arm": job.arm or EXPLICIT_ARM}


def _parse_stems(stems: str | None) -> list[str] | None:
    if not stems:
        return None
    names = [s.strip() for s in stems.split(",") if s.strip()]
    for n in names:
        if not n.replace("_", "").isalnum():
            raise BadRequest(f"stem name {n!r} is not valid: give a comma-separated list such as 'vocals,drums'")
    return names or None


def create_app(settings: GatewaySettings | None = None, service: SeparationService | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service or SeparationService(settings)
        app.state.service = svc
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(
        title="musicsplit gateway",
        version="1.0.0",
        description=(
            "Music source separation (Demucs) as a service: upload a track, follow the job, download stems. "
            "Long tracks are cut into overlapping chunks separated concurrently. Also a KServe v2 "
            "pass-through (`/v2/models/{name}/infer`) where `name` may be an alias such as `default`.\n\n"
            "Identify the user with `X-User-Id` (model choice and A/B arms are sticky per user). "
            "Every error is `{\"error\": ..., \"code\": ...}`; 429 and 503 carry `Retry-After`.\n\n"
            "Progress: WebSocket `GET /v1/separations/{id}/progress` (the job's `progress_url`) sends "
            "`{\"id\", \"status\", \"chunks_done\", \"chunks_total\", \"progress\", \"model\", "
            "\"model_version\", \"arm\"}` on every chunk, then closes with code 1000 when the job succeeds, "
            "fails (an `error` object is included) or is cancelled; an unknown job gets `{\"code\": "
            "\"not_found\"}` and close code 4404."
        ),
        lifespan=lifespan,
        openapi_tags=[{"name": "separations", "description": "Upload, jobs, progress, results"},
                      {"name": "v2", "description": "KServe Open Inference Protocol v2 pass-through"},
                      {"name": "operations", "description": "Health and metrics"}],
    )
    app.state.settings = settings

    def svc(request: Request | WebSocket) -> SeparationService:
        return request.app.state.service

    @app.exception_handler(MusicsplitError)
    async def _musicsplit_error(_request, exc: MusicsplitError):
        status, body, headers = http_payload(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "header", "path"))
            problems.append(f"{where or 'request'}: {e.get('msg')}")
        message = "; ".join(problems) or "the request is malformed"
        if any(e.get("loc", [None])[-1] == "file" for e in exc.errors()):
            message += " (send the audio as a multipart/form-data field named 'file')"
        return JSONResponse({"error": message, "code": "bad_request"}, status_code=400)

    @app.middleware("http")
    async def _trace_and_limit(request: Request, call_next):
        # Refuse oversize bodies from their Content-Length, before reading them.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_request_bytes + 1024 * 1024:
            try:
                check_size(int(length), settings.limits())
            except PayloadTooLarge as exc:
                status, body, headers = http_payload(exc)
                return JSONResponse(body, status_code=status, headers=headers)
        ctx = extract(request.headers)
        with tracer.start_as_current_span(request.method, context=ctx, kind=trace.SpanKind.SERVER,
                                          attributes={"http.method": request.method,
                                                      "http.target": request.url.path}) as span:
            response = await call_next(request)
            route = request.scope.get("route")
            if route is not None:  # the route template, not the path: span names stay few
                span.update_name(f"{request.method} {route.path}")
                span.set_attribute("http.route", route.path)
            span.set_attribute("http.status_code", response.status_code)
            return response

    # -- separations -------------------------------------------------------------------------

    def _get(request: Request, job_id: str) -> Job:
        job = svc(request).store.get(job_id)
        if job is None:
            raise NotFound(f"no separation job {job_id}; it may have been mistyped (ids are 32 hex characters)")
        return job

    @app.post("/v1/separations", tags=["separations"], status_code=202, response_model=JobView,
              responses={400: E400, 413: E413, 429: E429, 503: E503},
              summary="Upload a track and start a separation job")
    async def create_separation(
        request: Request,
        response: Response,
        file: Annotated[UploadFile, File(description="The audio: wav, flac, ogg or mp3")],
        model: Annotated[str, Form(description="Model name or alias; `default` lets flags choose (A/B)")] = "default",
        stems: Annotated[str | None, Form(description="Comma-separated stems to return (default: all)",
                                          examples=["vocals,drums"])] = None,
        output_format: Annotated[str, Form(description="wav (32-bit float) or flac (24-bit)")] = "wav",
        shifts: Annotated[int | None, Form(ge=0, le=10, description="Random shifts (quality vs time)")] = None,
        x_user_id: Annotated[str | None, Header(description="The end user (sticky model/A-B assignment)")] = None,
        idempotency_key: Annotated[str | None, Header(description="Retried submits with the same key return "
                                                                  "the same job")] = None,
    ) -> JobView:
        """Validates the audio (same checks as the predictor), then queues a job, or answers at once from
        the result cache. Follow it with `GET /v1/separations/{id}` or the WebSocket `progress_url`."""
        data = await file.read()
        req = SepRequest(model=model, stems=_parse_stems(stems), output_format=output_format, shifts=shifts,
                         user_id=x_user_id, idempotency_key=idempotency_key, filename=file.filename)
        job = await svc(request).submit(data, req)
        response.headers.update(_headers(job))
        response.headers["Location"] = f"/v1/separations/{job.id}"
        return job_view(job, settings)

    @app.post("/v1/separations/batch", tags=["separations"], status_code=202, response_model=BatchView,
              responses={400: E400, 413: E413, 429: E429, 503: E503},
              summary="Upload several tracks at once: one job each, one batch status")
    async def create_batch(
        request: Request,
        files: Annotated[list[UploadFile], File(description="The audio files")],
        model: Annotated[str, Form()] = "default",
        stems: Annotated[str | None, Form()] = None,
        output_format: Annotated[str, Form()] = "wav",
        x_user_id: Annotated[str | None, Header()] = None,
    ) -> BatchView:
        """Files are validated one by one: a bad file is listed under `rejected` with its reason and the
        others still run. Jobs of a batch are scheduled fairly with other users' jobs."""
        if len(files) > settings.max_batch_files:
            raise BadRequest(f"{len(files)} files in one batch; send at most {settings.max_batch_files}")
        batch_id = uuid.uuid4().hex
        items = []
        for f in files:
            items.append((await f.read(), SepRequest(model=model, stems=_parse_stems(stems),
                                                     output_format=output_format, user_id=x_user_id,
                                                     filename=f.filename)))
        results = await svc(request).submit_batch(items, batch_id)
        rejected = [{"filename": req.filename, "error": r.message, "code": r.code}
                    for (_, req), r in zip(items, results) if isinstance(r, MusicsplitError)]
        view = _batch_view(request, batch_id)
        view.rejected = rejected
        if not view.jobs:
            raise BadRequest("no file in the batch could be accepted: " +
                             "; ".join(f"{r['filename']}: {r['error']}" for r in rejected))
        return view

    def _batch_view(request: Request, batch_id: str) -> BatchView:
        jobs = svc(request).store.batch(batch_id)
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        if any(not j.terminal for j in jobs):
            status = "running"
        elif jobs and all(j.status == "succeeded" for j in jobs):
            status = "succeeded"
        elif any(j.status == "succeeded" for j in jobs):
            status = "partial"
        else:
            status = "failed"
        return BatchView(batch_id=batch_id, status=status, counts=counts,
                         jobs=[job_view(j, settings) for j in jobs])

    @app.get("/v1/batches/{batch_id}", tags=["separations"], response_model=BatchView, responses={404: E404},
             summary="Status of a batch")
    async def get_batch(request: Request, batch_id: str) -> BatchView:
        view = _batch_view(request, batch_id)
        if not view.jobs:
            raise NotFound(f"no batch {batch_id}")
        return view

    @app.get("/v1/separations/{job_id}", tags=["separations"], response_model=JobView, responses={404: E404},
             summary="Job status, model/version/arm, quality, warnings, cost and result links")
    async def get_separation(request: Request, response: Response, job_id: str) -> JobView:
        job = _get(request, job_id)
        response.headers.update(_headers(job))
        return job_view(job, settings)

    @app.delete("/v1/separations/{job_id}", tags=["separations"], response_model=JobView,
                responses={404: E404}, summary="Cancel a queued or running job")
    async def cancel_separation(request: Request, response: Response, job_id: str) -> JobView:
        """Stops the job (chunks in flight are abandoned) and deletes its partial results. A job that
        already finished is returned unchanged."""
        _get(request, job_id)
        job = await svc(request).cancel(job_id)
        response.headers.update(_headers(job))
        return job_view(job, settings)

    def _result_job(request: Request, job_id: str) -> Job:
        job = _get(request, job_id)
        if job.status == "expired":
            raise NotFound(f"the results of job {job_id} were deleted after the retention time; submit it again")
        if job.status != "succeeded":
            raise Conflict(f"job {job_id} is {job.status} ({job.chunks_done}/{job.chunks_total} chunks); "
                           "stems exist once it has succeeded")
        return job

    @app.get("/v1/separations/{job_id}/stems.zip", tags=["separations"], response_class=FileResponse,
             responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "All stems in one zip (vocals.wav, drums.wav, ...)"},
                        404: E404, 409: E409},
             summary="Download all stems as one zip")
    async def download_zip(request: Request, job_id: str):
        job = _result_job(request, job_id)
        path = await asyncio.to_thread(svc(request).zip_path, job)
        return FileResponse(path, media_type="application/zip", filename=f"{job_id}-stems.zip",
                            headers=_headers(job))

    @app.get("/v1/separations/{job_id}/stems/{stem}", tags=["separations"], response_class=FileResponse,
             responses={200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
                                          "audio/flac": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "One stem, in the job's output format"},
                        404: E404, 409: E409},
             summary="Download one stem")
    async def download_stem(request: Request, job_id: str, stem: str):
        job = _result_job(request, job_id)
        stems = job.result.get("stems", [])
        if stem not in stems:
            raise NotFound(f"job {job_id} has no stem {stem!r}; it has {stems}")
        ext = job.result.get("output_format", "wav")
        path = svc(request).job_dir(job_id) / "stems" / f"{stem}.{ext}"
        return FileResponse(path, media_type=f"audio/{ext}", filename=f"{stem}.{ext}", headers=_headers(job))

    @app.websocket("/v1/separations/{job_id}/progress")
    async def progress(ws: WebSocket, job_id: str):
        """Messages `{"id", "status", "chunks_done", "chunks_total", "progress", ...}` on every change,
        until the job succeeds, fails or is cancelled; then the server closes (code 1000)."""
        service_ = svc(ws)
        await ws.accept()
        job = service_.store.get(job_id)
        if job is None:
            await ws.send_json({"error": f"no separation job {job_id}", "code": "not_found"})
            await ws.close(code=4404)
            return
        queue = service_.subscribe(job_id)
        try:
            last = None
            while True:
                message = _progress_message(job)
                if message != last:
                    await ws.send_json(message)
                    last = message
                if job.terminal:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), timeout=15.0)
                except asyncio.TimeoutError:
                    job = service_.store.get(job_id)  # heartbeat; also covers a missed event
                    await ws.send_json({**_progress_message(job), "heartbeat": True})
        except WebSocketDisconnect:
            return
        finally:
            service_.unsubscribe(job_id, queue)
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.close(code=1000)

    def _progress_message(job: Job) -> dict:
        msg = {"id": job.id, "status": job.status, "chunks_done": job.chunks_done, "chunks_total": job.chunks_total,
               "progress": round(job.progress, 4), "model": job.model, "model_version": job.model_version,
               "arm": job.arm or EXPLICIT_ARM}
        if job.error:
            msg["error"] = {"error": job.error, "code": job.error_code}
        if job.status == "succeeded":
            msg["result_url"] = f"/v1/separations/{job.id}"
        return msg

    # -- v2 pass-through ---------------------------------------------------------------------

    @app.post("/v2/models/{name}/infer", tags=["v2"],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"example": {
                  "inputs": [{"name": "audio", "datatype": "FP32", "shape": [2, 4],
                              "data": [0.0, 0.1, 0.2, 0.1, 0.0, 0.1, 0.2, 0.1],
                              "parameters": {"sample_rate": 44100}}],
                  "parameters": {"stems": "vocals", "output_format": "fp32"}}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                               "description": "JSON header + binary tensors (binary data "
                                                              "extension; set Inference-Header-Content-Length)"}}}},
              responses={200: {"description": "The predictor's v2 response, unchanged (JSON, or JSON + binary "
                                              "tensors with Inference-Header-Content-Length)",
                               "content": {"application/json": {"example": {
                                   "model_name": "htdemucs", "model_version": "4.0.1",
                                   "outputs": [{"name": "vocals", "datatype": "FP32", "shape": [2, 4],
                                                "data": [0.0, 0.05, 0.1, 0.05, 0.0, 0.05, 0.1, 0.05]}],
                                   "parameters": {"model_version": "4.0.1", "quality_score": 0.93,
                                                  "warnings": "", "cost_usd": 1.2e-05}}}}},
                         400: E400, 413: E413, 429: E429, 503: E503},
              summary="KServe v2 inference; `name` may be an alias (e.g. `default`) resolved per user")
    async def v2_infer(request: Request, name: str, x_user_id: Annotated[str | None, Header()] = None):
        """The body goes to a healthy predictor as sent (binary tensor extension included) with retries,
        circuit breakers and region failover. The answer says which model, version and arm served it."""
        service_ = svc(request)
        body = await request.body()
        check_size(len(body), settings.limits())
        choice = service_.resolve(name, x_user_id)
        fwd = {k: v for k, v in request.headers.items()
               if k.lower() in ("content-type", "inference-header-content-length")}
        start = time.perf_counter()
        try:
            routed = await service_.router.forward(choice.model, "/infer", body, fwd,
                                                   fallback=service_.fallback_for(x_user_id))
        except MusicsplitError as exc:
            outcome = "bad_input" if exc.status < 500 and exc.status != 429 else "failure"
            metrics.V2_REQUESTS.labels(model=choice.model, model_version="unknown", arm=choice.arm,
                                       outcome=outcome).inc()
            if outcome == "failure":  # bad input says nothing about the arm
                service_.store.record_observation(choice.arm, choice.model, None, "failure", None, None)
            raise
        upstream = routed.value
        params = _response_parameters(upstream)
        version = str(params.get("model_version") or routed.endpoint.version or "unknown")
        latency = time.perf_counter() - start
        quality = params.get("quality_score")
        metrics.V2_REQUESTS.labels(model=routed.model, model_version=version, arm=choice.arm, outcome="success").inc()
        metrics.V2_SECONDS.labels(model=routed.model, arm=choice.arm).observe(latency)
        if quality is not None:
            metrics.QUALITY.labels(model=routed.model, model_version=version, arm=choice.arm).observe(float(quality))
        service_.store.record_observation(choice.arm, routed.model, version, "success", quality, latency)
        headers = {k: v for k, v in upstream.headers.items()
                   if k.lower() in ("content-type", "inference-header-content-length")}
        headers.update({"X-Musicsplit-Model": routed.model, "X-Musicsplit-Model-Version": str(version),
                        "X-Musicsplit-Arm": choice.arm})
        if routed.fallback:
            headers["X-Musicsplit-Fallback"] = f"{choice.model} unavailable"
        return Response(upstream.content, status_code=upstream.status_code, headers=headers)

    @app.get("/v2/models/{name}", tags=["v2"], summary="v2 model metadata (of the model the alias resolves to)",
             responses={200: {"content": {"application/json": {"example": {
                 "name": "htdemucs", "versions": None, "platform": "",
                 "inputs": [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}],
                 "outputs": [{"name": s, "datatype": "FP32", "shape": [-1, -1]}
                             for s in ("drums", "bass", "other", "vocals")]}}}},
                 400: E400, 503: E503})
    async def v2_metadata(request: Request, name: str, x_user_id: Annotated[str | None, Header()] = None):
        service_ = svc(request)
        choice = service_.resolve(name, x_user_id)

        async def one(state):
            r = await service_.router.http.get(f"{state.url}/v2/models/{state.model}", timeout=10.0)
            if r.status_code >= 500:
                raise V2Error(r.status_code, r.text)
            return r

        routed = await service_.router.call(choice.model, one)
        return Response(routed.value.content, status_code=routed.value.status_code,
                        media_type="application/json",
                        headers={"X-Musicsplit-Model": routed.model, "X-Musicsplit-Arm": choice.arm})

    @app.get("/v2/models/{name}/ready", tags=["v2"], summary="Is some endpoint of the model ready",
             responses={200: {"content": {"application/json": {"example": {"name": "htdemucs", "ready": True}}}},
                        400: E400, 503: E503})
    async def v2_model_ready(request: Request, name: str, x_user_id: Annotated[str | None, Header()] = None):
        service_ = svc(request)
        choice = service_.resolve(name, x_user_id)
        if any(s.healthy and s.breaker.available() for s in service_.pool.for_model(choice.model)):
            return {"name": choice.model, "ready": True}
        raise NotReady(f"no endpoint of {choice.model} is ready", retry_after=service_.pool.retry_after(choice.model) or 5)

    @app.get("/v2/health/live", tags=["operations"], summary="The gateway process is up",
             responses={200: {"content": {"application/json": {"example": {"live": True}}}}})
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["operations"], summary="Ready when at least one predictor endpoint is healthy",
             responses={200: {"content": {"application/json": {"example": {"ready": True, "endpoints": [
                 {"model": "htdemucs", "region": "eu-west", "healthy": True, "breaker": "closed"},
                 {"model": "htdemucs", "region": "us-east", "healthy": False, "breaker": "open"}]}}}},
                 503: E503})
    async def ready(request: Request):
        pool = svc(request).pool
        healthy = [s for s in pool.states if s.healthy]
        if not healthy:
            raise NotReady("no predictor endpoint is healthy", retry_after=5)
        return {"ready": True, "endpoints": [{"model": s.model, "region": s.region, "healthy": s.healthy,
                                              "breaker": s.breaker.state} for s in pool.states]}

    @app.get("/metrics", tags=["operations"], response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"example": 'musicsplit_gateway_jobs_total{arm="control",'
                                                                  'model="htdemucs",model_version="4.0.1",'
                                                                  'outcome="success"} 42.0\n'}}}})
    async def prom_metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags)
            for ops in schema["paths"].values():
                for op in ops.values():
                    # Request validation errors are answered 400 (see _validation_error), never 422.
                    if op["responses"].pop("422", None) is not None and "400" not in op["responses"]:
                        op["responses"]["400"] = {
                            "description": "A malformed request: the message names the field",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"},
                                                             "example": {"error": "job_id: field required",
                                                                         "code": "bad_request"}}}}
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = \
                ErrorBody.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _response_parameters(response) -> dict:
    """`parameters` of a v2 response (JSON, or the JSON header of a binary one)."""
    try:
        length = response.headers.get("inference-header-content-length")
        raw = response.content[: int(length)] if length else response.content
        return json.loads(raw).get("parameters", {}) or {}
    except (ValueError, AttributeError):
        return {}
