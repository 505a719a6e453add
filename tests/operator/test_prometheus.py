"""The analysis' PromQL against a real Prometheus scraping a real /metrics
endpoint with the predictor's series; and what happens when Prometheus is
not there, or answers an error."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from musicsplit.localstack import wait_until
from musicsplit.operator import prometheus
from musicsplit.operator.analysis import judge
from musicsplit.operator.spec import parse_spec
from tests.fixtures.recorder import Recorder
from tests.fixtures.prometheus import Prometheus, scrape_job

class FakePredictorMetrics:
    """A /metrics endpoint with the predictor's series (same names, labels, buckets)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ("model", "model_version", "source")
        self.requests = Counter("musicsplit_requests", "", (*labels, "outcome"), registry=self.registry)
        self.latency = Histogram("musicsplit_request_duration_seconds", "", labels, registry=self.registry,
                                 buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.quality = Histogram("audio_separation_quality", "", labels, registry=self.registry,
                                 buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        # prometheus_client's own exporter, on a free loopback port
        self.server, _ = start_http_server(0, "127.0.0.1", registry=self.registry)
        self.target = f"127.0.0.1:{self.server.server_port}"

    def serve(self, version: str, n: int, errors: int = 0, bad_input: int = 0, seconds: float = 2.0,
              quality: float = 0.9, source: str = "user"):
        for i in range(n):
            outcome = "error" if i < errors else "bad_input" if i < errors + bad_input else "success"
            self.requests.labels("m", version, source, outcome).inc()
            self.latency.labels("m", version, source).observe(seconds)
            if outcome == "success":
                self.quality.labels("m", version, source).observe(quality)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    """Three predictors serving model `m`: in namespace team-a (a regressed
    canary, plus healthy-looking probe and shadow traffic), team-b (a healthy
    canary of the same name and version) and one whose scrape relabels the
    namespace as `kube_ns`."""
    a, b, c = FakePredictorMetrics(), FakePredictorMetrics(), FakePredictorMetrics()
    # the series exist (at 0) before the traffic, as a running predictor's do
    for metrics in (a, b, c):
        for v in ("1.0", "2.0"):
            metrics.requests.labels("m", v, "user", "success")
    p = Prometheus(tmp_path_factory.mktemp("prom"), jobs=[
        scrape_job("team-a", [a.target], "predictor", namespace="team-a"),
        scrape_job("team-b", [b.target], "predictor", namespace="team-b"),
        scrape_job("relabelled", [c.target], "predictor", kube_ns="team-c")])

    def scraped(promql, want):
        with httpx.Client(timeout=5) as client:
            wait_until(lambda: prometheus.query_scalar(client, p.url, promql) == want, 30,
                       f"Prometheus: {promql} == {want}")

    try:
        scraped('count(count_over_time(musicsplit_requests_total{model_version="2.0"}[1m]) >= 2)', 3)  # zero state
        a.serve("1.0", 40, errors=0, seconds=2.0, quality=0.92)
        a.serve("2.0", 20, errors=4, bad_input=2, seconds=40.0, quality=0.62)
        # Were these counted, the canary would look healthy: no errors, fast, good quality.
        a.serve("2.0", 50, seconds=0.2, quality=0.99, source="probe")
        a.serve("2.0", 10, seconds=0.2, quality=0.99, source="shadow")
        b.serve("1.0", 10, seconds=1.0, quality=0.95)
        b.serve("2.0", 30, seconds=1.0, quality=0.95)
        c.serve("2.0", 7, seconds=1.0, quality=0.95)
        scraped('sum(musicsplit_requests_total{model_version="2.0"})', 117)
        yield p
    finally:
        p.stop()
        for metrics in (a, b, c):
            metrics.stop()


@pytest.mark.slow
def test_version_metrics_count_users_in_the_models_namespace_only(prom):
    with httpx.Client(timeout=5) as client:
        def vm(version, namespace, **kw):
            return prometheus.version_metrics(client, prom.url, "m", version, 60, namespace, **kw)

        stable, canary, unknown = vm("1.0", "team-a"), vm("2.0", "team-a"), vm("9.9", "team-a")
        elsewhere = vm("2.0", "team-b")
    # Users' requests in team-a only: not the probe's 50, not shadow's 10, not team-b's 30.
    assert stable.requests == pytest.approx(40, abs=0.5) and stable.errors == 0
    assert canary.requests == pytest.approx(20, abs=0.5)
    assert canary.error_rate == pytest.approx(4 / 20, abs=0.01)  # bad_input is not the model's fault
    assert stable.p99_seconds <= 2.5 and 30 < canary.p99_seconds <= 60
    assert stable.quality == pytest.approx(0.92, abs=0.01) and canary.quality == pytest.approx(0.62, abs=0.01)
    assert unknown.requests == 0 and unknown.p99_seconds is None and unknown.quality is None
    # The same model name and version in team-b is another model.
    assert elsewhere.requests == pytest.approx(30, abs=0.5) and elsewhere.errors == 0
    assert elsewhere.quality == pytest.approx(0.95, abs=0.01) and elsewhere.p99_seconds <= 1.0


def test_the_namespace_label_follows_the_clusters_relabelling(prom):
    with httpx.Client(timeout=5) as client:
        relabelled = prometheus.version_metrics(client, prom.url, "m", "2.0", 60, "team-c", namespace_label="kube_ns")
        default_label = prometheus.version_metrics(client, prom.url, "m", "2.0", 60, "team-c")
    assert relabelled.requests == pytest.approx(7, abs=0.5)
    assert default_label.requests == 0  # no series carries namespace="team-c"


def test_measure_and_judge_name_every_regression(prom):
    spec = parse_spec({"model": {"architecture": "htdemucs", "version": "2.0", "storageUri": "gs://m/2"},
                       "analysis": {"goldenSet": {"builtin": False}, "minRequests": 10, "maxErrorRate": 0.05,
                                    "maxP99LatencySeconds": 30, "minQualityScore": 0.7}})
    m = prometheus.measure(prometheus_url=prom.url, model="m", namespace="team-a", canary_version="2.0",
                           stable_version="1.0", window_s=60)
    v = judge(m, spec)
    assert v.result == "fail"
    assert {c.name for c in v.failed} == {"errorRate", "latencyP99", "qualityScore", "qualityDrop"}
    healthy = judge(prometheus.measure(prometheus_url=prom.url, model="m", namespace="team-b", canary_version="2.0",
                                       stable_version="1.0", window_s=60), spec)
    assert healthy.result == "pass", healthy.message


def test_a_prometheus_error_is_a_hold_not_a_pass(prom):
    with httpx.Client(timeout=5) as client, pytest.raises(prometheus.PrometheusUnavailable, match="bad_data"):
        prometheus.query_scalar(client, prom.url, "sum(rate(x[")


def test_unreachable_prometheus_is_reported_not_raised():
    m = prometheus.measure(prometheus_url="http://127.0.0.1:9", model="m", namespace="ns", canary_version="2",
                           stable_version="1", window_s=60, timeout_s=2)
    assert m.canary is None and "ConnectError" in m.prometheus_error


def test_every_query_selects_user_requests_in_the_namespace_and_escapes_values():
    q = prometheus.queries('m"x', 'v\\1', 30, "team-a", namespace_label="kube_ns")
    for promql in q.values():
        assert promql.count('source="user"') == promql.count("model=") > 0
        assert promql.count('kube_ns="team-a"') == promql.count("model=")
    assert 'model="m\\"x"' in q["requests"] and 'model_version="v\\\\1"' in q["requests"]


# -------------------------------------------------------------- answers the analysis cannot use

MARKER = "do-not-copy-7f3a"  # in every bad answer's body: none of it may reach status


def answer(status: int, body: bytes, content_type: str = "application/json"):
    return lambda req: (status, {"content-type": content_type}, body)


BAD_ANSWERS = {
    "html": (answer(200, f"<html><body>{MARKER} login</body></html>".encode(), "text/html"),
             "non-JSON answer from Prometheus", "PrometheusError"),
    "garbage": (answer(200, b"\x00\xff" + MARKER.encode() + b"\x80"), "non-JSON answer from Prometheus",
                "PrometheusError"),
    "wrong shape": (answer(200, b'{"status": "success", "data": {"rows": ["%s"]}}' % MARKER.encode()),
                    "malformed answer from Prometheus: no data.result", "PrometheusError"),
    "not a sample": (answer(200, b'{"status": "success", "data": {"resultType": "vector", "result": '
                                 b'[{"metric": {}, "value": "%s"}]}}' % MARKER.encode()),
                     "malformed answer from Prometheus: data.result holds no [time, value] sample", "PrometheusError"),
    "a list": (answer(200, b'["%s"]' % MARKER.encode()), "malformed answer from Prometheus: no status",
               "PrometheusError"),
    "500": (answer(500, MARKER.encode(), "text/plain"), "HTTP 500 from Prometheus", "PrometheusUnreachable"),
    "502 page": (answer(502, f"<h1>Bad gateway</h1>{MARKER}".encode(), "text/html"), "HTTP 502 from Prometheus",
                 "PrometheusUnreachable"),
    "refused": (answer(400, b'{"status": "error", "errorType": "bad_data", "error": "%s"}' % MARKER.encode()),
                "HTTP 400 from Prometheus (bad_data)", "PrometheusError"),
    "odd errorType": (answer(422, b'{"status": "error", "errorType": "%s", "error": "x"}' % MARKER.encode()),
                      "HTTP 422 from Prometheus", "PrometheusError"),
    "too big": (answer(200, b'{"status": "success", "pad": "' + MARKER.encode() * 200_000 + b'"}'),
                "answer from Prometheus over 1048576 bytes", "PrometheusError"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BAD_ANSWERS))
def test_an_unusable_answer_is_a_hold_that_says_what_was_wrong_not_what_it_said(kind):
    respond, words, reason = BAD_ANSWERS[kind]
    with Recorder(respond) as server:
        m = prometheus.measure(prometheus_url=server.url, model="m", namespace="ns", canary_version="2",
                               stable_version="1", window_s=60, timeout_s=5)
        assert server.seen("/api/v1/query")
    assert m.canary is None and m.prometheus_error == words and m.prometheus_reason == reason
    v = judge(m, parse_spec({"model": {"architecture": "htdemucs", "version": "2", "storageUri": "gs://m/2"}}))
    assert v.result == "hold" and v.reason == reason and words in v.message and MARKER not in v.message


def test_a_prometheus_that_does_not_answer_in_time_is_unreachable():
    gate = threading.Event()
    with Recorder(answer(200, b"{}"), gate=gate) as server:
        m = prometheus.measure(prometheus_url=server.url, model="m", namespace="ns", canary_version="2",
                               stable_version="1", window_s=60, timeout_s=0.5)
        gate.set()
    assert m.prometheus_error == "no answer from Prometheus within 0.5s"
    assert m.prometheus_reason == "PrometheusUnreachable"


# -------------------------------------------------------------- which Prometheus

OPERATOR_PROM = "http://prometheus-operated.monitoring.svc:9090"


@pytest.mark.parametrize("spec_url, allowlist, chosen", [
    (None, [], OPERATOR_PROM),
    (OPERATOR_PROM + "/", [], OPERATOR_PROM),  # the operator's own, however it is spelled
    ("http://team-prom.ml:9090", ["http://team-prom.ml:9090/"], "http://team-prom.ml:9090"),
    ("http://team-prom.ml:9090", [], None),
    ("http://169.254.169.254/latest/meta-data", ["http://team-prom.ml:9090"], None),
])
def test_a_spec_names_another_prometheus_only_from_the_operators_allowlist(spec_url, allowlist, chosen):
    url, why = prometheus.resolve_url(spec_url, OPERATOR_PROM, allowlist)
    assert url == chosen
    if chosen is None:
        assert "not in the operator's allowlist" in why and "MUSICSPLIT_OPERATOR_PROMETHEUS_URL_ALLOWLIST" in why


def test_credentials_in_a_prometheus_url_never_reach_the_condition():
    """resolve_url's message goes into every SeparationModel's AnalysisConfigured condition."""
    secret = "https://analyst:s3cr3t@prom.example:9090/?token=abc123"
    for spec_url, allowlist in ((None, []), (secret, [secret]), (secret, [])):
        _, why = prometheus.resolve_url(spec_url, secret if spec_url is None else OPERATOR_PROM, allowlist)
        assert "s3cr3t" not in why and "abc123" not in why and "analyst" not in why, why
        assert "***@prom.example:9090" in why
