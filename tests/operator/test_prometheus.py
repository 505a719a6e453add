"""The analysis' PromQL against a real Prometheus scraping a real /metrics
endpoint with the predictor's series; and what happens when Prometheus is
not there, or answers an error."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from musicsplit.operator import prometheus
from musicsplit.operator.analysis import judge
from musicsplit.operator.spec import parse_spec
from tests.operator.prometheus import Prometheus

needs_prometheus = pytest.mark.skipif(not shutil.which("prometheus"), reason="needs the prometheus binary")


class FakePredictorMetrics:
    """A /metrics endpoint with the predictor's series (same names, labels, buckets)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ("model", "model_version")
        self.requests = Counter("musicsplit_requests", "", (*labels, "outcome"), registry=self.registry)
        self.latency = Histogram("musicsplit_request_duration_seconds", "", labels, registry=self.registry,
                                 buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.quality = Histogram("audio_separation_quality", "", labels, registry=self.registry,
                                 buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, version: str, n: int, errors: int = 0, bad_input: int = 0, seconds: float = 2.0,
              quality: float = 0.9):
        for i in range(n):
            outcome = "error" if i < errors else "bad_input" if i < errors + bad_input else "success"
            self.requests.labels("m", version, outcome).inc()
            self.latency.labels("m", version).observe(seconds)
            if outcome == "success":
                self.quality.labels("m", version).observe(quality)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    metrics = FakePredictorMetrics()
    # the series exist (at 0) before the traffic, as a running predictor's do
    for v in ("1.0", "2.0"):
        metrics.requests.labels("m", v, "success")
    p = Prometheus(tmp_path_factory.mktemp("prom"), [metrics.target])

    def scraped(promql, want):
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if prometheus.query_scalar(client, p.url, promql) == want:
                    return
                time.sleep(0.2)
        raise AssertionError(f"Prometheus never saw {promql} == {want}")

    try:
        scraped('count_over_time(musicsplit_requests_total{model_version="2.0"}[1m])', 2)  # zero state, twice
        metrics.serve("1.0", 40, errors=0, seconds=2.0, quality=0.92)
        metrics.serve("2.0", 20, errors=4, bad_input=2, seconds=40.0, quality=0.62)
        scraped('sum(musicsplit_requests_total{model_version="2.0"})', 20)
        yield p
    finally:
        p.stop()
        metrics.stop()


@needs_prometheus
def test_version_metrics_from_real_prometheus(prom):
    with httpx.Client(timeout=5) as client:
        stable = prometheus.version_metrics(client, prom.url, "m", "1.0", window_s=60)
        canary = prometheus.version_metrics(client, prom.url, "m", "2.0", window_s=60)
        unknown = prometheus.version_metrics(client, prom.url, "m", "9.9", window_s=60)
    # increase() extrapolates a little; the ratios are what the checks use
    assert stable.requests == pytest.approx(40, rel=0.2) and stable.errors == 0
    assert canary.error_rate == pytest.approx(4 / 20, abs=0.01)  # bad_input is not the model's fault
    assert stable.p99_seconds <= 2.5 and 30 < canary.p99_seconds <= 60
    assert stable.quality == pytest.approx(0.92, abs=0.01) and canary.quality == pytest.approx(0.62, abs=0.01)
    assert unknown.requests == 0 and unknown.p99_seconds is None and unknown.quality is None


@needs_prometheus
def test_measure_and_judge_name_every_regression(prom):
    spec = parse_spec({"model": {"architecture": "htdemucs", "version": "2.0", "storageUri": "gs://m/2"},
                       "analysis": {"prometheusUrl": prom.url, "goldenSet": False, "minRequests": 10,
                                    "maxErrorRate": 0.05, "maxP99LatencySeconds": 30, "minQualityScore": 0.7}})
    m = prometheus.measure(prometheus_url=prom.url, model="m", canary_version="2.0", stable_version="1.0",
                         window_s=60, golden=False, canary_url=None, stable_url=None)
    v = judge(m, spec)
    assert v.result == "fail"
    assert {c.name for c in v.failed} == {"errorRate", "latencyP99", "qualityScore", "qualityDrop"}


@needs_prometheus
def test_a_prometheus_error_is_a_hold_not_a_pass(prom):
    with httpx.Client(timeout=5) as client, pytest.raises(prometheus.PrometheusUnavailable, match="bad_data"):
        prometheus.query_scalar(client, prom.url, "sum(rate(x[")


def test_unreachable_prometheus_and_missing_probe_urls_are_reported_not_raised():
    m = prometheus.measure(prometheus_url="http://127.0.0.1:9", model="m", canary_version="2", stable_version="1",
                         window_s=60, golden=True, canary_url=None, stable_url=None, timeout_s=2)
    assert m.canary is None and "ConnectError" in m.prometheus_error
    assert "tag 'latest'" in m.probe_error


def test_label_values_are_escaped_in_promql():
    q = prometheus.queries('m"x', 'v\\1', 30)
    assert 'model="m\\"x"' in q["requests"] and 'model_version="v\\\\1"' in q["requests"]
