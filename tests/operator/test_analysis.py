"""The analysis verdict (`judge`), as a pure function: no Prometheus, no probe."""

from __future__ import annotations

from dataclasses import replace

import pytest

from musicsplit.operator import analysis as a
from musicsplit.operator.analysis import VersionMetrics
from tests.operator.builders import HEALTHY, good, spec


def test_judge_passes_only_with_every_check_measured():
    v = a.judge(good(), spec())
    assert v.result == a.PASS, v.message
    assert {c.name for c in v.checks} == {"requests", "errorRate", "latencyP99", "qualityScore", "qualityDrop",
                                          "goldenSdrDrop"}


@pytest.mark.parametrize("canary, sdr, failing", [
    (VersionMetrics(100, 30, 2.0, 0.9), 6.0, "errorRate"),
    (VersionMetrics(100, 0, 45.0, 0.9), 6.0, "latencyP99"),
    (VersionMetrics(100, 0, 2.0, 0.5), 6.0, "qualityScore,qualityDrop"),
    (VersionMetrics(100, 0, 2.0, 0.8), 6.0, "qualityDrop"),
    (HEALTHY, 3.0, "goldenSdrDrop"),
])
def test_judge_fails_naming_the_check_and_by_how_much(canary, sdr, failing):
    v = a.judge(good(canary=canary, canary_sdr=sdr), spec())
    assert v.result == a.FAIL
    assert [c.name for c in v.failed] == failing.split(",")
    assert "by" in v.message and all(f in v.message for f in failing.split(","))


def test_judge_holds_without_enough_requests():
    v = a.judge(good(canary=VersionMetrics(5, 0, 1.0, 0.9)), spec())
    assert v.result == a.HOLD and v.reason == "InsufficientData"
    assert "5 user requests" in v.message and "not enough user requests" in v.message
    assert "musicsplit.yaml" not in v.message


def test_no_canary_requests_at_all_points_at_a_version_mismatch():
    # Metrics are filtered on model_version = spec.model.version.
    v = a.judge(good(canary=None), spec())
    assert v.result == a.HOLD and "0 user requests" in v.message
    assert "musicsplit.yaml version differs from spec.model.version" in v.message


def test_judge_holds_when_prometheus_is_unreachable():
    v = a.judge(good(canary=None, stable=None, prometheus_error="ConnectError: refused"), spec())
    assert v.result == a.HOLD and v.reason == "PrometheusUnreachable"


def test_judge_holds_when_the_probe_cannot_run_or_stable_has_no_data():
    assert a.judge(good(canary_sdr=None, stable_sdr=None, probe_error="boom"), spec()).reason == "ProbeUnavailable"
    v = a.judge(good(stable=VersionMetrics(0, 0, None, None)), spec())
    assert v.result == a.HOLD and "no stable quality" in v.message


def test_a_measured_regression_fails_even_while_other_data_is_missing():
    v = a.judge(good(canary=VersionMetrics(3, 0, 1.0, 0.9), canary_sdr=-5.0), spec())
    assert v.result == a.FAIL and [c.name for c in v.failed] == ["goldenSdrDrop"]


def test_judge_skips_the_probe_when_disabled_and_nan_is_no_data():
    v = a.judge(good(canary=VersionMetrics(100, 0, float("nan"), 0.9)),
                spec(analysis={"goldenSet": {"builtin": False}}))
    assert v.result == a.HOLD and "goldenSdrDrop" not in {c.name for c in v.checks}


# -------------------------------------------------------------- the golden-set results in status

CANARY = {"phase": "Progressing", "canaryVersion": "2.0.0", "canaryStorageUri": "gs://m/2",
          "stableVersion": "1.0.0", "stableStorageUri": "gs://m/1"}


def probed(version, uri, **rec):
    return {"version": version, "storageUri": uri, "measuredAt": "2026-01-01T12:00:00Z", **rec}


def test_golden_results_of_the_current_canary_and_stable_are_the_evidence():
    st = {**CANARY, "probe": probed("2.0.0", "gs://m/2", meanSdr=5.5),
          "goldenBaseline": probed("1.0.0", "gs://m/1", meanSdr=6.0)}
    g = a.golden_measurements(st)
    assert (g["canary_sdr"], g["stable_sdr"], g["probe_error"], g["probe_pending"]) == (5.5, 6.0, None, None)
    v = a.judge(good(**g), spec())
    assert v.result == a.PASS and next(c for c in v.checks if c.name == "goldenSdrDrop").value == 0.5


def test_a_probe_result_for_another_release_is_ignored():
    # The same version rebuilt (another storageUri) is another release.
    for other in (probed("1.9.0", "gs://m/2", meanSdr=9.0), probed("2.0.0", "gs://m/2-rebuilt", meanSdr=9.0)):
        g = a.golden_measurements({**CANARY, "probe": other, "goldenBaseline": probed("1.0.0", "gs://m/1", meanSdr=6)})
        assert g["canary_sdr"] is None and g["stable_sdr"] == 6
        v = a.judge(good(**g), spec())
        assert v.result == a.HOLD and v.reason == "InsufficientData"
        assert "waiting for the golden-set probe of canary 2.0.0" in v.message


def test_a_failed_probe_is_a_hold_with_its_reason():
    st = {**CANARY, "probe": probed("2.0.0", "gs://m/2", error="HTTP 503 from the predictor: not ready"),
          "goldenBaseline": {"version": "1.0.0", "meanSdr": 6.0}}  # written before storageUri was recorded
    g = a.golden_measurements(st)
    assert g["stable_sdr"] == 6.0 and g["probe_error"] == "canary 2.0.0: HTTP 503 from the predictor: not ready"
    v = a.judge(good(**g), spec())
    assert v.result == a.HOLD and v.reason == "ProbeUnavailable" and "not ready" in v.message


def test_nothing_probed_yet_waits_for_both():
    g = a.golden_measurements(CANARY)
    assert g["probe_pending"] == "waiting for the golden-set probe of canary 2.0.0 and stable 1.0.0"


# -------------------------------------------------------------- the golden set


def rec(version, uri, sdr, stems=None, ref="builtin", digest="d1", at="2026-01-01T12:00:00Z", **kw):
    return {"version": version, "storageUri": uri, "goldenSet": ref, "goldenSetDigest": digest, "meanSdr": sdr,
            "perStem": stems or {}, "measuredAt": at, **kw}


ROLLOUT = {"phase": "Progressing", "stableVersion": "1.0.0", "stableStorageUri": "gs://m/1",
           "canaryVersion": "2.0.0", "canaryStorageUri": "gs://m/2"}


def test_the_golden_gate_is_judged_on_the_mean_and_reports_every_stem():
    stable, canary = {"vocals": 7.0, "drums": 5.0}, {"vocals": 3.0, "drums": 5.5}
    st = {**ROLLOUT, "probe": rec("2.0.0", "gs://m/2", 4.25, canary), "goldenBaseline": rec("1.0.0", "gs://m/1", 6.0,
                                                                                            stable)}
    m = replace(good(), **a.golden_measurements(st))
    v = a.judge(m, spec())
    check = next(c for c in v.checks if c.name == "goldenSdrDrop")
    assert v.result == a.FAIL and check.value == pytest.approx(1.75)
    assert check.as_status()["perStem"] == {"vocals": 4.0, "drums": -0.5}
    assert "worst stem vocals 4 dB" in check.message
    # The canary's own floor, when the spec sets one: judged without a baseline too.
    v = a.judge(replace(m, stable_sdr=None), spec(analysis={"goldenSet": {"minSdrDb": 5.0}}))
    floor = next(c for c in v.checks if c.name == "goldenSdr")
    assert v.result == a.FAIL and floor.result == a.FAIL and "4.25 dB < 5 dB" in floor.message


def test_results_on_another_golden_set_or_its_older_content_are_no_evidence():
    ref = "configMap:refs"
    st = {**ROLLOUT, "probe": rec("2.0.0", "gs://m/2", 5.0, ref=ref, digest="new", at="2026-01-01T12:05:00Z"),
          "goldenBaseline": rec("1.0.0", "gs://m/1", 6.0, ref="builtin")}
    g = a.golden_measurements(st, ref)
    assert g["canary_sdr"] == 5.0 and g["stable_sdr"] is None and "stable 1.0.0" in g["probe_pending"]
    st["goldenBaseline"] = rec("1.0.0", "gs://m/1", 6.0, ref=ref, digest="old")  # the ConfigMap changed since
    assert a.golden_stale(st, ref) == "stable"
    g = a.golden_measurements(st, ref)
    assert g["stable_sdr"] is None and "the golden set changed since it was measured" in g["probe_pending"]


def test_a_broken_golden_set_holds_with_its_own_reason():
    st = {**ROLLOUT, "probe": {"version": "2.0.0", "storageUri": "gs://m/2", "goldenSet": "configMap:refs",
                               "error": "track song: no mixture", "errorReason": "GoldenSetInvalid"},
          "goldenBaseline": rec("1.0.0", "gs://m/1", 6.0, ref="configMap:refs")}
    v = a.judge(replace(good(), **a.golden_measurements(st, "configMap:refs")),
                spec(analysis={"goldenSet": {"configMap": "refs"}}))
    assert v.result == a.HOLD and v.reason == "GoldenSetInvalid"
    assert "canary 2.0.0: track song: no mixture" in v.message


def test_golden_series_say_which_version_replaces_which():
    canary, stable = rec("2.0.0", "gs://m/2", 5.0, {"vocals": 4.0}), rec("1.0.0", "gs://m/1", 6.0, {"vocals": 6.5})
    during = {**ROLLOUT, "probe": canary, "goldenBaseline": stable}
    assert a.golden_series(during) == {"current": {"version": "2.0.0", "sdr": {"vocals": 4.0, "mean": 5.0}},
                                       "previous": {"version": "1.0.0", "sdr": {"vocals": 6.5, "mean": 6.0}}}
    promoted = {"phase": "Succeeded", "stableVersion": "2.0.0", "stableStorageUri": "gs://m/2", "probe": canary,
                "goldenBaseline": stable, "history": [{"version": "2.0.0", "outcome": "promoted"}]}
    assert {r: s["version"] for r, s in a.golden_series(promoted).items()} == {"current": "2.0.0",
                                                                               "previous": "1.0.0"}
    rolled_back = {"phase": "RolledBack", "stableVersion": "1.0.0", "stableStorageUri": "gs://m/1", "probe": canary,
                   "goldenBaseline": stable, "history": [{"version": "2.0.0", "outcome": "rolledBack"}]}
    assert {r: s["version"] for r, s in a.golden_series(rolled_back).items()} == {"current": "1.0.0"}
