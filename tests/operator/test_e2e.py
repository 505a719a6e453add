"""End to end: a real Prometheus scrapes real predictor processes, the
operator (a real process, against the kmock API) judges canaries on their
users' requests in their own namespace.

- A degraded release is rolled back at its first step; a healthy one with no
  users holds however long it waits although its golden-set probe ran, and
  is promoted once users reach it.
- Two SeparationModels with one name, one version pair, in two namespaces:
  the degraded one is rolled back, the healthy one promoted.
- RawDeployment: the new version takes all traffic, a degraded one is rolled
  back by redeploying the stable.
- A degraded canary nobody uses is rolled back by the golden set alone: the
  model owner's reference tracks, from a ConfigMap.

Only KServe's controller and Knative's router are played by the test (the
simulator sets the InferenceService's traffic; the load generator follows
that split, request by request, as Knative does). Stable and healthy
releases serve the DSP baseline (mixture-consistent, quality ~1); the
degraded one is a tiny Demucs drowned in noise (quality 0, worse SDR).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from musicsplit.localstack import start_predictor
from tests.fixtures.checkpoints import make_model_dir
from tests.fixtures.prometheus import Prometheus, scrape_job
from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator

pytestmark = pytest.mark.slow

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAME = "sep"  # the SeparationModel's name is the served model name (the `model` label)
OTHER = "team-b"
INTERVAL_S = 6


def uri(namespace: str, version: str) -> str:
    return f"gs://models/{namespace}/{NAME}/{version}"


class Traffic:
    """Users' requests at one InferenceService, split as the simulator says
    Knative routes them; paused, nobody uses the model."""

    def __init__(self, sim: KServeSimulator, mixture, sample_rate, namespace: str = "default"):
        from musicsplit.v2client import V2Client

        self.sim, self.mixture, self.sr, self.key = sim, mixture, sample_rate, (namespace, NAME)
        self.clients: dict[str, V2Client] = {}
        self.sent: dict[str, int] = {}
        self.errors: list[str] = []
        self.on = threading.Event()
        self.on.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"traffic-{namespace}")
        self._client_cls = V2Client
        self._rng = random.Random(0)

    def _run(self):
        while not self._stop.is_set():
            split = {u: w for u, w in (self.sim.split.get(self.key) or {}).items() if w > 0}
            if not split or not self.on.is_set():
                self._stop.wait(0.2)
                continue
            url = self._rng.choices(list(split), weights=list(split.values()))[0]
            client = self.clients.setdefault(url, self._client_cls(url, timeout=30))
            try:
                client.separate(NAME, self.mixture, self.sr)
                self.sent[url] = self.sent.get(url, 0) + 1
            except Exception as e:  # noqa: BLE001 - recorded; a dead revision is the test's business
                self.errors.append(f"{url}: {e}")
            self._stop.wait(0.1)  # a few users, not a load test

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        for c in self.clients.values():
            c.close()


def sm(version: str, namespace: str = "default", **spec) -> dict:
    doc = {
        "apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"architecture": "htdemucs", "version": version, "storageUri": uri(namespace, version)},
            "replicas": {"min": 1, "max": 1},
            "rollout": {"steps": [50, 100], "interval": f"{INTERVAL_S}s", "progressDeadline": "2m"},
            "analysis": {"window": "30s", "minRequests": 3, "maxErrorRate": 0.05, "maxP99LatencySeconds": 20,
                         "minQualityScore": 0.5, "maxQualityDrop": 0.05,
                         "goldenSet": {"builtin": True, "realMusic": False, "maxSdrDropDb": 1.0}},
        },
    }
    doc["spec"].update(spec)
    return doc


def status(cluster, namespace: str = "default") -> dict:
    return (cluster.get(SM, NAME, namespace) or {}).get("status") or {}


def checks(st: dict) -> dict:
    return {c["name"]: c for c in st["lastAnalysis"]["checks"]}


def verdict(cluster, version: str, namespace: str = "default", timeout: float = 150) -> dict:
    return cluster.wait(lambda: (s := status(cluster, namespace)).get("phase") in ("Succeeded", "RolledBack")
                        and (s.get("history") or [{}])[-1].get("version") == version and s, timeout,
                        message=f"a verdict on {namespace}/{version}")


def requests_by_source(url: str, version: str) -> dict[str, float]:
    """The predictor's own count of requests per source, from its /metrics."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == "musicsplit_requests_total" and s.labels.get("model_version") == version:
                out[s.labels["source"]] = out.get(s.labels["source"], 0) + s.value
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Predictors in two namespaces and a Prometheus scraping them, each
    target labelled with its namespace as a Kubernetes scrape labels it."""
    from musicsplit.golden import golden_set

    tmp = tmp_path_factory.mktemp("e2e")
    dsp = "builtin://dsp-baseline"
    bad_dir = make_model_dir(tmp / "bad", NAME, version="2.0.0", degrade=0.5)
    wanted = {  # (namespace, version) -> model dir; the expected version names what the dir does not
        ("default", "1.0.0"): dsp, ("default", "2.0.0"): str(bad_dir), ("default", "2.1.0"): dsp,
        (OTHER, "1.0.0"): dsp, (OTHER, "2.0.0"): dsp,
    }
    procs = {}
    prom = None
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(wanted)) as pool:
            futures = {k: pool.submit(start_predictor, d, NAME, log_dir=tmp, args=["--max_queue", "4"],
                                      env={"MUSICSPLIT_EXPECTED_VERSION": k[1]}) for k, d in wanted.items()}
            procs = {k: f.result() for k, f in futures.items()}
        prom = Prometheus(tmp, jobs=[
            scrape_job(f"predictors-{ns}", [p.url.removeprefix("http://") for (n, _), p in procs.items() if n == ns],
                       "predictor", namespace=ns) for ns in ("default", OTHER)])
        print(f"\nstartup ({len(procs)} predictors + prometheus): {time.monotonic() - t0:.1f}s")
        item = golden_set(n=1, seconds=2.0, seed=7)[0]  # traffic: not one of the probe's items
        yield procs, prom, item
    finally:
        if prom:
            prom.stop()
        for p in procs.values():
            p.stop()


def endpoints(procs) -> dict[str, str]:
    return {uri(ns, v): p.url for (ns, v), p in procs.items()}


def test_a_canary_is_judged_on_its_users_requests_only(stack, tmp_path):
    procs, prom, item = stack
    bad, good = procs[("default", "2.0.0")], procs[("default", "2.1.0")]
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints(procs)) as sim, \
            Traffic(sim, item.mixture, item.sample_rate) as traffic:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                      env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
        try:
            cluster.apply(sm("1.0.0"))
            cluster.wait(lambda: status(cluster).get("phase") == "Succeeded", 30, message="stable deployed")

            # -- a degraded release: rolled back at its first step, on what its users got
            t1 = time.monotonic()
            # Two intervals at the first step: the golden set fails this canary at once, and on a loaded
            # machine one interval of a 50 % split may not bring the users' minRequests to it yet.
            cluster.apply(sm("2.0.0", rollout={"steps": [50, 100], "interval": f"{2 * INTERVAL_S}s",
                                               "progressDeadline": "2m"}))
            cluster.wait(lambda: status(cluster).get("canaryWeight") == 50, 20, message="canary at 50 %")
            st = verdict(cluster, "2.0.0")
            print(f"degraded canary: {st['phase']} after {time.monotonic() - t1:.1f}s; sent {traffic.sent}")
            assert st["phase"] == "RolledBack", st
            assert st["stableVersion"] == "1.0.0" and st["canaryWeight"] == 0
            last = st["lastAnalysis"]
            assert last["weight"] == 50 and last["result"] == "fail" and last["canaryVersion"] == "2.0.0"
            c = checks(st)
            print("analysis:", {k: (v.get("value"), v["threshold"], v["result"]) for k, v in c.items()})
            # Prometheus measured the users' requests: the verdict is not blind, and not the probe's.
            assert c["requests"]["result"] == "pass" and c["requests"]["value"] >= c["requests"]["threshold"], c
            assert c["qualityScore"]["result"] == "fail" and c["qualityDrop"]["result"] == "fail", c
            h = st["history"][-1]
            assert h["outcome"] == "rolledBack" and "qualityScore" in h["reason"]
            assert cluster.get(ISVC, NAME)["spec"]["predictor"]["canaryTrafficPercent"] == 0
            # The golden-set probe, started when the canary got its traffic, says the same.
            st = cluster.wait(lambda: (s := status(cluster)).get("probe", {}).get("version") == "2.0.0"
                              and "meanSdr" in s["probe"] and "meanSdr" in s.get("goldenBaseline", {}) and s, 60,
                              message="the golden-set results of 2.0.0 and 1.0.0")
            assert st["goldenBaseline"]["version"] == "1.0.0"
            assert st["goldenBaseline"]["meanSdr"] - st["probe"]["meanSdr"] > 1.0, (st["goldenBaseline"], st["probe"])
            cluster.wait(lambda: "RolledBack" in [e["reason"] for e in cluster.events()], 10, message="Event")
            cluster.wait(lambda: sim.split.get(("default", NAME), {}).get(bad.url) == 0, 10,
                         message="no traffic to the rolled-back revision")

            # -- a healthy release nobody uses: the probe runs, the canary holds
            traffic.on.clear()
            t2 = time.monotonic()
            cluster.apply(sm("2.1.0"))
            st = cluster.wait(lambda: (s := status(cluster)).get("probe", {}).get("version") == "2.1.0"
                              and s["probe"].get("meanSdr") is not None and s, 60,
                              message="the golden-set probe of 2.1.0 in status")
            probes = requests_by_source(good.url, "2.1.0")
            print(f"probe of 2.1.0: {st['probe']['meanSdr']} dB; the canary's requests by source: {probes}")
            # The probe alone sent more requests (4) than minRequests (3): counted, they would have sufficed.
            assert probes.get("probe", 0) >= 4 and probes.get("user", 0) == 0
            # Several analysis intervals, every analysis a hold for want of users.
            st = cluster.wait(lambda: (s := status(cluster)).get("holds", 0) >= 5
                              and time.monotonic() - t2 >= 3 * INTERVAL_S and s, 60,
                              message="analyses held over three intervals")
            print(f"no users: {st['holds']} holds in {time.monotonic() - t2:.1f}s")
            assert st["phase"] == "Progressing" and st["canaryVersion"] == "2.1.0" and st["canaryWeight"] == 50
            assert st["lastAnalysis"]["reason"] == "InsufficientData"
            assert "not enough user requests" in st["lastAnalysis"]["message"]
            assert checks(st)["requests"]["value"] == 0 and checks(st)["goldenSdrDrop"]["result"] == "pass"
            assert all(h["version"] != "2.1.0" for h in st["history"])
            assert requests_by_source(good.url, "2.1.0").get("probe") == probes["probe"]  # probed once, not per tick

            # -- the same canary once users reach it: promoted
            traffic.on.set()
            st = verdict(cluster, "2.1.0")
            print(f"healthy canary promoted {time.monotonic() - t2:.1f}s after it started; sent {traffic.sent}")
            assert st["phase"] == "Succeeded", st
            assert st["stableVersion"] == "2.1.0" and "canaryVersion" not in st
            assert [h["outcome"] for h in st["history"]] == ["promoted", "rolledBack", "promoted"]
            c = checks(st)
            print("analysis:", {k: (v.get("value"), v["threshold"], v["result"]) for k, v in c.items()})
            assert st["lastAnalysis"]["result"] == "pass" and st["lastAnalysis"]["weight"] == 100
            assert c["requests"]["result"] == "pass" and c["errorRate"]["value"] == 0
            assert c["qualityScore"]["value"] > 0.9 and abs(c["goldenSdrDrop"]["value"]) < 1.0
            assert "canaryTrafficPercent" not in cluster.get(ISVC, NAME)["spec"]["predictor"]
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {good.url: 1.0}, 10,
                         message="100 % of traffic to 2.1.0")
            cluster.wait(lambda: {"StepAdvanced", "Promoting", "Promoted"} <= {e["reason"] for e in cluster.events()},
                         10, message="Events")
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]


def golden_configmap(cluster, workdir: Path, name: str = "refs") -> None:
    """Two 0.6 s reference tracks at 22.05 kHz (16-bit wav: 520 KiB, under the
    ConfigMap's 1 MiB of data and, base64-encoded, under kmock's 1 MiB request
    body), made into a ConfigMap as users make one."""
    import io

    import soundfile as sf

    from musicsplit.golden import golden_set

    folder = workdir / name
    folder.mkdir()
    for i, item in enumerate(golden_set(n=2, seconds=0.6, sample_rate=22050, seed=21)):
        for part, audio in (("mixture", item.mixture), *item.stems.items()):
            buf = io.BytesIO()
            sf.write(buf, audio.T, item.sample_rate, format="WAV", subtype="PCM_16")
            (folder / f"track{i}.{part}.wav").write_bytes(buf.getvalue())
    # kubectl create configmap --from-file; through `create -f`: kubectl sends kmock no protobuf that way.
    made = cluster.kubectl("create", "configmap", name, f"--from-file={folder}", "--dry-run=client", "-o",
                           "yaml").stdout
    cluster.kubectl("create", "-f", "-", input=made)


def golden_series(url: str) -> dict[tuple[str, str, str], float]:
    """musicsplit_golden_sdr_db of default/sep on the operator's /metrics: (role, version, stem) -> dB."""
    return {(s.labels["role"], s.labels["model_version"], s.labels["stem"]): s.value
            for family in text_string_to_metric_families(httpx.get(url, timeout=5).text)
            for s in family.samples if s.name == "musicsplit_golden_sdr_db"
            and (s.labels["namespace"], s.labels["name"]) == ("default", NAME)}


def test_a_degraded_canary_is_rolled_back_by_the_users_golden_set_alone(stack, tmp_path):
    """No user reaches the canary, so Prometheus has nothing to judge; the
    golden set from the model owner's ConfigMap measures the drop and rolls it back."""
    procs, prom, _ = stack
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints(procs)):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                      env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
        try:
            golden_configmap(cluster, tmp_path)

            def model(version):
                doc = sm(version)
                doc["spec"]["analysis"]["goldenSet"] = {"configMap": "refs", "maxSdrDropDb": 1.0}
                return doc

            cluster.apply(model("1.0.0"))
            # Serving alone, the stable is measured on the user's tracks: its baseline for later.
            st = cluster.wait(lambda: (s := status(cluster)).get("goldenBaseline", {}).get("meanSdr") and s, 60,
                              message="the stable's golden SDR on the ConfigMap's tracks")
            base = st["goldenBaseline"]
            assert base["version"] == "1.0.0" and base["goldenSet"] == "configMap:refs" and base["items"] == 2
            assert base["sets"] == {"configMap/refs": {"items": 2, "meanSdr": base["meanSdr"]}}
            assert set(base["perStem"]) == {"drums", "bass", "other", "vocals"}
            cluster.wait(lambda: ("current", "1.0.0", "mean") in golden_series(op.metrics_url), 20,
                         message="the stable's golden SDR on /metrics")

            cluster.apply(model("2.0.0"))
            st = verdict(cluster, "2.0.0")
            print("golden-set rollback:", {k: (v.get("value"), v["result"]) for k, v in checks(st).items()})
            assert st["phase"] == "RolledBack" and st["stableVersion"] == "1.0.0"
            c = checks(st)
            assert [n for n, v in c.items() if v["result"] == "fail"] == ["goldenSdrDrop"]
            assert c["requests"]["result"] == "hold" and c["requests"]["value"] == 0  # no users: Prometheus can't
            assert c["goldenSdrDrop"]["value"] > 1.0
            assert set(c["goldenSdrDrop"]["perStem"]) == {"drums", "bass", "other", "vocals"}
            h = st["history"][-1]
            assert h["outcome"] == "rolledBack" and "goldenSdrDrop" in h["reason"]
            assert h["goldenSdr"]["goldenSet"] == "configMap:refs"
            assert h["goldenSdr"]["mean"] == st["probe"]["meanSdr"] < base["meanSdr"] - 1.0
            # After a rollback the stable is `current` and the rolled-back version's series are gone.
            series = cluster.wait(lambda: (g := golden_series(op.metrics_url)) and all(
                v == "1.0.0" for _, v, _ in g) and g, 20, message="the rolled-back version's series gone")
            assert {role for role, _, _ in series} == {"current"}
            assert series[("current", "1.0.0", "mean")] == pytest.approx(base["meanSdr"], abs=1e-3)
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]


def test_same_named_models_in_two_namespaces_are_judged_apart(stack, tmp_path):
    """`sep` 1.0.0 -> 2.0.0 in both namespaces: degraded in default, healthy in
    team-b. Counted together, team-b's canary would carry default's quality 0."""
    procs, prom, item = stack
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints(procs)) as sim, \
            Traffic(sim, item.mixture, item.sample_rate, "default") as traffic_a, \
            Traffic(sim, item.mixture, item.sample_rate, OTHER) as traffic_b:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0, namespace=None,
                      env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
        try:
            for ns in ("default", OTHER):
                cluster.apply(sm("1.0.0", ns))
            for ns in ("default", OTHER):
                cluster.wait(lambda: status(cluster, ns).get("phase") == "Succeeded", 30, message=f"{ns} deployed")
            for ns in ("default", OTHER):
                cluster.apply(sm("2.0.0", ns))
            a, b = verdict(cluster, "2.0.0", "default"), verdict(cluster, "2.0.0", OTHER)
            print(f"sent: default {traffic_a.sent}, {OTHER} {traffic_b.sent}")
            for ns, st in (("default", a), (OTHER, b)):
                print(ns, st["phase"], {k: (v.get("value"), v["result"]) for k, v in checks(st).items()})
            assert a["phase"] == "RolledBack" and a["stableVersion"] == "1.0.0"
            assert checks(a)["qualityScore"]["result"] == "fail" and checks(a)["requests"]["result"] == "pass"
            assert b["phase"] == "Succeeded" and b["stableVersion"] == "2.0.0", b
            cb = checks(b)
            assert cb["requests"]["result"] == "pass" and cb["qualityScore"]["value"] > 0.9
            assert cb["qualityDrop"]["result"] == "pass" and cb["goldenSdrDrop"]["result"] == "pass"
            # Each rollout moved its own InferenceService only.
            assert cluster.get(ISVC, NAME, "default")["spec"]["predictor"]["canaryTrafficPercent"] == 0
            assert "canaryTrafficPercent" not in cluster.get(ISVC, NAME, OTHER)["spec"]["predictor"]
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]


def test_raw_deployment_canary_takes_all_traffic_and_is_rolled_back_by_redeploying_stable(stack, tmp_path):
    procs, prom, item = stack
    raw = {"deploymentMode": "RawDeployment"}
    stable, bad = procs[("default", "1.0.0")], procs[("default", "2.0.0")]
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints(procs)) as sim, \
            Traffic(sim, item.mixture, item.sample_rate):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, tmp_path / "operator.log", tick=1.0,
                      env={"MUSICSPLIT_OPERATOR_PROMETHEUS_URL": prom.url})
        try:
            cluster.apply(sm("1.0.0", **raw))
            # While stable serves alone, its golden-set baseline is measured (no previous revision later).
            st = cluster.wait(lambda: (s := status(cluster)).get("goldenBaseline", {}).get("meanSdr") and s, 60,
                              message="baseline")
            assert st["phase"] == "Succeeded" and st["goldenBaseline"]["version"] == "1.0.0"
            cond = next(c for c in st["conditions"] if c["type"] == "TrafficSplit")
            assert cond["status"] == "False" and cond["reason"] == "RawDeploymentMode"

            t0 = time.monotonic()
            cluster.apply(sm("2.0.0", **raw))
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {bad.url: 1.0}, 20,
                         message="all traffic on the new version (no split in RawDeployment)")
            isvc = cluster.get(ISVC, NAME)
            assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
            # Ready without revisions: the simulator reports what KServe's PropagateRawStatus does.
            assert "latestReadyRevision" not in isvc["status"]["components"]["predictor"]
            st = verdict(cluster, "2.0.0", timeout=120)
            print(f"RawDeployment: degraded version rolled back after {time.monotonic() - t0:.1f}s")
            assert st["phase"] == "RolledBack" and st["history"][-1]["outcome"] == "rolledBack"
            assert "qualityScore" in st["history"][-1]["reason"]
            # The canary's golden-set result (probed at the one URL RawDeployment has) against the baseline.
            st = cluster.wait(lambda: (s := status(cluster)).get("probe", {}).get("version") == "2.0.0"
                              and "meanSdr" in s["probe"] and s, 60, message="the golden-set result of 2.0.0")
            assert st["goldenBaseline"]["meanSdr"] - st["probe"]["meanSdr"] > 1.0
            isvc = cluster.get(ISVC, NAME)
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == uri("default", "1.0.0")
            cluster.wait(lambda: sim.split.get(("default", NAME)) == {stable.url: 1.0}, 20,
                         message="stable serving all traffic again")
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]
