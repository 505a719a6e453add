"""OpenTelemetry: the gateway's spans and the W3C traceparent it sends the predictor."""

from __future__ import annotations

import json

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from musicsplit.localstack import wait_until

from .conftest import submit, tone, wait_job, wav_bytes
from .receivers import Receiver


@pytest.fixture
def spans():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


def _parse(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


@pytest.mark.slow
def test_traceparent_reaches_the_predictor_and_joins_the_callers_trace(baseline_url, gateway_factory, spans):
    with Receiver(forward_to=baseline_url) as proxy:  # records what the predictor receives
        gw = gateway_factory([("dsp-baseline", proxy.url, "eu")], health_interval_s=60)
        caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        mix = tone(0.5)
        body = json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape),
                                       "data": mix.ravel().tolist(), "parameters": {"sample_rate": 44100}}]})
        r = httpx.post(f"{gw.url}/v2/models/default/infer", content=body, timeout=30,
                       headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"})
        assert r.status_code == 200
        infer = [h for p, h, _ in proxy.posts("/v2/models/dsp-baseline/infer")]
        assert infer and "traceparent" in infer[-1]
        trace_id, parent = _parse(infer[-1]["traceparent"])
        assert trace_id == caller_trace, "the predictor's spans join the caller's trace"
        proxy_spans = [s for s in spans.get_finished_spans() if s.name == "proxy"]
        assert any(format(s.context.span_id, "016x") == parent for s in proxy_spans), \
            "the predictor's parent is the gateway's proxy span"

        # A job: submit -> job -> chunk -> proxy, one trace, every chunk's request carrying it.
        spans.clear()
        proxy.requests.clear()
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(9.0))).json()["id"])
        assert doc["status"] == "succeeded"
        # The job span ends after the job's cleanup, a moment after the status says succeeded.
        wait_until(lambda: any(s.name == "job" for s in spans.get_finished_spans()), 10, "the job span ended")
        finished = spans.get_finished_spans()
        names = {s.name for s in finished}
        assert {"validate", "job", "chunk", "proxy"} <= names, names
        job_span = next(s for s in finished if s.name == "job")
        chunk_traceparents = [h["traceparent"] for p, h, _ in proxy.posts("/v2/models/dsp-baseline/infer")]
        assert len(chunk_traceparents) == doc["progress"]["chunks_total"]
        assert {_parse(t)[0] for t in chunk_traceparents} == {format(job_span.context.trace_id, "032x")}
