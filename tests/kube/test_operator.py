"""The operator end to end on a real API server: `musicsplit serve operator` as a
process holding only its ServiceAccount's token (RBAC from manifests/rbac.yaml),
OwnerReferencesPermissionEnforcement on, KServe's real InferenceService CRD, and
tests/operator's KServe simulator playing KServe's controller (and the garbage
collector) by patching InferenceService status. No Prometheus: analyses hold,
which is the verdict a canary gets with no evidence, or fail on a webhook
(tests/operator/test_e2e.py has a real Prometheus and passing canaries)."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.kube import KubeCluster, table
from tests.fixtures.recorder import Recorder
from tests.kube.conftest import MANIFESTS
from tests.operator.cluster import ISVC, SM, KServeSimulator, Operator
from tests.operator.test_kubectl import (condition, event_reasons, example, has_events, phase_is,
                                         roll_out_a_broken_canary, status, with_version)

pytestmark = pytest.mark.slow
NS = "e2e"


@pytest.fixture(scope="module")
def env(kube, tmp_path_factory):
    d = tmp_path_factory.mktemp("operator")
    server = kube.server
    server.ensure_namespace(NS)
    kube.kubectl("apply", "-f", str(MANIFESTS / "rbac.yaml"))
    token = server.service_account_token("musicsplit-system", "musicsplit-operator")
    cluster = KubeCluster(server, server.kubeconfig(d / "admin.kubeconfig", namespace=NS), namespace=NS)
    with KServeSimulator(cluster, broken={"gs://models/broken/9.9.9"}, period=0.2) as sim:
        op = Operator(cluster, d / "operator.log", tick=0.5, namespace=NS,
                      env={"KUBECONFIG": str(server.kubeconfig(d / "operator.kubeconfig", token, namespace=NS)),
                           # the webhook receivers listen on loopback, which the egress policy refuses by default
                           "MUSICSPLIT_OPERATOR_EGRESS_ALLOWED_NETWORKS": '["127.0.0.0/8"]'})
        try:
            yield cluster, sim, op
        finally:
            op.stop()
    log = op.log()
    # Only what its own ClusterRole grants, and nothing refused on a vanilla server; but for
    # a watch kopf retried at once, or a tick the operator skipped (and said so), while the
    # restarted server's RBAC cache was still filling.
    refused = [line for line in log.splitlines() if "Forbidden" in line or re.search(r"\b403\b", line)]
    watches = [line for line in refused if re.match(r"Request attempt #\d+/\d+ failed; will retry", line)]
    ticks = [line for line in refused if re.match(r"\[e2e/[\w-]+\] the Kubernetes API server refused the operator "
                                                 r"\(HTTP 403 Forbidden\): check its ServiceAccount", line)]
    assert len(watches) + len(ticks) == len(refused), refused
    assert len(watches) <= 3 and len(ticks) <= 40, refused  # 40: 10 s of 0.5 s ticks of 2 models
    # No tick failed into kopf's backoff: the ones that met the API server away said so and left
    # it to the next tick (test_..._api_server_restart).
    assert "Timer 'reconcile' failed" not in log
    # Every traceback is the API server being away (a background worker's write); nothing else failed.
    failures = [block for block in log.split("Traceback (most recent call last):")[1:]
                if "Connection refused" not in block]
    assert failures == [], failures[0][-3000:]


def test_a_model_is_deployed_and_its_inference_service_owned(env):
    cluster, _, _ = env
    cluster.apply(example("owned"))
    st = phase_is(cluster, "owned", "Succeeded")
    assert st["stableVersion"] == "4.0.0" and st["history"][0]["outcome"] == "promoted"
    isvc = cluster.get(ISVC, "owned")
    owner = isvc["metadata"]["ownerReferences"][0]
    # blockOwnerDeletion: admitted because the ServiceAccount may update separationmodels/finalizers
    assert owner["uid"] == cluster.get(SM, "owned")["metadata"]["uid"] and owner["blockOwnerDeletion"] is True
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://musicsplit-models/htdemucs/4.0.0"
    assert has_events(cluster, "owned", "Deploying", "Promoted")
    row = table(cluster.kubectl("get", "sm", "owned").stdout)[0]
    assert row | {"AGE": ""} == {"NAME": "owned", "STABLE": "4.0.0", "CANARY": "", "WEIGHT": "0",
                                 "PHASE": "Succeeded", "AGE": ""}


def test_canary_steps_abort_and_promote_across_an_api_server_restart(env):
    cluster, _, op = env
    base = example("canary", rollout={"steps": [10, 50]})
    cluster.apply(base)
    phase_is(cluster, "canary", "Succeeded")
    cluster.apply(with_version(base, "4.1.0"))
    st = cluster.wait(lambda: (s := status(cluster, "canary")).get("lastAnalysis") and s, 30, message="an analysis")
    assert (st["phase"], st["canaryWeight"], st["canaryVersion"]) == ("Progressing", 10, "4.1.0")
    assert cluster.get(ISVC, "canary")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert st["lastAnalysis"]["result"] == "hold"
    assert condition(st, "AnalysisReady")["reason"] == "PrometheusUnreachable"

    cluster.kubectl("annotate", "sm", "canary", "musicsplit.io/action=abort")
    st = phase_is(cluster, "canary", "RolledBack")
    assert st["stableVersion"] == "4.0.0" and st["history"][-1]["outcome"] == "aborted"
    assert cluster.get(ISVC, "canary")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert has_events(cluster, "canary", "Aborted")

    cluster.apply(with_version(base, "4.2.0"))
    held = cluster.wait(lambda: (s := status(cluster, "canary")).get("canaryVersion") == "4.2.0"
                        and s.get("holds", 0) >= 1 and s, 30, message="4.2.0 held at 10 %")
    cluster.server.restart()  # returns once the new server answers /readyz
    # The operator's watches and its ServiceAccount token survive the restart: it analyses again,
    # a few ticks (0.5 s) after the server is back; the ticks that failed meanwhile logged a
    # warning each (not kopf's traceback and 60 s backoff).
    cluster.wait(lambda: status(cluster, "canary").get("holds", 0) > held["holds"], 20,
                 message="analyses within 20 s of the restarted API server answering")
    assert "the Kubernetes API server did not answer" in op.log()  # a tick ran while it was away
    cluster.kubectl("annotate", "sm", "canary", "musicsplit.io/action=promote")
    st = cluster.wait(lambda: (s := status(cluster, "canary")).get("phase") == "Succeeded"
                      and s.get("stableVersion") == "4.2.0" and s, 30, message="4.2.0 promoted")
    assert [h["outcome"] for h in st["history"]] == ["promoted", "aborted", "promoted"]
    assert "canaryTrafficPercent" not in cluster.get(ISVC, "canary")["spec"]["predictor"]
    assert has_events(cluster, "canary", "ManualPromotion", "Promoted")


def test_a_canary_that_never_becomes_ready_is_rolled_back(env):
    cluster, _, _ = env
    _, st = roll_out_a_broken_canary(cluster, "broken")
    assert "RevisionFailed" in st["history"][-1]["reason"] and st["stableVersion"] == "4.0.0"
    # Serverless: the stable revision takes all traffic back (RawDeployment redeploys it).
    assert cluster.get(ISVC, "broken")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert has_events(cluster, "broken", "CanaryNotReady")


def test_a_failed_analysis_rolls_the_canary_back(env):
    """A verdict of `fail` (a pre-rollout webhook answering 500; threshold 1) on the real server."""
    cluster, _, _ = env
    with Recorder(lambda req: (500, {"content-type": "text/plain"}, b"smoke test failed")) as smoke:
        hooks = [{"name": "smoke", "type": "pre-rollout", "url": smoke.url + "/smoke", "timeout": "2s"}]
        base = example("judged", analysis={"webhooks": hooks})
        cluster.apply(base)
        phase_is(cluster, "judged", "Succeeded")
        cluster.apply(with_version(base, "4.1.0"))
        st = phase_is(cluster, "judged", "RolledBack")
    assert st["lastAnalysis"]["result"] == "fail" and st["webhooks"]["smoke"]["outcome"] == "rejected"
    assert "pre-rollout webhook smoke failed: HTTP 500" in st["history"][-1]["reason"]
    assert st["stableVersion"] == "4.0.0" and cluster.get(ISVC, "judged")["spec"]["predictor"][
        "canaryTrafficPercent"] == 0
    assert has_events(cluster, "judged", "CanaryStarted", "RolledBack")


def test_a_deleted_model_goes_once_its_finalizer_is_released(env):
    cluster, _, op = env
    cluster.apply(example("deleted"))
    phase_is(cluster, "deleted", "Succeeded")
    assert cluster.get(SM, "deleted")["metadata"]["finalizers"]  # the operator's, set before it deployed
    cluster.kubectl("delete", "sm", "deleted", "--wait=false")
    cluster.wait(lambda: cluster.get(SM, "deleted") is None, 30, message="the model gone (finalizer released)")
    # No garbage collector runs here: the simulator plays it, as for the examples above.
    cluster.wait(lambda: cluster.get(ISVC, "deleted") is None, 15, message="its InferenceService collected")
    assert op.proc.poll() is None
    assert "Deleted" not in event_reasons(cluster, "owned")
