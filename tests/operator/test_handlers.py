"""The operator (a real process against kmock, driven by kubectl) and the
Prometheus URLs its SeparationModels name: one outside the operator's
allowlist is never requested and holds the rollout with a condition; an
allowed one that answers garbage holds it with a clear reason, tick after
tick, and nothing it answered reaches status or Events."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import yaml
import pytest

from tests.fixtures.recorder import Recorder
from tests.operator.cluster import SM, Cluster, KServeSimulator, Operator

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
MARKER = "do-not-copy-5d21"

# What a Prometheus that is not one might answer, in turn.
GARBAGE = [
    (200, "text/html", f"<html><body>{MARKER} please log in</body></html>"),
    (200, "application/json", json.dumps({"status": "success", "data": {"rows": [MARKER]}})),
    (500, "text/plain", f"internal error {MARKER}"),
    (200, "application/octet-stream", f"\x00{MARKER}\x01"),
]
WORDS = {"non-JSON answer from Prometheus", "malformed answer from Prometheus: no data.result",
         "HTTP 500 from Prometheus"}


def rotating(answers):
    turn, lock = itertools.cycle(answers), threading.Lock()

    def respond(req):
        with lock:
            status, ctype, body = next(turn)
        return status, {"content-type": ctype}, body.encode("latin-1")
    return respond


def model(name: str, version: str, prometheus_url: str | None) -> dict:
    doc = yaml.safe_load((MANIFESTS / "examples" / "htdemucs.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["model"].update(version=version, storageUri=f"gs://models/{name}/{version}")
    doc["spec"]["rollout"].update(steps=[20, 60], interval="1s")
    doc["spec"]["analysis"]["goldenSet"] = {"builtin": False}
    if prometheus_url:
        doc["spec"]["analysis"]["prometheusUrl"] = prometheus_url
    return doc


@pytest.mark.slow
def test_prometheus_urls_outside_the_allowlist_are_never_asked_and_garbage_is_a_hold(tmp_path):
    # If it were asked, this one would say the canary served plenty of healthy traffic.
    plenty = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                       "result": [{"metric": {}, "value": [0, "1000"]}]}})
    with Recorder(lambda req: (200, {"content-type": "application/json"}, plenty.encode())) as forbidden, \
            Recorder(rotating(GARBAGE)) as garbage, \
            Recorder(lambda req: (502, {"content-type": "text/html"}, f"<h1>{MARKER}</h1>".encode())) as own, \
            Cluster(tmp_path) as cluster, KServeSimulator(cluster):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=0.5, env={
            "MUSICSPLIT_OPERATOR_PROMETHEUS_URL": own.url,
            "MUSICSPLIT_OPERATOR_PROMETHEUS_URL_ALLOWLIST": json.dumps([garbage.url + "/"])})
        try:
            def status(name):
                return (cluster.get(SM, name) or {}).get("status") or {}

            urls = {"forbidden": forbidden.url, "garbage": garbage.url, "own": None}
            for name, url in urls.items():
                cluster.apply(model(name, "1.0.0", url))
            for name, url in urls.items():
                cluster.wait(lambda: status(name).get("phase") == "Succeeded", 30, message=f"{name} deployed")
                cluster.apply(model(name, "1.1.0", url))
            # Several analyses of each: the operator keeps ticking through every kind of bad answer.
            for name in urls:
                cluster.wait(lambda: status(name).get("holds", 0) >= 2 * len(GARBAGE), 60,
                             message=f"{name}: analyses held")

            st = status("forbidden")
            cond = next(c for c in st["conditions"] if c["type"] == "AnalysisConfigured")
            assert cond["status"] == "False" and cond["reason"] == "PrometheusUrlNotAllowed"
            assert "not in the operator's allowlist" in cond["message"]
            assert st["phase"] == "Progressing" and st["canaryWeight"] == 20
            assert st["lastAnalysis"]["reason"] == "PrometheusUrlNotAllowed"
            assert forbidden.requests == []  # not one request, however many analyses

            st = status("garbage")
            cond = next(c for c in st["conditions"] if c["type"] == "AnalysisConfigured")
            assert cond["status"] == "True" and garbage.url in cond["message"]
            assert len(garbage.seen("/api/v1/query")) >= len(GARBAGE)  # it was asked, and answered each kind
            assert st["phase"] == "Progressing" and st["canaryWeight"] == 20
            assert st["lastAnalysis"]["result"] == "hold"
            assert any(w in st["lastAnalysis"]["message"] for w in WORDS), st["lastAnalysis"]["message"]

            st = status("own")
            assert st["lastAnalysis"]["reason"] == "PrometheusUnreachable"
            assert "HTTP 502 from Prometheus" in st["lastAnalysis"]["message"] and own.seen("/api/v1/query")

            for name in urls:
                assert MARKER not in json.dumps(status(name))
            assert MARKER not in json.dumps(cluster.events())
            assert {"AnalysisHeld"} <= {e["reason"] for e in cluster.events()}
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]
