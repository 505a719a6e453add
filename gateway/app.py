"""The gateway's FastAPI app: the routers (api/routers/), error mapping, tracing, body limit, metrics port,
the OpenAPI document.

Every response about a separation says the model, version and arm (in the
body and in X-Musicsplit-* headers); every error is `{"error", "code"}`,
an unexpected one a 500 whose message is a reference to the log and Sentry
(never a path, an upstream's words or a traceback). /metrics is served on
its own port (`metrics_port`), never on the API's.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from opentelemetry import trace
from prometheus_client import start_http_server
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from musicsplit.errors import MusicsplitError, http_payload
from musicsplit.gateway import metrics
from musicsplit.gateway.tenancy.auth import Authenticator
from musicsplit.gateway.api.ingress import FORM_OVERHEAD_BYTES, BodyLimit
from musicsplit.gateway.error_reports import report
from musicsplit.gateway.api.routers import AREAS, ui
from musicsplit.gateway.api.schemas import DESCRIPTION, MALFORMED, TAGS, ErrorBody
from musicsplit.gateway.service import SeparationService
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.telemetry import extract

log = logging.getLogger(__name__)
tracer = trace.get_tracer("musicsplit.gateway")


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large"}


def create_app(settings: GatewaySettings | None = None, service: SeparationService | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    # Now, not at the first request: a bad tenants file or OIDC setting stops the gateway from starting.
    auth = service.auth if service else Authenticator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        (log.warning if auth.open else log.info)("%s", auth.describe())
        svc = service or SeparationService(settings, auth=auth)
        app.state.service = svc
        scrape = start_http_server(settings.metrics_port, addr=settings.host)[0] if settings.metrics_port else None
        try:
            await svc.start()
            try:
                yield
            finally:
                await svc.stop()
        finally:
            if scrape is not None:
                await asyncio.to_thread(scrape.shutdown)
                scrape.server_close()

    app = FastAPI(title="musicsplit gateway", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=TAGS)
    app.state.settings = settings
    for area in AREAS:
        app.include_router(area.router)
    ui.install(app)  # the web page at /ui and the API it uses (api/routers/ui.py)

    @app.exception_handler(MusicsplitError)
    async def _musicsplit_error(request: Request, exc: MusicsplitError):
        request.state.refusal = exc.code  # the tenant's request metrics (below) read it
        status, body, headers = http_payload(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        # Starlette's own answers (no such route, wrong method, a body over the limit), in our shape.
        message = f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
        return JSONResponse({"error": str(message), "code": HTTP_CODES.get(exc.status_code, "http_error")},
                            status_code=exc.status_code, headers=exc.headers)

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
    async def _trace_and_count(request: Request, call_next):
        ctx = extract(request.headers)
        with tracer.start_as_current_span(request.method, context=ctx, kind=trace.SpanKind.SERVER,
                                          attributes={"http.method": request.method,
                                                      "http.target": request.url.path}) as span:
            try:
                response = await call_next(request)
            except ClientDisconnect:  # the client left mid-upload: nobody to answer, nothing to report
                response = JSONResponse({"error": "the client disconnected", "code": "bad_request"}, status_code=400)
            except Exception as exc:  # a bug or a broken backend: the details are for us, not the caller
                reference = report(exc, f"{request.method} {request.url.path}")
                response = JSONResponse({"error": f"an internal error occurred; it has been reported (reference "
                                                  f"{reference}); try again later", "code": "internal_error"},
                                        status_code=500)
            route = request.scope.get("route")
            if route is not None:  # the route template, not the path: span names stay few
                span.update_name(f"{request.method} {route.path}")
                span.set_attribute("http.route", route.path)
            span.set_attribute("http.status_code", response.status_code)
            tenant = getattr(request.state, "tenant", None)
            if tenant is not None:
                refusal = getattr(request.state, "refusal", None)
                outcome = ("rejected_quota" if refusal == "quota_exceeded" else
                           "rejected_input" if response.status_code in (400, 413) else "accepted")
                metrics.TENANT_REQUESTS.labels(tenant=tenant, outcome=outcome).inc()
            return response

    # Outermost: a body is counted (and refused) before anything else reads it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes + FORM_OVERHEAD_BYTES,
                       max_drains=settings.max_refusal_drains, body_timeout_s=settings.body_timeout_s)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags)
            for ops in schema["paths"].values():
                for op in ops.values():
                    # Request validation errors are answered 400 (see _validation_error), never 422.
                    if op["responses"].pop("422", None) is not None and "400" not in op["responses"]:
                        op["responses"]["400"] = MALFORMED
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = \
                ErrorBody.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
