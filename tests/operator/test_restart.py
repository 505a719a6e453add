"""An operator killed mid-rollout (SIGKILL, no goodbye) and started again
carries on from the status: same step, same weight, nothing repeated."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import yaml
import pytest

from tests.operator.cluster import ISVC, SM, Cluster, KServeSimulator, Operator

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.mark.slow
def test_killed_operator_resumes_the_rollout_from_status(tmp_path):
    doc = yaml.safe_load((MANIFESTS / "examples" / "htdemucs.yaml").read_text())
    doc["spec"]["rollout"].update(steps=[20, 60], interval="1s")
    doc["spec"]["analysis"].update(goldenSet={"builtin": False})
    canary = copy.deepcopy(doc)
    canary["spec"]["model"].update(version="4.1.0", storageUri="gs://m/htdemucs/4.1.0")

    def status():
        return (cluster.get(SM, "htdemucs") or {}).get("status") or {}

    with Cluster(tmp_path) as cluster, KServeSimulator(cluster):
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        cluster.apply(doc)
        first = Operator(cluster, tmp_path / "first.log")
        second = None
        try:
            cluster.wait(lambda: status().get("phase") == "Succeeded", 30, message="stable deployed")
            cluster.apply(canary)
            cluster.wait(lambda: status().get("holds", 0) >= 1, 30, message="the canary held at 20 %")
            # kopf posts Events in the background: the hold's Event must have landed before the
            # kill, or it may arrive after the snapshot below and look like a repeat.
            cluster.wait(lambda: "AnalysisHeld" in {e["reason"] for e in cluster.events()}, 30,
                         message="the hold's Event posted")
            first.proc.kill()
            first.proc.wait(5)
            before = status()
            events_before = sorted(e["reason"] for e in cluster.events())

            second = Operator(cluster, tmp_path / "second.log")
            cluster.wait(lambda: status().get("holds", 0) > before["holds"], 30, message="the new operator analysing")
            after = status()
            for key in ("phase", "canaryVersion", "canaryWeight", "stepIndex", "stepStartedAt", "stableVersion",
                        "history"):
                assert after.get(key) == before.get(key), key
            assert cluster.get(ISVC, "htdemucs")["spec"]["predictor"]["canaryTrafficPercent"] == 20

            cluster.kubectl("annotate", "sm", "htdemucs", "musicsplit.io/action=promote")
            cluster.wait(lambda: status().get("phase") == "Succeeded" and status().get("stableVersion") == "4.1.0",
                         30, message="promoted by the new operator")
            # kopf posts one object's Events in order: once the promotion's last Event has
            # landed, every Event the new operator queued before it (its analyses) has too.
            def new_events() -> list[str]:
                return sorted((Counter(e["reason"] for e in cluster.events()) - Counter(events_before)).elements())

            cluster.wait(lambda: "Promoted" in new_events(), 30, message="the promotion's Events posted")
            assert new_events() == ["ManualPromotion", "Promoted"]  # no repeated CanaryStarted or AnalysisHeld
        finally:
            first.stop()
            if second:
                second.stop()
