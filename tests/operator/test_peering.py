"""Leader election between operator replicas through kopf peering
(manifests/peering.yaml): only the highest-priority live replica acts."""

from __future__ import annotations

from pathlib import Path

import yaml
import pytest

from tests.operator.cluster import SM, Cluster, KServeSimulator, Operator, operator_api_calls, rbac_grants
from tests.operator.test_kubectl import metric

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
PHASE_SUCCEEDED = 'musicsplit_rollout_phase{namespace="default",name="htdemucs",phase="Succeeded"}'


def doc(version: str) -> dict:
    d = yaml.safe_load((MANIFESTS / "examples" / "htdemucs.yaml").read_text())
    d["spec"]["model"].update(version=version, storageUri=f"gs://m/htdemucs/{version}")
    d["spec"]["analysis"].update(goldenSet={"builtin": False})
    return d


@pytest.mark.slow
def test_only_the_leader_reconciles_and_a_standby_takes_over(tmp_path):
    with Cluster(tmp_path) as cluster, KServeSimulator(cluster):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"), "-f", str(MANIFESTS / "peering-crd.yaml"))
        cluster.kubectl("apply", "-f", str(MANIFESTS / "peering.yaml"))
        args = ["--peering", "musicsplit-operator"]
        leader = Operator(cluster, tmp_path / "leader.log", tick=0.5, args=[*args, "--priority", "20", "-v"],
                          standalone=False, namespace=None)
        standby = None
        try:
            cluster.wait(lambda: "Keep-alive in 'musicsplit-operator'" in leader.log(), 30,
                         message="the leader in the peering")
            standby = Operator(cluster, tmp_path / "standby.log", tick=0.5,
                               args=[*args, "--priority", "10", "-v"], standalone=False, namespace=None)
            # kopf starts every replica paused; one that sees a higher-priority
            # peer at once simply never resumes (and logs nothing about it).
            cluster.wait(lambda: "Keep-alive in 'musicsplit-operator'" in standby.log(), 30,
                         message="the standby in the peering")
            cluster.apply(doc("4.0.0"))
            cluster.wait(lambda: ((cluster.get(SM, "htdemucs") or {}).get("status") or {}).get("phase")
                         == "Succeeded", 30, message="the leader to deploy")
            # Each replica's own /metrics: the leader's reconcile tick recorded the model's
            # phase there; the standby's has no series of it (it never reconciled it).
            assert metric(leader, PHASE_SUCCEEDED) == 1
            assert metric(standby, PHASE_SUCCEEDED) is None
            assert "Timer 'reconcile'" not in standby.log() and "Resuming operations" not in standby.log()

            leader.stop()  # graceful: it leaves the peering, the standby resumes at once
            cluster.wait(lambda: "Resuming operations" in standby.log(), 30, message="the standby to resume")
            cluster.apply(doc("4.1.0"))
            cluster.wait(lambda: ((cluster.get(SM, "htdemucs") or {}).get("status") or {}).get("canaryVersion")
                         == "4.1.0", 30, message="the standby to start the canary")
            assert metric(standby, 'musicsplit_rollout_canary_weight{namespace="default",name="htdemucs"}') > 0
        finally:
            leader.stop()
            if standby:
                standby.stop()
        peering = {c for c in operator_api_calls(cluster) if c[1] == "clusterkopfpeerings"}
        assert peering == {c for c in rbac_grants(MANIFESTS / "rbac.yaml") if c[1] == "clusterkopfpeerings"}
