"""Rollout policy end to end: the operator for real (`musicsplit serve
operator`) against kmock's API, driven by the real `kubectl`, KServe played
by the simulator, a real Prometheus scraping users' request counters, and
local webhook receivers that record every call they get.

- A confirm-promotion gate holds the canary in WaitingPromotion, analysed
  and load-tested (rollout hook) every interval, until its receiver says 200;
  an event hook hears every phase change.
- A pre-rollout hook answering 500 rolls the canary back once the failures
  reach the threshold, before it ever got traffic.
- `promote` wins over a closed confirm-rollout gate; a canary held past its
  hold deadline is escalated (condition, Event, metric) and keeps its traffic.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from musicsplit.localstack import free_port
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.fixtures.recorder import Recorder
from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator

pytestmark = pytest.mark.slow  # ~2 minutes: several processes, a real Prometheus

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
MARKER = "receiver-body-91c2"  # what receivers answer: it must never reach status or Events


class Users:
    """Users' requests to model versions as a predictor's /metrics counts them
    (success, 1 s each, quality 0.9), growing every 0.2 s, for the real
    Prometheus to scrape: the analysis then has evidence to pass on."""

    def __init__(self, versions: list[tuple[str, str]]):
        reg = CollectorRegistry()
        labels = ("model", "model_version", "source")
        self.requests = Counter("musicsplit_requests", "requests", (*labels, "outcome"), registry=reg)
        self.duration = Histogram("musicsplit_request_duration_seconds", "latency", labels, registry=reg,
                                  buckets=(0.5, 2, 10, 60))
        self.quality = Histogram("audio_separation_quality", "quality", labels, registry=reg,
                                 buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
        self.versions = versions
        self.port = free_port()
        self.server, _ = start_http_server(self.port, "127.0.0.1", registry=reg)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="users")
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for model, version in self.versions:
                self.requests.labels(model, version, "user", "success").inc()
                self.requests.labels(model, version, "user", "error")  # present, at 0
                self.duration.labels(model, version, "user").observe(1.0)
                self.quality.labels(model, version, "user").observe(0.9)
            self._stop.wait(0.2)

    def stop(self):
        self._stop.set()
        self.server.shutdown()


class Receiver(Recorder):
    """A webhook receiver whose answer the test can change."""

    def __init__(self, status: int = 200):
        self.status = status
        super().__init__(lambda req: (self.status, {"content-type": "text/plain"}, MARKER.encode()))

    def payloads(self) -> list[dict]:
        return [json.loads(r.body) for r in self.seen()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    users = Users([("gated", "1.0.0"), ("gated", "2.0.0")])
    prom = Prometheus(d, jobs=[scrape_job("users", [f"127.0.0.1:{users.port}"], "predictor", namespace="default")])
    try:
        with Cluster(d) as cluster, KServeSimulator(cluster) as sim:
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            # The receivers listen on loopback, which webhooks may not reach unless the admin says so.
            op = Operator(cluster, d / "operator.log", tick=0.5,
                          env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url,
                               "MUSICSPLIT_OPERATOR_EGRESS_ALLOWED_NETWORKS": '["127.0.0.0/8"]'})
            try:
                yield cluster, sim, op
            finally:
                op.stop()
            assert "Traceback" not in op.log(), op.log()[-5000:]
    finally:
        prom.stop()
        users.stop()


@pytest.fixture(autouse=True)
def cleanup(env):
    """Each test's models go away after it: the operator's work stays proportional."""
    cluster = env[0]
    yield
    for key in list(cluster.emu.objects):
        if key[0] == cluster.sm_resource and cluster.get(SM, key[2]) is not None:
            cluster.kubectl("delete", "sm", key[2], "--ignore-not-found", "--wait=false")


def model(name: str, version: str, *, webhooks: list[dict] = (), **spec) -> dict:
    doc = {"apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"model": {"architecture": "htdemucs", "version": version,
                              "storageUri": f"gs://models/{name}/{version}"},
                    "rollout": {"steps": [50], "interval": "1s"},
                    "analysis": {"minRequests": 1, "goldenSet": {"builtin": False}, "webhooks": list(webhooks)}}}
    for k, v in spec.items():
        doc["spec"][k] = {**doc["spec"].get(k, {}), **v}
    return doc


def status(cluster: Cluster, name: str) -> dict:
    return (cluster.get(SM, name) or {}).get("status") or {}


def wait_status(cluster, name, what, message, timeout=30.0) -> dict:
    return cluster.wait(lambda: what(s := status(cluster, name)) and s, timeout,
                        message=f"{name}: {message} (phase {status(cluster, name).get('phase')}, "
                                f"{status(cluster, name).get('message')})")


def deployed(cluster, doc: dict) -> None:
    cluster.apply(doc)
    wait_status(cluster, doc["metadata"]["name"], lambda s: s.get("phase") == "Succeeded", "first version deployed")


def event_reasons(cluster, name) -> list[str]:
    return [e.get("reason") for e in cluster.events() if (e.get("involvedObject") or {}).get("name") == name]


def metric(op: Operator, series: str, **labels) -> float | None:
    """One series' value from the operator's /metrics."""
    for family in text_string_to_metric_families(httpx.get(op.metrics_url, timeout=5).text):
        for s in family.samples:
            if s.name == series and s.labels == labels:
                return s.value
    return None


def condition(st: dict, type_: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_confirm_promotion_holds_until_the_receiver_says_yes(env):
    cluster, _, op = env
    with Receiver(403) as gate, Receiver(200) as load, Receiver(202) as events:
        hooks = [{"name": "ship-it", "type": "confirm-promotion", "url": gate.url + "/gate", "timeout": "2s"},
                 {"name": "load-test", "type": "rollout", "url": load.url + "/", "metadata": {"cmd": "hey -z 1m"}},
                 {"name": "audit", "type": "event", "url": events.url + "/events"}]
        deployed(cluster, model("gated", "1.0.0", webhooks=hooks))
        cluster.apply(model("gated", "2.0.0", webhooks=hooks))
        st = wait_status(cluster, "gated", lambda s: s.get("phase") == "WaitingPromotion", "waiting for promotion")
        # The gate is asked again every interval; meanwhile the canary keeps its weight and its analyses.
        cluster.wait(lambda: len(gate.seen("/gate")) >= 2, 20, message="the gate polled")
        st = status(cluster, "gated")
        assert st["phase"] == "WaitingPromotion" and st["canaryWeight"] == 50 and st["stableVersion"] == "1.0.0"
        assert "ship-it (HTTP 403)" in st["message"]
        assert cluster.get(ISVC, "gated")["spec"]["predictor"]["canaryTrafficPercent"] == 50
        assert st["webhooks"]["ship-it"]["outcome"] == "rejected" and st["webhooks"]["ship-it"]["code"] == 403
        check = next(c for c in st["lastAnalysis"]["checks"] if c["name"] == "webhook load-test")
        assert st["lastAnalysis"]["result"] == "pass" and check["result"] == "pass"
        gate_call = gate.payloads()[-1]
        assert {k: gate_call[k] for k in ("name", "namespace", "phase", "type", "canaryVersion", "stableVersion",
                                          "canaryWeight")} == {
            "name": "gated", "namespace": "default", "phase": "WaitingPromotion", "type": "confirm-promotion",
            "canaryVersion": "2.0.0", "stableVersion": "1.0.0", "canaryWeight": 50}

        gate.status = 200
        st = wait_status(cluster, "gated", lambda s: s.get("phase") == "Succeeded", "promoted once the gate opened")
        assert st["stableVersion"] == "2.0.0" and [h["outcome"] for h in st["history"]] == ["promoted", "promoted"]
        assert "canaryTrafficPercent" not in cluster.get(ISVC, "gated")["spec"]["predictor"]

        # Every analysis of the canary had its own load-test call, each with the rollout's payload.
        passes = metric(op, "musicsplit_rollout_analyses_total", namespace="default", name="gated", result="pass")
        calls = load.payloads()
        assert passes >= 2 and len(calls) >= passes, (passes, len(calls))
        assert {(c["canaryVersion"], c["stableVersion"], c["canaryWeight"], c["type"]) for c in calls} == {
            ("2.0.0", "1.0.0", 50, "rollout")}
        assert {c["phase"] for c in calls} <= {"Progressing", "WaitingPromotion"}
        assert all(c["metadata"] == {"cmd": "hey -z 1m"} for c in calls)
        assert metric(op, "musicsplit_rollout_webhooks_total", namespace="default", name="gated",
                      type="confirm-promotion", outcome="ok") == 1

        # The event hook heard the rollout's Events as they happened, with the phase at each.
        cluster.wait(lambda: any(p["metadata"]["eventReason"] == "Promoted" and p["stableVersion"] == "2.0.0"
                                 for p in events.payloads()), 10, message="the Promoted event of 2.0.0 delivered")
        heard = [(p["metadata"]["eventReason"], p["phase"]) for p in events.payloads()]
        for seen in [("CanaryStarted", "Progressing"), ("WaitingForConfirmation", "WaitingPromotion"),
                     ("Promoting", "Promoting"), ("Promoted", "Succeeded")]:
            assert seen in heard, heard
    assert MARKER not in json.dumps(status(cluster, "gated")) + json.dumps(cluster.events())


def test_pre_rollout_failures_roll_back_at_the_threshold_before_any_traffic(env):
    cluster, _, op = env
    with Receiver(500) as smoke:
        hooks = [{"name": "smoke", "type": "pre-rollout", "url": smoke.url + "/smoke", "timeout": "2s"}]
        base = model("smoked", "1.0.0", webhooks=hooks, analysis={"threshold": 2})
        deployed(cluster, base)
        cluster.apply(model("smoked", "2.0.0", webhooks=hooks, analysis={"threshold": 2}))
        st = wait_status(cluster, "smoked", lambda s: s.get("phase") == "RolledBack", "rolled back")
        reason = st["history"][-1]["reason"]
        assert "pre-rollout webhook smoke failed: HTTP 500" in reason and "(2 failed analyses, threshold 2)" in reason
        assert len(smoke.seen("/smoke")) == 2
        first = smoke.payloads()[0]
        assert (first["phase"], first["canaryVersion"], first["canaryWeight"]) == ("Progressing", "2.0.0", 0)
        reasons = event_reasons(cluster, "smoked")
        assert "StepAdvanced" not in reasons and reasons.count("AnalysisFailed") == 1  # no weight, ever
        assert cluster.get(ISVC, "smoked")["spec"]["predictor"]["canaryTrafficPercent"] == 0
        assert metric(op, "musicsplit_rollout_webhooks_total", namespace="default", name="smoked",
                      type="pre-rollout", outcome="rejected") == 2
        assert metric(op, "musicsplit_rollout_analyses_total", namespace="default", name="smoked",
                      result="fail") == 2
    assert MARKER not in json.dumps(status(cluster, "smoked")) + json.dumps(cluster.events())


def test_promote_wins_over_a_closed_confirm_rollout_gate(env):
    cluster, _, _ = env
    with Receiver(403) as gate:
        hooks = [{"name": "start", "type": "confirm-rollout", "url": gate.url + "/start"}]
        deployed(cluster, model("waiting", "1.0.0", webhooks=hooks))
        cluster.apply(model("waiting", "2.0.0", webhooks=hooks))
        wait_status(cluster, "waiting", lambda s: s.get("phase") == "Waiting", "waiting for confirm-rollout")
        cluster.wait(lambda: len(gate.seen("/start")) >= 2, 20, message="the gate polled")
        row = cluster.kubectl("get", "sm", "waiting").stdout.splitlines()[1].split()
        assert row[1:5] == ["1.0.0", "2.0.0", "0", "Waiting"]
        isvc = cluster.get(ISVC, "waiting")["spec"]["predictor"]
        assert isvc["model"]["storageUri"].endswith("/1.0.0") and "canaryTrafficPercent" not in isvc  # not deployed
        cluster.kubectl("annotate", "sm", "waiting", "musicsplit.io/action=promote")
        st = wait_status(cluster, "waiting", lambda s: s.get("phase") == "Succeeded", "promoted by hand")
        assert st["stableVersion"] == "2.0.0" and "ManualPromotion" in event_reasons(cluster, "waiting")


def test_a_canary_held_past_its_deadline_is_escalated_and_keeps_its_traffic(env):
    cluster, _, op = env
    # Nobody uses "quiet": its analyses hold for lack of user requests.
    base = model("quiet", "1.0.0", rollout={"holdDeadline": "2s", "onHoldDeadline": "escalate"})
    deployed(cluster, base)
    assert metric(op, "musicsplit_rollout_hold_deadline_exceeded_total", namespace="default", name="quiet") == 0
    cluster.apply(model("quiet", "2.0.0", rollout={"holdDeadline": "2s", "onHoldDeadline": "escalate"}))
    st = wait_status(cluster, "quiet", lambda s: s.get("holdDeadlineExceededAt"), "escalated")
    cond = condition(st, "HoldDeadlineExceeded")
    assert cond["status"] == "True" and cond["reason"] == "Escalated" and "InsufficientData" in cond["message"]
    assert st["phase"] == "Progressing" and st["canaryWeight"] == 50
    assert cluster.get(ISVC, "quiet")["spec"]["predictor"]["canaryTrafficPercent"] == 50
    cluster.wait(lambda: "HoldDeadlineExceeded" in event_reasons(cluster, "quiet"), 10, message="the Event")
    assert metric(op, "musicsplit_rollout_hold_deadline_exceeded_total", namespace="default", name="quiet") == 1
    cluster.kubectl("annotate", "sm", "quiet", "musicsplit.io/action=abort")
    st = wait_status(cluster, "quiet", lambda s: s.get("phase") == "RolledBack", "aborted")
    assert condition(st, "HoldDeadlineExceeded")["status"] == "False" and "holdStartedAt" not in st
    assert event_reasons(cluster, "quiet").count("HoldDeadlineExceeded") == 1


def test_the_webhooks_example_is_a_valid_separation_model(env):
    cluster, _, _ = env
    doc = yaml.safe_load((MANIFESTS / "examples" / "htdemucs-canary-webhooks.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = "example-webhooks"
    out = cluster.apply(doc)
    assert "created" in out.stdout
    spec = cluster.get(SM, "example-webhooks")["spec"]
    assert spec["analysis"]["threshold"] >= 2 and {h["type"] for h in spec["analysis"]["webhooks"]} >= {
        "rollout", "confirm-promotion", "event"}
