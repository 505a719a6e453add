"""Wiring the model into KServe's ModelServer.

KServe owns the v2 endpoints, gRPC and /metrics; musicsplit adds, in front
of them, what a production predictor needs before a body is even read:
refusing oversize requests (413), not-ready (503) and saturation (429) with
Retry-After, outcome accounting, and its own error type's mapping.
"""

from __future__ import annotations

import json
import logging
import re
import time

from fastapi import Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response

from musicsplit.errors import MusicsplitError, PayloadTooLarge, http_payload
from musicsplit.predictor import metrics
from musicsplit.predictor.admission import admitted
from musicsplit.predictor.model import SeparationModel, outcome_of, outcome_of_status
from musicsplit.predictor.settings import PredictorSettings
from musicsplit.telemetry import setup_tracing

log = logging.getLogger(__name__)
INFER_PATH = re.compile(r"^/v(?:1|2)/models/(?P<name>[^/:]+)(?:/versions/[^/]+)?(?:/infer|:predict)$")


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI (same task as the endpoint, so the `admitted` contextvar reaches it)."""

    def __init__(self, app, model: SeparationModel):
        self.app = app
        self.model = model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        match = INFER_PATH.match(scope["path"])
        if not match or match["name"] != self.model.name or scope["method"] != "POST":
            return await self.app(scope, receive, _with_retry_after(send))
        start = time.perf_counter()
        source = metrics.request_source({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        status_box = {"status": 500}
        outcome = "error"
        try:
            await self._guarded(scope, receive, send, status_box)
            outcome = outcome_of_status(status_box["status"])
        except MusicsplitError as exc:
            outcome = outcome_of(exc)
            await _send_error(send, exc)
        finally:
            self.model.record(outcome, time.perf_counter() - start, source)

    async def _guarded(self, scope, receive, send, status_box):
        model = self.model
        if not model.ready:
            raise model.not_ready_error()
        limit = model.limits.max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > limit:
            raise PayloadTooLarge(
                f"request body is {int(length)} bytes, over the limit of {limit} bytes; "
                "split the track or use the gateway's chunked jobs"
            )
        async with model.admission.ticket():
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
                return message

            async def recording_send(message):
                if message["type"] == "http.response.start":
                    status_box["status"] = message["status"]
                await send(message)

            token = admitted.set(True)
            try:
                await self.app(scope, limited_receive, recording_send)
            except _BodyTooLarge:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes") from None
            finally:
                admitted.reset(token)


def _with_retry_after(send):
    """KServe answers not-ready with a bare 503: add the Retry-After clients need."""

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", b"5"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _send_error(send, exc: MusicsplitError):
    status, body, headers = http_payload(exc)
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _musicsplit_error_handler(_request, exc: MusicsplitError):
    status, body, headers = http_payload(exc)
    return JSONResponse(status_code=status, content=body, headers=headers)


def v2_infer_route(dataplane):
    """POST /v2/models/{name}/infer with musicsplit's zero-copy request parsing;
    everything after parsing is KServe's own dataplane."""
    from musicsplit.predictor.codec import parse_rest_request

    async def infer(request: Request, model_name: str, model_version: str | None = None):
        body = await request.body()
        headers = dict(request.headers)
        infer_request = parse_rest_request(body, headers.get("inference-header-content-length"), model_name)
        response, response_headers = await dataplane.infer(model_name, infer_request, headers)
        payload, json_length = response.to_rest()
        response_headers = {k: v for k, v in response_headers.items() if k.lower() not in ("content-length", "content-type")}
        if json_length is None:
            return ORJSONResponse(payload, headers=response_headers)
        response_headers["inference-header-content-length"] = str(json_length)
        return Response(payload, media_type="application/octet-stream", headers=response_headers)

    return infer


def v2_ready_route(model):
    """GET /v2/health/ready, the readiness probe's path: ready once the model is.
    KServe's own answers true as soon as the server runs, so a pod still loading
    (or failing to load) its weights would be sent traffic."""

    async def ready():
        if not model.ready:
            raise model.not_ready_error()
        return {"ready": True}

    return ready


def serve(settings: PredictorSettings, server_kwargs: dict) -> None:
    """Start KServe's ModelServer; the model loads in the background meanwhile."""
    import kserve
    from kserve import model_server

    setup_tracing(f"musicsplit-predictor-{settings.model_name}")
    model = SeparationModel(settings.model_name, settings)
    app = model_server.app
    app.add_middleware(GuardMiddleware, model=model)
    app.add_exception_handler(MusicsplitError, _musicsplit_error_handler)
    server = kserve.ModelServer(**server_kwargs)
    # Added before KServe registers its routes at start(), so these match first.
    route = v2_infer_route(server.dataplane)
    app.add_api_route("/v2/models/{model_name}/infer", route, methods=["POST"], tags=["V2"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", route, methods=["POST"], tags=["V2"])
    app.add_api_route("/v2/health/ready", v2_ready_route(model), methods=["GET"], tags=["V2"])
    # Register before loading so /v2/models/{name}/ready answers 503 (not 404)
    # while the weights load, and a failed load is reported instead of crashing.
    server.register_model(model)
    model.load_in_background()
    server.start([])
