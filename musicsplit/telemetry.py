"""OpenTelemetry tracing, configured by the standard OTEL_* environment.

With no exporter configured nothing is installed: the API's no-op tracer
makes every span free. With OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_TRACES_EXPORTER=otlp|console) spans go out in batches; Jaeger takes
OTLP directly.
"""

from __future__ import annotations

import os
from typing import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

_configured = False


def setup_tracing(service_name: str) -> bool:
    """Install an SDK tracer provider if OTEL env asks for export; True if it did."""
    global _configured
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if _configured or exporter_name == "none":
        return _configured
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or exporter_name in ("otlp", "console")):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def extract(headers: Mapping[str, str] | None) -> Context:
    """The caller's trace context (W3C traceparent) from request headers."""
    return propagate.extract(dict(headers or {}))


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to outgoing headers."""
    propagate.inject(headers)
    return headers
