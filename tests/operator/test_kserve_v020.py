"""The operator against KServe v0.20 (its real InferenceService CRD, its
defaulting webhook's new mode names, Standard-mode canaries through
spec.canary), played by the KServe simulator on kmock, driven by kubectl.
test_kubectl.py runs the same operator against a KServe before v0.20."""

from __future__ import annotations

import copy
import json

import pytest

from musicsplit.operator.router import predictor_name, service_url
from tests.fixtures.recorder import Recorder
from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator
from tests.operator.test_kubectl import MANIFESTS, condition, example, has_events, phase_is, status, with_version

BROKEN = "gs://models/broken/9.9.9"
pytestmark = pytest.mark.slow  # an operator process against kmock and the KServe simulator


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("kserve020")
    with Cluster(d, kserve="0.20") as cluster, KServeSimulator(cluster, broken={BROKEN}) as sim:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        op = Operator(cluster, d / "operator.log", tick=0.5,
                      env={"MUSICSPLIT_OPERATOR_EGRESS_ALLOWED_NETWORKS": '["127.0.0.0/8"]'})  # the receivers
        try:
            yield cluster, sim, op
        finally:
            op.stop()
        assert "Traceback" not in op.log(), op.log()[-5000:]
        # What the operator writes is what it reads back (no nulls in list items).
        assert "inconsistencies" not in op.log(), op.log()[-5000:]


def annotate(cluster, name: str, action: str) -> None:
    cluster.kubectl("annotate", "sm", name, f"musicsplit.io/action={action}", "--overwrite")


def canary_entry(cluster, name: str) -> dict | None:
    return ((cluster.get(ISVC, name) or {}).get("spec", {}).get("canary") or [None])[0]


def test_standard_mode_canary_steps_through_spec_canary_and_promotes_by_name(env):
    cluster, sim, _ = env
    base = example("std", deploymentMode="RawDeployment")  # the old name in the spec: still Standard mode
    cluster.apply([base, example("kn")])  # kn: Serverless (the default), i.e. Knative
    st = phase_is(cluster, "std", "Succeeded")
    kn = phase_is(cluster, "kn", "Succeeded")
    isvc = cluster.get(ISVC, "kn")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["status"]["deploymentMode"] == "Knative" and "canary" not in isvc["spec"]
    assert condition(kn, "TrafficSplit")["reason"] == "Serverless" and kn["endpoints"]["stable"]["version"] == "4.0.0"
    isvc = cluster.get(ISVC, "std")
    # The names the installed KServe expects, and what its controller reports back.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["status"]["deploymentMode"] == "Standard"
    assert condition(st, "TrafficSplit")["reason"] == "StandardCanary"
    stable_name = predictor_name(base["spec"]["model"]["storageUri"])
    assert isvc["spec"]["predictor"]["name"] == stable_name
    assert isvc["spec"]["predictor"]["timeout"] == 20 * 60 + 60  # not KServe's 60 s route default
    assert st["endpoints"] == {"stable": {"version": "4.0.0", "url": service_url("std", "default", stable_name)}}

    new = with_version(base, "5.0.0")
    cluster.apply(new)
    entry = cluster.wait(lambda: canary_entry(cluster, "std"), 15, message="a spec.canary entry")
    canary_name = predictor_name(new["spec"]["model"]["storageUri"])
    assert entry["trafficPercent"] == 10 and entry["predictor"]["name"] == canary_name
    assert entry["predictor"]["model"]["storageUri"] == new["spec"]["model"]["storageUri"]
    isvc = cluster.get(ISVC, "std")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == base["spec"]["model"]["storageUri"]
    # Each predictor loads its own release.
    env_of = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env_of["MUSICSPLIT_EXPECTED_VERSION"] == "4.0.0"
    # Readiness from status.canaryStatuses; each version's URL published; Ready tells the split.
    st = cluster.wait(lambda: (s := status(cluster, "std")).get("endpoints", {}).get("canary") and s, 15,
                      message="the canary's URL in status.endpoints")
    assert st["endpoints"]["canary"] == {"version": "5.0.0", "url": service_url("std", "default", canary_name)}
    assert st["endpoints"]["stable"]["version"] == "4.0.0"
    assert condition(st, "Ready")["message"] == "stable 4.0.0 serves 90 % of traffic, canary 5.0.0 10 %"
    assert sorted(sim.split[("default", "std")].values()) == [0.1, 0.9]

    annotate(cluster, "std", "promote")
    st = cluster.wait(lambda: (s := status(cluster, "std")).get("stableVersion") == "5.0.0"
                      and s.get("phase") == "Succeeded" and s, 20, message="5.0.0 promoted")
    isvc = cluster.get(ISVC, "std")
    assert isvc["spec"]["predictor"]["name"] == canary_name and not isvc["spec"].get("canary")
    # The canary's Deployment became the stable one: no second rollout of it.
    assert set(sim.deployments[("default", "std")]) == {f"std-{canary_name}-predictor"}
    assert condition(st, "Ready")["message"] == "5.0.0 serves 100 % of traffic"


def test_rollback_drops_the_canary_entry_and_keeps_the_stable_predictor(env):
    cluster, sim, _ = env
    base = example("stdabort", deploymentMode="Standard")
    cluster.apply(base)
    phase_is(cluster, "stdabort", "Succeeded")
    cluster.apply(with_version(base, "6.0.0"))
    cluster.wait(lambda: canary_entry(cluster, "stdabort"), 15, message="a spec.canary entry")
    annotate(cluster, "stdabort", "abort")
    st = phase_is(cluster, "stdabort", "RolledBack")
    assert st["stableVersion"] == "4.0.0" and st["history"][-1]["outcome"] == "aborted"
    isvc = cluster.wait(lambda: (i := cluster.get(ISVC, "stdabort")) and not i["spec"].get("canary") and i, 10,
                        message="the canary entry dropped")
    assert isvc["spec"]["predictor"]["name"] == predictor_name(base["spec"]["model"]["storageUri"])


def test_a_canary_that_never_becomes_ready_is_rolled_back_with_its_load_failure(env):
    cluster, _, _ = env
    base = example("stdbroken", deploymentMode="Standard")
    cluster.apply(base)
    phase_is(cluster, "stdbroken", "Succeeded")
    bad = copy.deepcopy(base)
    bad["spec"]["model"].update(version="9.9.9", storageUri=BROKEN)
    cluster.apply(bad)
    st = phase_is(cluster, "stdbroken", "RolledBack")
    assert f"ModelLoadFailed: {BROKEN} could not be loaded" in st["history"][-1]["reason"]
    assert has_events(cluster, "stdbroken", "CanaryNotReady")
    cluster.wait(lambda: not canary_entry(cluster, "stdbroken"), 10, message="the canary entry dropped")


def test_a_refused_write_leaves_a_condition_and_an_event_and_is_retried_with_backoff(env):
    """kmock answers 403 to the InferenceService's create (as OwnerReferencesPermissionEnforcement
    does without RBAC on separationmodels/finalizers), then lets it through."""
    cluster, _, _ = env
    cluster.emu.refused.clear()
    cluster.emu.refuse[(ISVC, "denied")] = (
        403, "Forbidden", 'inferenceservices.serving.kserve.io "denied" is forbidden: cannot set blockOwnerDeletion '
                          "if an ownerReference refers to a resource you can't set finalizers on")
    try:
        cluster.apply(example("denied"))
        st = cluster.wait(lambda: (s := status(cluster, "denied")).get("conditions") and s
                          and condition(s, "Degraded")["status"] == "True" and s, 15, message="Degraded condition")
        cond = condition(st, "Degraded")
        assert cond["reason"] == "ApplyFailed" and "HTTP 403" in cond["message"] and "blockOwnerDeletion" in cond["message"]
        assert has_events(cluster, "denied", "ApplyFailed")
        assert "phase" not in st  # nothing decided at a refused tick is saved
        # Retried, each time after twice the wait before (tick 0.5 s: 0.5, 1, 2 s), never sooner
        # (a tick may come later than that on a busy machine, not earlier).
        cluster.wait(lambda: len(cluster.emu.refused) >= 4, 30, message="four refused attempts")
        at = [t for t, _ in cluster.emu.refused[:4]]
        gaps = [b - a for a, b in zip(at, at[1:])]
        assert all(gap >= 0.9 * 0.5 * 2 ** i for i, gap in enumerate(gaps)), gaps
    finally:
        cluster.emu.refuse.clear()
    st = phase_is(cluster, "denied", "Succeeded")
    assert condition(st, "Degraded")["status"] == "False" and "applyRetry" not in st


def test_a_notification_goes_out_only_once_the_status_it_announces_is_saved(env):
    cluster, _, _ = env
    with Recorder(lambda req: (200, {"content-type": "text/plain"}, b"")) as rx:
        doc = example("noted")
        doc["spec"]["analysis"]["webhooks"] = [{"name": "chat", "type": "event", "url": rx.url + "/events"}]
        cluster.emu.refused.clear()
        cluster.emu.refuse[(SM + "/status", "noted")] = (500, "InternalError", "etcd is unavailable")
        try:
            cluster.apply(doc)
            # Ticks decided to deploy (and to announce it) and could not save it, three times.
            cluster.wait(lambda: len(cluster.emu.refused) >= 3, 20, message="three refused status writes")
            assert rx.requests == []
        finally:
            cluster.emu.refuse.clear()
        phase_is(cluster, "noted", "Succeeded")
        cluster.wait(lambda: rx.requests, 10, message="the notification")
        assert json.loads(rx.requests[0].body)["phase"] in ("Initializing", "Succeeded")
