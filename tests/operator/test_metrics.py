"""The operator's /metrics as a view of status: musicsplit_golden_sdr_db's
roles (docs/metrics.md) through a rollout, a rollback and a deletion."""

from __future__ import annotations

from prometheus_client import REGISTRY

from musicsplit.operator import metrics


def golden(namespace: str, name: str) -> dict[tuple[str, str, str], float]:
    return {(s.labels["role"], s.labels["model_version"], s.labels["stem"]): s.value
            for family in REGISTRY.collect() if family.name == "musicsplit_golden_sdr_db"
            for s in family.samples if (s.labels["namespace"], s.labels["name"]) == (namespace, name)}


def rec(version: str, mean: float) -> dict:
    return {"version": version, "storageUri": f"gs://m/{version}", "meanSdr": mean, "perStem": {"vocals": mean + 1}}


def test_golden_sdr_series_follow_the_rollout_and_go_with_the_object():
    stable, canary = rec("1.0.0", 6.0), rec("2.0.0", 2.0)
    rollout = {"phase": "Progressing", "stableVersion": "1.0.0", "stableStorageUri": "gs://m/1.0.0",
               "canaryVersion": "2.0.0", "canaryStorageUri": "gs://m/2.0.0", "goldenBaseline": stable,
               "probe": canary}
    metrics.record("ml", "sep", {}, rollout)
    assert golden("ml", "sep") == {("current", "2.0.0", "mean"): 2.0, ("current", "2.0.0", "vocals"): 3.0,
                                   ("previous", "1.0.0", "mean"): 6.0, ("previous", "1.0.0", "vocals"): 7.0}
    rolled_back = {"phase": "RolledBack", "stableVersion": "1.0.0", "stableStorageUri": "gs://m/1.0.0",
                   "goldenBaseline": stable, "probe": canary,
                   "history": [{"version": "2.0.0", "storageUri": "gs://m/2.0.0", "outcome": "rolledBack"}]}
    metrics.record("ml", "sep", rollout, rolled_back)
    assert golden("ml", "sep") == {("current", "1.0.0", "mean"): 6.0, ("current", "1.0.0", "vocals"): 7.0}
    assert golden("other", "sep") == {}  # another object's series are its own
    metrics.forget("ml", "sep")
    assert golden("ml", "sep") == {}
