"""The API's documented shapes: response schemas, the views built from a job, OpenAPI examples.

The routers (routers/) say which of these each route answers with; the
OpenAPI document (docs/openapi.json) is generated from them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from musicsplit.gateway.storage.jobstore import SeparationJob
from musicsplit.gateway.jobs.observations import EXPLICIT_ARM

JOB_ID = "3f2b9c0e8d7a4b6f9e1d2c3b4a5f6e7d"
UPLOAD_ID = "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a"

DESCRIPTION = (
    "Music source separation (Demucs) as a service: upload a track, follow the job, download stems. "
    "Long tracks are cut into overlapping chunks separated concurrently. Also a KServe v2 "
    "pass-through (`/v2/models/{name}/infer`) where `name` may be an alias such as `default`.\n\n"
    "Authenticate with `Authorization: Bearer <API key or OIDC token>` (the tenant); missing or wrong "
    "credentials are a 401 with `WWW-Authenticate`. A tenant sees only its own jobs: another tenant's job "
    "is a 404. Identify the end user with `X-User-Id` (model choice and A/B arms are sticky per user). "
    "Every error is `{\"error\": ..., \"code\": ...}`; 429 and 503 carry `Retry-After` (a 429 with code "
    "`quota_exceeded` names the tenant quota that is used up).\n\n"
    "Progress: WebSocket `GET /v1/separations/{id}/progress` (the job's `progress_url`), authenticated "
    "with the Authorization header or, from a browser, `?ticket=` from `POST "
    "/v1/separations/{id}/progress-ticket` (good once, for a minute). It sends "
    "`{\"id\", \"status\", \"chunks_done\", \"chunks_total\", \"progress\", \"model\", "
    "\"model_version\", \"arm\"}` on every chunk, then closes with code 1000 when the job succeeds, "
    "fails (an `error` object is included) or is cancelled; an unknown job gets `{\"code\": "
    "\"not_found\"}` and close code 4404, missing or bad credentials `{\"code\": \"unauthorized\"}` "
    "and 4401.\n\n"
    "Callbacks: a job submitted with `callback_url` is POSTed its view when it ends, signed "
    "(`X-Musicsplit-Webhook-Signature: sha256=HMAC(webhook_secret, \"<timestamp>.<body>\")`, "
    "`X-Musicsplit-Webhook-Timestamp`, `X-Musicsplit-Webhook-Id` the same on every retry)."
)

TAGS = [{"name": "separations", "description": "Upload, jobs, progress, results, callbacks"},
        {"name": "v2", "description": "KServe Open Inference Protocol v2 pass-through"},
        {"name": "operations", "description": "Health probes (Prometheus metrics are on their own port)"}]


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and what to do about it")
    code: str = Field(description="Stable machine-readable code (bad_audio, bad_request, payload_too_large, "
                                  "unauthorized, forbidden, quota_exceeded, saturated, not_ready, "
                                  "upstream_unavailable, not_found, conflict, unsupported; a failed job's error "
                                  "also: model_changed, input_lost, cancelled, internal_error)")


def error_doc(description: str, message: str, code: str, retry: bool = False) -> dict:
    doc: dict[str, Any] = {"model": ErrorBody, "description": description,
                           "content": {"application/json": {"example": {"error": message, "code": code}}}}
    if retry:
        doc["headers"] = {"Retry-After": {"description": "Seconds to wait before trying again",
                                          "schema": {"type": "integer"}}}
    return doc


E400 = error_doc("Bad input: the message says what to fix",
                 "sample rate 8000 Hz is below the minimum of 16000 Hz; send audio sampled at 16 kHz or more "
                 "(44.1 kHz is best)", "bad_audio")
E404 = error_doc("No such job", f"no separation job {JOB_ID}", "not_found")
E409 = error_doc("The job has no result (yet)", "job 3f2b... is running (3/8 chunks); wait until it succeeds",
                 "conflict")
E413 = error_doc("Upload over the size limit", "request is 262144000 bytes, over the limit of 209715200 bytes; "
                 "split the track or use the gateway's chunked jobs", "payload_too_large")
E429 = error_doc("Queue full (`saturated`), or a tenant quota used up (`quota_exceeded`, the message names "
                 "it): come back after Retry-After seconds",
                 "tenant 'acme' has used its quota requests_per_minute (600) for this minute", "quota_exceeded",
                 retry=True)
E401 = error_doc("No credentials, or credentials that do not check out; `WWW-Authenticate` says which",
                 "the token has expired", "unauthorized")
E403 = error_doc("Valid credentials for a tenant this gateway does not serve",
                 "tenant 'initech' is not served by this gateway; ask its operator to add it to the tenants file",
                 "forbidden")
E401["headers"] = {"WWW-Authenticate": {"description": "RFC 6750 Bearer challenge, e.g. `Bearer realm=\"musicsplit\", "
                                                       "error=\"invalid_token\", error_description=\"...\"`",
                                        "schema": {"type": "string"}}}
E503 = error_doc("No predictor can take the request now", "no predictor for model 'htdemucs' is answering right "
                 "now; try again later", "upstream_unavailable", retry=True)
MALFORMED = {"description": "A malformed request: the message names the field",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"},
                                              "example": {"error": "job_id: field required", "code": "bad_request"}}}}


class UploadFields(BaseModel):
    """The text fields of an upload form (the audio itself is the file field `file`)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("default", description="Model name or alias; `default` lets flags choose (A/B)")
    stems: str | None = Field(None, description="Comma-separated stems to return (default: all)",
                              examples=["vocals,drums"])
    output_format: str = Field("wav", description="wav (32-bit float) or flac (24-bit)")
    shifts: int | None = Field(None, ge=0, le=10, description="Random shifts (quality vs time)")
    callback_url: str | None = Field(None, description="POSTed the job's view, signed, when the job ends; its host "
                                                       "must be one of the tenant's callback_hosts",
                                     examples=["https://hooks.example.com/musicsplit"])


def form_body(fields: type[BaseModel], files: dict, required: list[str]) -> dict:
    """An operation's multipart/form-data request body (routes read the form themselves: ingress.py)."""
    schema = fields.model_json_schema()
    schema["properties"] = {**files, **schema["properties"]}
    schema["required"] = required
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


class SeparationFields(UploadFields):
    """One job's form: the audio in the file field `file`, or the id of a presigned upload."""

    upload_id: str | None = Field(None, description="Instead of `file`: the id of a presigned upload "
                                                    "(POST /v1/uploads) whose PUT is done; the form may then be "
                                                    "application/x-www-form-urlencoded",
                                  examples=[UPLOAD_ID])


UPLOAD_REQUEST = form_body(SeparationFields, {"file": {"type": "string", "format": "binary",
                                                       "description": "The audio: wav, flac, ogg or mp3 (or "
                                                                      "`upload_id`)"}}, [])
BATCH_REQUEST = form_body(UploadFields, {"files": {"type": "array", "description": "The audio files",
                                                   "items": {"type": "string", "format": "binary"}}}, ["files"])


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


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page",
                                    examples=["WzE3NjQwMzAwMDAuMCwgIjNmMmI5YzBlIl0"])


class ProgressTicket(BaseModel):
    ticket: str = Field(description="Good once, for this job's progress WebSocket, until expires_at")
    expires_at: float = Field(examples=[1764030060.0])
    progress_url: str = Field(examples=[f"/v1/separations/{JOB_ID}/progress?ticket=q8Xc..."])


def job_view(job: SeparationJob, results_ttl_s: float) -> JobView:
    r = job.result or {}
    base = f"/v1/separations/{job.id}"
    done = job.status == "succeeded"
    return JobView(
        id=job.id, status=job.status, model=job.model, model_version=job.model_version,
        arm=job.arm or EXPLICIT_ARM, batch_id=job.batch_id, filename=job.filename, created=job.created,
        finished=job.finished,
        expires_at=(job.finished + results_ttl_s) if job.finished and job.status != "expired" else None,
        progress=Progress(chunks_done=job.chunks_done, chunks_total=job.chunks_total, fraction=round(job.progress, 4)),
        cached=job.cached, quality_score=r.get("quality_score"),
        warnings=r.get("warnings", r.get("input_warnings", [])),
        audio_seconds=r.get("audio_seconds"), compute_seconds=r.get("compute_seconds"), cost_usd=r.get("cost_usd"),
        error=ErrorBody(error=job.error, code=job.error_code or "failed") if job.error else None,
        stems={s: f"{base}/stems/{s}" for s in r.get("stems", [])} if done else {},
        zip_url=f"{base}/stems.zip" if done else None,
        progress_url=f"{base}/progress",
    )


def batch_view(batch_id: str, jobs: list[SeparationJob], results_ttl_s: float) -> BatchView:
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
                     jobs=[job_view(j, results_ttl_s) for j in jobs])


def progress_message(job: SeparationJob) -> dict:
    """One WebSocket progress message."""
    msg = {"id": job.id, "status": job.status, "chunks_done": job.chunks_done, "chunks_total": job.chunks_total,
           "progress": round(job.progress, 4), "model": job.model, "model_version": job.model_version,
           "arm": job.arm or EXPLICIT_ARM}
    if job.error:
        msg["error"] = {"error": job.error, "code": job.error_code}
    if job.status == "succeeded":
        msg["result_url"] = f"/v1/separations/{job.id}"
    return msg


def job_headers(job: SeparationJob) -> dict[str, str]:
    """Every response about a separation says the model, version and arm."""
    return {"X-Musicsplit-Model": job.model, "X-Musicsplit-Model-Version": job.model_version or "unknown",
            "X-Musicsplit-Arm": job.arm or EXPLICIT_ARM}


# -- separations: file downloads --------------------------------------------------------------

ZIP_RESPONSE = {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                "description": "All stems in one zip (vocals.wav, drums.wav, ...)"}
STEM_RESPONSE = {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
                             "audio/flac": {"schema": {"type": "string", "format": "binary"}}},
                 "description": "One stem, in the job's output format"}
REDIRECT_RESPONSE = {"description": "A gateway with a shared result store (S3) answers with a redirect to a "
                                    "presigned URL of the bucket, valid for a while (PRESIGNED_URL_EXPIRY_S): "
                                    "follow it (curl -L); the file comes from the bucket",
                     "headers": {"Location": {"description": "The presigned URL", "schema": {"type": "string"}}}}

# -- presigned uploads --------------------------------------------------------------------------

class UploadRequest(BaseModel):
    bytes: int = Field(gt=0, description="The file's exact size in bytes: the URL is signed for it, and the "
                                         "bucket refuses a body of another size", examples=[314572800])


class UploadView(BaseModel):
    upload_id: str = Field(description="Give it to POST /v1/separations as `upload_id` once the PUT is done",
                           examples=[UPLOAD_ID])
    url: str = Field(description="Presigned URL: PUT the file's bytes there",
                     examples=[f"https://bucket.s3.eu-west-1.amazonaws.com/musicsplit/acme/uploads/{UPLOAD_ID}"
                               "?X-Amz-Algorithm=AWS4-HMAC-SHA256&..."])
    method: str = Field("PUT", examples=["PUT"])
    headers: dict[str, str] = Field(description="Send exactly these headers with the PUT (a form content type "
                                                "makes some S3 implementations store an empty object)",
                                    examples=[{"Content-Type": "application/octet-stream",
                                               "Content-Length": "314572800"}])
    expires_at: float = Field(description="The URL works until then (unix time)", examples=[1764030900.0])
    max_bytes: int = Field(description="The largest upload this gateway takes", examples=[1073741824])


E501 = error_doc("This gateway offers no presigned uploads (its storage is a local disk)",
                 "this gateway keeps inputs on its local disk, so it offers no presigned uploads ...; send the "
                 "file in the body of POST /v1/separations", "unsupported")

# -- v2 pass-through ----------------------------------------------------------------------------

V2_INFER_REQUEST = {"requestBody": {"required": True, "content": {
    "application/json": {"example": {
        "inputs": [{"name": "audio", "datatype": "FP32", "shape": [2, 4],
                    "data": [0.0, 0.1, 0.2, 0.1, 0.0, 0.1, 0.2, 0.1], "parameters": {"sample_rate": 44100}}],
        "parameters": {"stems": "vocals", "output_format": "fp32"}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "JSON header + binary tensors (binary data extension; set "
                                                "Inference-Header-Content-Length)"}}}}
V2_INFER_RESPONSE = {"description": "The predictor's v2 response, unchanged (JSON, or JSON + binary tensors with "
                                    "Inference-Header-Content-Length)",
                     "content": {"application/json": {"example": {
                         "model_name": "htdemucs", "model_version": "4.0.1",
                         "outputs": [{"name": "vocals", "datatype": "FP32", "shape": [2, 4],
                                      "data": [0.0, 0.05, 0.1, 0.05, 0.0, 0.05, 0.1, 0.05]}],
                         "parameters": {"model_version": "4.0.1", "quality_score": 0.93, "warnings": "",
                                        "cost_usd": 1.2e-05}}}}}
V2_METADATA_RESPONSE = {"content": {"application/json": {"example": {
    "name": "htdemucs", "versions": None, "platform": "",
    "inputs": [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [{"name": s, "datatype": "FP32", "shape": [-1, -1]} for s in ("drums", "bass", "other", "vocals")]}}}}
V2_READY_RESPONSE = {"content": {"application/json": {"example": {"name": "htdemucs", "ready": True}}}}

# -- operations ---------------------------------------------------------------------------------

LIVE_RESPONSE = {"content": {"application/json": {"example": {"live": True}}}}
READY_RESPONSE = {"description": "This replica can take work; `degraded` lists what works less well",
                  "content": {"application/json": {"example": {
                      "ready": True,
                      "degraded": ["events: Redis unreachable: progress of jobs running on other replicas "
                                   "arrives by polling"],
                      "backends": {"job_store": True, "result_store": True, "cache": True, "events": False},
                      "endpoints": [{"model": "htdemucs", "region": "eu-west", "healthy": True, "breaker": "closed"},
                                    {"model": "htdemucs", "region": "us-east", "healthy": False,
                                     "breaker": "open"}]}}}}
NOT_READY_RESPONSE = {"description": "This replica cannot take work: its job store or result store is unreachable",
                      "headers": {"Retry-After": {"description": "Seconds to wait before trying again",
                                                  "schema": {"type": "integer"}}},
                      "content": {"application/json": {"example": {
                          "ready": False, "error": "this replica cannot take work: job_store: no answer within 3 s",
                          "code": "not_ready", "degraded": ["job_store: no answer within 3 s"],
                          "backends": {"job_store": False, "result_store": True, "cache": True, "events": True},
                          "endpoints": []}}}}
