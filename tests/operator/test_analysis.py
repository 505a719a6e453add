"""The analysis verdict (`judge`), as a pure function: no Prometheus, no probe."""

from __future__ import annotations

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
    v = a.judge(good(canary=VersionMetrics(100, 0, float("nan"), 0.9)), spec(analysis={"goldenSet": False}))
    assert v.result == a.HOLD and "goldenSdrDrop" not in {c.name for c in v.checks}
