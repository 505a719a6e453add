"""The golden-set probe, off the reconcile path: what one probe records, the
worker that runs them (bounded, one per object), and the operator's ticks
keeping their interval while a probe is slow.

Real predictors (the DSP baseline, served as versions 1.0.0 and 2.0.0)
behind recording proxies; a cleared gate makes a proxy as slow as the test
wants.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from musicsplit.localstack import start_predictor, wait_until
from musicsplit.operator.probe import ProbeWorker, run_target
from musicsplit.operator.scheduler import ProbeJob, ProbeTarget
from musicsplit.v2client import JSON_LENGTH_HEADER, SOURCE_HEADER
from tests.fixtures.recorder import Recorder
from tests.operator.cluster import SM, UNREACHABLE, Cluster, KServeSimulator, Operator
from tests.operator.test_e2e import golden_configmap

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAME = "dsp"


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    """`dsp` as stable 1.0.0 and canary 2.0.0 (the DSP baseline: no weights, fast)."""
    logs = tmp_path_factory.mktemp("probe-logs")
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda v: start_predictor("builtin://dsp-baseline", NAME, log_dir=logs,
                                                          env={"MUSICSPLIT_EXPECTED_VERSION": v}),
                                ("1.0.0", "2.0.0")))
    try:
        yield dict(zip(("1.0.0", "2.0.0"), started))
    finally:
        for p in started:
            p.stop()


def target(version, url, role="canary"):
    return ProbeTarget(role, version, f"gs://m/{version}", url)


@pytest.mark.slow
def test_a_probe_records_the_scores_of_the_release_it_was_sent_to(predictors):
    with Recorder(forward_to=predictors["2.0.0"].url) as proxy:
        rec = run_target(target("2.0.0", proxy.url), NAME, timeout_s=60)
    assert rec["version"] == "2.0.0" and rec["storageUri"] == "gs://m/2.0.0" and "error" not in rec
    assert rec["servedVersion"] == "2.0.0" and rec["items"] == 6
    assert 3 < rec["meanSdr"] < 10 and set(rec["perStem"]) == {"drums", "bass", "other", "vocals"}
    # The real excerpts are scored apart from the synthetic items, per item and per stem.
    assert {k: v["items"] for k, v in rec["sets"].items()} == {"builtin": 4, "builtin-real": 2}
    assert rec["sets"]["builtin-real"]["meanSdr"] != rec["sets"]["builtin"]["meanSdr"]
    assert set(rec["perItem"]) == {*(f"golden-0-{i:02d}" for i in range(4)), "real-lithium-112s", "real-lithium-196s"}
    assert set(rec["perItem"]["real-lithium-112s"]) == {"drums", "bass", "other", "vocals"}
    assert rec["startedAt"] <= rec["measuredAt"]
    # Marked as the probe's, and repeatable: the predictor keeps it out of the users' metrics.
    sent = proxy.seen(f"/v2/models/{NAME}/infer")
    assert len(sent) == 6 and all(r.headers[SOURCE_HEADER.lower()] == "probe" for r in sent)
    assert all(orjson.loads(r.body[:int(r.headers[JSON_LENGTH_HEADER.lower()])])["parameters"]["shifts"] == 0
               for r in sent)
    # Deterministic: the same release scores the same.
    again = run_target(target("2.0.0", predictors["2.0.0"].url), NAME, timeout_s=60)
    assert again["meanSdr"] == rec["meanSdr"]


@pytest.mark.parametrize("make, words", [
    (lambda p: target("2.0.0", p["1.0.0"].url), "answered by model_version 1.0.0, not 2.0.0"),
    (lambda p: ProbeTarget("canary", "2.0.0", "gs://m/2", None, "KServe reports no URL for the latest revision"),
     "KServe reports no URL for the latest revision"),
    (lambda p: target("2.0.0", UNREACHABLE), "ConnectError"),
    (lambda p: target("2.0.0", p["2.0.0"].url + "/nowhere"), "HTTP 404 from the predictor"),
])
def test_a_probe_that_cannot_measure_the_release_records_why(predictors, make, words):
    rec = run_target(make(predictors), NAME, timeout_s=10, settle_s=0)
    assert words in rec["error"] and "meanSdr" not in rec and rec["measuredAt"]


@pytest.mark.slow
def test_a_probe_waits_for_the_release_to_take_over_its_url(predictors):
    """RawDeployment: for a moment after the switch the URL still reaches the old pods."""
    http = httpx.Client(timeout=60)

    def switching(req):
        answered = 0 if len(proxy.seen()) <= 2 else 1  # the first two requests reach the old version
        r = http.post([predictors["1.0.0"].url, predictors["2.0.0"].url][answered] + req.path, content=req.body,
                      headers={k: v for k, v in req.headers.items() if k not in ("host", "content-length")})
        return r.status_code, {"content-type": r.headers["content-type"],
                               JSON_LENGTH_HEADER: r.headers.get(JSON_LENGTH_HEADER, str(len(r.content)))}, r.content

    with http, Recorder(switching) as proxy:
        rec = run_target(target("2.0.0", proxy.url), NAME, timeout_s=60, settle_s=30)
    assert "error" not in rec, rec
    assert rec["servedVersion"] == "2.0.0" and rec["items"] == 6
    assert len(proxy.seen(f"/v2/models/{NAME}/infer")) == 8  # twice the first item for nothing, then the set


@pytest.mark.slow
def test_the_worker_runs_one_probe_per_object_and_others_meanwhile(predictors):
    written: list[tuple[str, str, dict]] = []
    gate = threading.Event()
    worker = ProbeWorker(lambda ns, name, fields: written.append((ns, name, fields)), workers=2, timeout_s=60)
    try:
        with Recorder(forward_to=predictors["2.0.0"].url, gate=gate) as slow:
            held = ProbeJob("a", NAME, (target("2.0.0", slow.url), target("1.0.0", predictors["1.0.0"].url, "stable")),
                            uid="uid-1")
            assert worker.submit(held)
            wait_until(lambda: slow.seen(), 60, "the slow probe's first request")
            assert not worker.submit(held) and worker.busy("a", NAME)  # one at a time per object
            assert worker.submit(ProbeJob("b", NAME, (target("2.0.0", predictors["2.0.0"].url),)))
            wait_until(lambda: any(ns == "b" for ns, _, _ in written), 60, "the other object's result")
            assert not any(ns == "a" for ns, _, _ in written)
            gate.set()
            wait_until(lambda: len([w for w in written if w[0] == "a"]) == 2, 60, "both results of the slow job")
        a = [fields for ns, _, fields in written if ns == "a"]
        assert a[0]["probe"]["version"] == "2.0.0" and a[1]["goldenBaseline"]["version"] == "1.0.0"
        assert a[0]["probe"]["meanSdr"] == a[1]["goldenBaseline"]["meanSdr"]  # same DSP, same score
        wait_until(lambda: not worker.busy("a", NAME), 60, "the slow job to end")
        # A tick that read status just before the results landed asks again: measured already.
        assert not worker.submit(held)
        # The same name created again is another object: probed afresh.
        assert worker.submit(replace(held, uid="uid-2"))
    finally:
        gate.set()
        worker.shutdown()


# -------------------------------------------------------------- the operator


def model(namespace: str, version: str) -> dict:
    doc = yaml.safe_load((MANIFESTS / "examples" / "htdemucs.yaml").read_text())
    doc["metadata"] = {"name": NAME, "namespace": namespace}
    doc["spec"]["model"].update(architecture="dsp-baseline", version=version,
                                storageUri=f"gs://models/{namespace}/{version}")
    doc["spec"]["rollout"].update(steps=[50], interval="1s")
    doc["spec"]["analysis"].update(goldenSet={"builtin": True, "realMusic": False})  # the synthetic items: cheaper
    return doc


@pytest.mark.slow
def test_a_slow_probe_never_delays_a_tick(predictors, tmp_path):
    """Two SeparationModels; one canary's probe hangs on a slow predictor. Both
    keep being analysed every tick meanwhile (holding: no Prometheus here),
    the other's probe result lands, and the slow one's once it answers."""
    gate = threading.Event()
    with Recorder(forward_to=predictors["2.0.0"].url, gate=gate) as slow, \
            Recorder(forward_to=predictors["2.0.0"].url) as fast:
        stable = predictors["1.0.0"].url
        endpoints = {"gs://models/slow/1.0.0": stable, "gs://models/slow/2.0.0": slow.url,
                     "gs://models/fast/1.0.0": stable, "gs://models/fast/2.0.0": fast.url}
        with Cluster(tmp_path) as cluster, KServeSimulator(cluster, endpoints=endpoints):
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            op = Operator(cluster, tmp_path / "operator.log", tick=0.5, namespace=None,
                          env={"MUSICSPLIT_OPERATOR_PROBE_TIMEOUT_SECONDS": "60"})
            try:
                def status(ns):
                    return (cluster.get(SM, NAME, ns) or {}).get("status") or {}

                for ns in ("slow", "fast"):
                    cluster.apply(model(ns, "1.0.0"))
                for ns in ("slow", "fast"):
                    cluster.wait(lambda: status(ns).get("phase") == "Succeeded", 30, message=f"{ns} deployed")
                    cluster.apply(model(ns, "2.0.0"))
                cluster.wait(lambda: slow.seen(f"/v2/models/{NAME}/infer"), 30, message="the slow probe started")
                st = cluster.wait(lambda: (s := status("fast")).get("probe", {}).get("meanSdr")
                                  and s.get("goldenBaseline", {}).get("meanSdr") and s, 30,
                                  message="the fast probe's results in status (canary, then stable)")
                assert st["probe"]["version"] == "2.0.0" and st["probe"]["storageUri"] == "gs://models/fast/2.0.0"
                assert st["goldenBaseline"]["version"] == "1.0.0" and st["goldenBaseline"]["meanSdr"] > 3
                assert all(r.headers[SOURCE_HEADER.lower()] == "probe" for r in fast.seen("/v2/"))

                # While the slow probe hangs, both objects are analysed tick after
                # tick (a tick waiting on the probe would analyse nothing until it answers).
                before = {ns: status(ns).get("holds", 0) for ns in ("slow", "fast")}
                cluster.wait(lambda: all(status(ns).get("holds", 0) >= before[ns] + 4 for ns in before), 20,
                             message="four more analyses of each while the slow probe hangs")
                assert len(slow.seen(f"/v2/models/{NAME}/infer")) == 1  # still the first, unanswered request
                assert "probe" not in status("slow")
                last = status("slow")["lastAnalysis"]
                sdr = next(c for c in last["checks"] if c["name"] == "goldenSdrDrop")
                assert sdr["result"] == "hold" and "waiting for the golden-set probe of canary 2.0.0" in sdr["message"]

                gate.set()
                st = cluster.wait(lambda: (s := status("slow")).get("probe", {}).get("meanSdr") and s, 60,
                                  message="the slow probe's result in status")
                assert st["probe"]["version"] == "2.0.0" and st["phase"] == "Progressing"
            finally:
                gate.set()
                op.stop()
            assert "Traceback" not in op.log(), op.log()[-5000:]


@pytest.mark.slow
def test_the_serving_version_is_verified_again_and_a_broken_node_shows_as_a_drop(predictors, tmp_path):
    """Continuous verification: once 1.0.0 is promoted, the operator scores it
    on the golden set every `verifyEvery` (here 1s) and writes status.quality
    next to what it scored at its release. Then the node serving it breaks
    (the proxy adds noise to every input, as a faulty GPU would): the next
    check records the drop, and the operator exports both scores."""
    import numpy as np

    broken = threading.Event()
    http = httpx.Client(timeout=60)
    rng = np.random.default_rng(0)

    def node(req):
        body = req.body
        if broken.is_set() and req.path.endswith("/infer"):
            n = int(req.headers[JSON_LENGTH_HEADER.lower()])
            x = np.frombuffer(body[n:], dtype="<f4")
            body = body[:n] + (x + rng.normal(0, 0.5 * float(np.sqrt(np.mean(x ** 2))), x.shape)).astype("<f4").tobytes()
        r = http.post(predictors["1.0.0"].url + req.path, content=body,
                      headers={k: v for k, v in req.headers.items() if k not in ("host", "content-length")})
        return r.status_code, {"content-type": r.headers["content-type"],
                               JSON_LENGTH_HEADER: r.headers.get(JSON_LENGTH_HEADER, str(len(r.content)))}, r.content

    doc = model("default", "1.0.0")
    doc["spec"]["analysis"]["goldenSet"] = {"configMap": "refs", "verifyEvery": "1s"}  # two 0.6 s tracks: cheap
    with http, Recorder(node) as proxy, Cluster(tmp_path) as cluster, \
            KServeSimulator(cluster, endpoints={"gs://models/default/1.0.0": proxy.url}):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        golden_configmap(cluster, tmp_path)
        op = Operator(cluster, tmp_path / "operator.log", tick=0.5,
                      env={"MUSICSPLIT_OPERATOR_PROBE_TIMEOUT_SECONDS": "60"})
        try:
            def status():
                return (cluster.get(SM, NAME) or {}).get("status") or {}

            cluster.apply(doc)
            q = cluster.wait(lambda: (s := status()).get("quality", {}).get("meanSdr") and s["quality"], 30,
                             message="the first verification in status.quality")
            release = status()["goldenBaseline"]
            assert release["version"] == "1.0.0" and release["goldenSet"] == "configMap:refs"
            assert q["version"] == "1.0.0" and q["release"]["source"] == "release"
            assert q["meanSdr"] == release["meanSdr"] and q["dropDb"] == 0  # deterministic: the same score
            assert all(r.headers[SOURCE_HEADER.lower()] == "probe" for r in proxy.seen("/v2/models"))

            broken.set()
            q = cluster.wait(lambda: (s := status()).get("quality", {}).get("dropDb", 0) > 1 and s["quality"], 30,
                             message="a check of the broken node")
            assert q["release"]["meanSdr"] == release["meanSdr"] and q["meanSdr"] < release["meanSdr"] - 1
            assert status()["phase"] == "Succeeded"  # a verification reports; it rolls nothing back

            def exported():
                text = httpx.get(op.metrics_url, timeout=5).text
                return {role: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("musicsplit_golden_sdr_db{") and 'stem="mean"' in line
                        and 'namespace="default"' in line
                        for role in ("serving", "release") if f'role="{role}"' in line}
            got = cluster.wait(lambda: (e := exported()).get("serving", 99) < release["meanSdr"] - 1 and e, 10,
                               message="the drop exported")
            assert got["release"] == release["meanSdr"]
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]
