"""End to end: a real Prometheus scrapes real predictor processes under a
little traffic; the operator (a real process, against the kmock API) rolls a
degraded canary back at its first step and promotes a healthy one to 100 %.

Only KServe's controller and Knative's router are played by the test (the
simulator sets the InferenceService's traffic; the load generator follows
that split, request by request, as Knative does).
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.checkpoints import make_model_dir
from musicsplit.localstack import start_predictor
from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator
from tests.fixtures.prometheus import Prometheus

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("prometheus"), reason="needs the prometheus binary "
                                                                         "(.ci/install-operator.sh)")]

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAME = "tiny"  # the SeparationModel's name is the served model name (the `model` label)


class Traffic:
    """Requests at the InferenceService, split as the simulator says Knative routes them."""

    def __init__(self, sim: KServeSimulator, mixture, sample_rate):
        from musicsplit.v2client import V2Client

        self.sim, self.mixture, self.sr = sim, mixture, sample_rate
        self.clients: dict[str, V2Client] = {}
        self.sent: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")
        self._client_cls = V2Client
        self._rng = random.Random(0)

    def _run(self):
        while not self._stop.is_set():
            split = {u: w for u, w in (self.sim.split.get(("default", NAME)) or {}).items() if w > 0}
            if not split:
                self._stop.wait(0.2)
                continue
            url = self._rng.choices(list(split), weights=list(split.values()))[0]
            client = self.clients.setdefault(url, self._client_cls(url, timeout=30))
            try:
                client.separate(NAME, self.mixture, self.sr)
                self.sent[url] = self.sent.get(url, 0) + 1
            except Exception as e:  # noqa: BLE001 - recorded; a dead revision is the test's business
                self.errors.append(f"{url}: {e}")
                self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        for c in self.clients.values():
            c.close()


def sm(version: str, model_dir: Path, **spec) -> dict:
    doc = {
        "apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "model": {"architecture": "htdemucs", "version": version, "storageUri": f"file://{model_dir}"},
            "replicas": {"min": 1, "max": 1},
            "rollout": {"steps": [50, 100], "interval": "6s", "progressDeadline": "2m"},
            "analysis": {
                "window": "30s", "minRequests": 3,
                "maxErrorRate": 0.05, "maxP99LatencySeconds": 20,
                # Tiny random-weight test models score 0 on mixture consistency; the
                # relative checks (quality drop, golden-set SDR drop) are what judge them.
                "minQualityScore": 0.0, "maxQualityDrop": 0.05, "goldenSet": True, "maxSdrDropDb": 1.0,
            },
        },
    }
    doc["spec"].update(spec)
    return doc


def status(cluster) -> dict:
    return (cluster.get(SM, NAME) or {}).get("status") or {}


def checks(st: dict) -> dict:
    return {c["name"]: c for c in st["lastAnalysis"]["checks"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Predictors for a stable, a degraded and a healthy release, and Prometheus scraping them."""
    from musicsplit.golden import golden_set

    tmp = tmp_path_factory.mktemp("e2e")
    dirs = {"stable": make_model_dir(tmp / "stable", NAME, version="1.0.0"),
            "bad": make_model_dir(tmp / "bad", NAME, version="2.0.0", degrade=0.5),
            "good": make_model_dir(tmp / "good", NAME, version="2.1.0")}  # same weights: no regression
    procs = {}
    try:
        t0 = time.monotonic()
        for k, d in dirs.items():
            procs[k] = start_predictor(d, NAME, log_dir=tmp, args=["--max_queue", "4"])
        prom = Prometheus(tmp, [p.url.removeprefix("http://") for p in procs.values()])
        print(f"\nstartup (3 predictors + prometheus): {time.monotonic() - t0:.1f}s")
        item = golden_set(n=1, seconds=2.0, seed=7)[0]  # traffic: not one of the probe's items
        yield dirs, procs, prom, item
    finally:
        if "prom" in locals():
            prom.stop()
        for p in procs.values():
            p.stop()


def test_degraded_canary_is_rolled_back_and_a_healthy_one_promoted(stack, tmp_path):
    dirs, predictors, prom, item = stack
    stable_dir, bad_dir, good_dir = dirs["stable"], dirs["bad"], dirs["good"]
    bad, good = predictors["bad"], predictors["good"]
    endpoints = {f"file://{d}": predictors[k].url for k, d in dirs.items()}
    procs = []
    try:
        with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints) as sim, \
                Traffic(sim, item.mixture, item.sample_rate) as traffic:
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                          env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
            procs.append(op)
            cluster.apply(sm("1.0.0", stable_dir))
            cluster.wait(lambda: status(cluster).get("phase") == "Succeeded", 30, message="stable deployed")

            # -- a degraded release: rolled back at its first step
            t1 = time.monotonic()
            cluster.apply(sm("2.0.0", bad_dir))
            cluster.wait(lambda: status(cluster).get("canaryWeight") == 50, 20, message="canary at 50 %")
            st = cluster.wait(lambda: (s := status(cluster)).get("phase") in ("RolledBack", "Succeeded") and s,
                              120, message="a verdict on 2.0.0")
            print(f"degraded canary rolled back after {time.monotonic() - t1:.1f}s; sent {traffic.sent}")
            assert st["phase"] == "RolledBack", st
            assert st["stableVersion"] == "1.0.0" and st["canaryWeight"] == 0
            last = st["lastAnalysis"]
            assert last["weight"] == 50 and last["result"] == "fail" and last["canaryVersion"] == "2.0.0"
            c = checks(st)
            print("analysis:", {k: (v["value"], v["threshold"], v["result"]) for k, v in c.items()})
            assert c["goldenSdrDrop"]["result"] == "fail" and c["goldenSdrDrop"]["value"] > 1.0
            h = st["history"][-1]
            assert h["version"] == "2.0.0" and h["outcome"] == "rolledBack" and "goldenSdrDrop" in h["reason"]
            assert cluster.get(ISVC, NAME)["spec"]["predictor"]["canaryTrafficPercent"] == 0
            cluster.wait(lambda: "RolledBack" in [e["reason"] for e in cluster.events()], 10, message="Event")
            cluster.wait(lambda: sim.split.get(("default", NAME), {}).get(bad.url) == 0, 10,
                         message="no traffic to the rolled-back revision")
            # Prometheus did measure the canary: the verdict is not blind
            assert c["requests"]["result"] == "pass" and c["requests"]["value"] >= c["requests"]["threshold"], c
            assert c["errorRate"]["result"] != "hold" and c["errorRate"]["value"] is not None, c

            # -- a healthy release: 50 % -> 100 % -> promoted
            t2 = time.monotonic()
            cluster.apply(sm("2.1.0", good_dir))
            st = cluster.wait(lambda: (s := status(cluster)).get("phase") in ("Succeeded", "RolledBack")
                              and s.get("history", [{}])[-1].get("version") == "2.1.0" and s, 150,
                              message="a verdict on 2.1.0")
            print(f"healthy canary promoted after {time.monotonic() - t2:.1f}s; sent {traffic.sent}")
            assert st["phase"] == "Succeeded", st
            assert st["stableVersion"] == "2.1.0" and "canaryVersion" not in st
            assert [h["outcome"] for h in st["history"]] == ["promoted", "rolledBack", "promoted"]
            c = checks(st)
            print("analysis:", {k: (v["value"], v["threshold"], v["result"]) for k, v in c.items()})
            assert st["lastAnalysis"]["result"] == "pass" and st["lastAnalysis"]["weight"] == 100
            assert c["requests"]["result"] == "pass" and c["requests"]["value"] >= 3 and c["errorRate"]["value"] == 0
            assert abs(c["goldenSdrDrop"]["value"]) < 1.0
            assert "canaryTrafficPercent" not in cluster.get(ISVC, NAME)["spec"]["predictor"]
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {good.url: 1.0}, 10,
                         message="100 % of traffic to 2.1.0")
            cluster.wait(lambda: {"StepAdvanced", "Promoting", "Promoted"} <= {e["reason"] for e in cluster.events()},
                         10, message="Events")
            op.stop()
            assert "Traceback" not in op.log(), op.log()[-5000:]
    finally:
        for p in reversed(procs):
            p.stop()


def test_raw_deployment_canary_takes_all_traffic_and_is_rolled_back_by_redeploying_stable(stack, tmp_path):
    dirs, predictors, prom, item = stack
    endpoints = {f"file://{d}": predictors[k].url for k, d in dirs.items()}
    raw = {"deploymentMode": "RawDeployment"}
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints) as sim, \
            Traffic(sim, item.mixture, item.sample_rate):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0, env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
        try:
            cluster.apply(sm("1.0.0", dirs["stable"], **raw))
            # While stable serves alone, its golden-set baseline is measured (no previous revision later).
            st = cluster.wait(lambda: (s := status(cluster)).get("goldenBaseline") and s, 60, message="baseline")
            assert st["phase"] == "Succeeded" and st["goldenBaseline"]["version"] == "1.0.0"
            cond = next(c for c in st["conditions"] if c["type"] == "TrafficSplit")
            assert cond["status"] == "False" and cond["reason"] == "RawDeploymentMode"

            t0 = time.monotonic()
            cluster.apply(sm("2.0.0", dirs["bad"], **raw))
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {predictors["bad"].url: 1.0}, 20,
                         message="all traffic on the new version (no split in RawDeployment)")
            isvc = cluster.get(ISVC, NAME)
            assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
            # Ready without revisions: the simulator reports what KServe's PropagateRawStatus does.
            assert "latestReadyRevision" not in isvc["status"]["components"]["predictor"]
            st = cluster.wait(lambda: (s := status(cluster)).get("phase") in ("RolledBack", "Succeeded")
                              and s.get("history", [{}])[-1].get("version") == "2.0.0" and s, 120,
                              message="a verdict on 2.0.0")
            print(f"RawDeployment: degraded version rolled back after {time.monotonic() - t0:.1f}s")
            assert st["phase"] == "RolledBack" and st["history"][-1]["outcome"] == "rolledBack"
            assert "goldenSdrDrop" in st["history"][-1]["reason"]
            isvc = cluster.get(ISVC, NAME)
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"file://{dirs['stable']}"
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {predictors["stable"].url: 1.0}, 20,
                         message="stable serving all traffic again")
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]
