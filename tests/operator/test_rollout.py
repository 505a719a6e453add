"""The rollout's decisions, as pure functions: no Kubernetes, no Prometheus."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from musicsplit.operator import rollout as r
from musicsplit.operator.rollout import Measurements, Observed, VersionMetrics
from musicsplit.operator.spec import parse_duration, parse_spec

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
V1 = {"architecture": "htdemucs", "version": "1.0.0", "storageUri": "gs://m/htdemucs/1.0.0"}
V2 = {"architecture": "htdemucs", "version": "2.0.0", "storageUri": "gs://m/htdemucs/2.0.0"}


def spec(model=V2, **over):
    body = {"model": model, "rollout": {"steps": [10, 50], "interval": "1m"},
            "analysis": {"minRequests": 20, "maxErrorRate": 0.05, "maxP99LatencySeconds": 30,
                         "minQualityScore": 0.7, "maxQualityDrop": 0.05, "maxSdrDropDb": 1.0}}
    for k, v in over.items():
        body[k] = {**body.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_spec(body)


def serving(uri, pct=None, ready=True):
    return Observed(exists=True, storage_uri=uri, canary_percent=pct, ready=ready, latest_ready=ready,
                    latest_percent=pct if pct is not None else 100, urls={"latest": "http://c", "prev": "http://s"})


STABLE = {"phase": "Succeeded", "stableVersion": "1.0.0", "stableStorageUri": V1["storageUri"], "history": [
    {"version": "1.0.0", "storageUri": V1["storageUri"], "outcome": "promoted", "at": "x", "reason": "r"}]}

HEALTHY = VersionMetrics(requests=100, errors=0, p99_seconds=2.0, quality=0.9)


def good(**kw):
    return Measurements(canary=kw.get("canary", HEALTHY), stable=kw.get("stable", HEALTHY),
                        canary_sdr=kw.get("canary_sdr", 6.0), stable_sdr=kw.get("stable_sdr", 6.2),
                        prometheus_error=kw.get("prometheus_error"), probe_error=kw.get("probe_error"))


def start_canary(sp=None):
    sp = sp or spec()
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    return sp, plan


# -------------------------------------------------------------- spec


def test_durations_and_weights():
    assert parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert spec(rollout={"steps": None, "stepWeight": 20, "maxWeight": 60}).rollout.weights() == [20, 40, 60]
    assert parse_spec({"model": V1}).rollout.weights() == [10, 25, 50]


@pytest.mark.parametrize("bad, words", [
    ({"model": {**V1, "storageUri": ""}}, "storageUri"),
    ({"model": {k: v for k, v in V1.items() if k != "storageUri"}}, "storageUri"),
    ({"model": V1, "rollout": {"steps": [50, 10]}}, "increase"),
    ({"model": V1, "rollout": {"steps": [10, 150]}}, "1..100"),
    ({"model": V1, "replicas": {"min": 3, "max": 1}}, "replicas.max"),
    ({"model": V1, "rollout": {"interval": "often"}}, "duration"),
    ({"model": V1, "deploymentMode": "Magic"}, "deploymentMode"),
])
def test_bad_specs_are_refused_with_a_reason(bad, words):
    with pytest.raises(ValidationError) as e:
        parse_spec(bad)
    assert words in str(e.value)


# -------------------------------------------------------------- analysis (judge)


def test_judge_passes_only_with_every_check_measured():
    v = r.judge(good(), spec())
    assert v.result == r.PASS, v.message
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
    v = r.judge(good(canary=canary, canary_sdr=sdr), spec())
    assert v.result == r.FAIL
    assert [c.name for c in v.failed] == failing.split(",")
    assert "by" in v.message and all(f in v.message for f in failing.split(","))


def test_judge_holds_without_enough_requests():
    v = r.judge(good(canary=VersionMetrics(5, 0, 1.0, 0.9)), spec())
    assert v.result == r.HOLD and v.reason == "InsufficientData"
    assert "5 requests" in v.message and "musicsplit.yaml" not in v.message


def test_no_canary_requests_at_all_points_at_a_version_mismatch():
    # Metrics are filtered on model_version = spec.model.version.
    v = r.judge(good(canary=None), spec())
    assert v.result == r.HOLD and "0 requests" in v.message
    assert "check that the model dir's musicsplit.yaml version equals spec.model.version" in v.message


def test_judge_holds_when_prometheus_is_unreachable():
    v = r.judge(good(canary=None, stable=None, prometheus_error="ConnectError: refused"), spec())
    assert v.result == r.HOLD and v.reason == "PrometheusUnreachable"


def test_judge_holds_when_the_probe_cannot_run_or_stable_has_no_data():
    assert r.judge(good(canary_sdr=None, stable_sdr=None, probe_error="boom"), spec()).reason == "ProbeUnavailable"
    v = r.judge(good(stable=VersionMetrics(0, 0, None, None)), spec())
    assert v.result == r.HOLD and "no stable quality" in v.message


def test_a_measured_regression_fails_even_while_other_data_is_missing():
    v = r.judge(good(canary=VersionMetrics(3, 0, 1.0, 0.9), canary_sdr=-5.0), spec())
    assert v.result == r.FAIL and [c.name for c in v.failed] == ["goldenSdrDrop"]


def test_judge_skips_the_probe_when_disabled_and_nan_is_no_data():
    v = r.judge(good(canary=VersionMetrics(100, 0, float("nan"), 0.9)), spec(analysis={"goldenSet": False}))
    assert v.result == r.HOLD and "goldenSdrDrop" not in {c.name for c in v.checks}


# -------------------------------------------------------------- scheduler


def test_first_version_is_deployed_then_succeeds_when_ready():
    sp = spec(model=V1)
    plan = r.schedule(sp, {}, Observed(exists=False), T0, generation=1)
    assert plan.create and plan.route == r.Route(V1["storageUri"], None)
    assert plan.status["phase"] == "Initializing" and plan.status["observedGeneration"] == 1
    plan = r.schedule(sp, plan.status, Observed(exists=True, storage_uri=V1["storageUri"]), T0 + timedelta(seconds=5))
    assert plan.status["phase"] == "Initializing" and plan.route is None
    plan = r.schedule(sp, plan.status, serving(V1["storageUri"]), T0 + timedelta(seconds=10))
    st = plan.status
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "1.0.0" and st["canaryWeight"] == 0
    assert st["history"][-1]["outcome"] == "promoted"
    assert r.condition(st, "Ready")["status"] == "True"


def test_first_version_that_never_gets_ready_fails():
    sp = spec(model=V1, rollout={"progressDeadline": "2m"})
    st = r.schedule(sp, {}, Observed(exists=False), T0).status
    plan = r.schedule(sp, st, Observed(exists=True, storage_uri=V1["storageUri"]), T0 + timedelta(minutes=3))
    assert plan.status["phase"] == "Failed" and plan.events[0][1] == "DeploymentFailed"
    # a new version retries without any manual step
    plan = r.schedule(spec(model=V2), plan.status, Observed(exists=True, storage_uri=V1["storageUri"]), T0)
    assert plan.status["phase"] == "Initializing" and plan.route.storage_uri == V2["storageUri"]


def test_new_version_starts_as_canary_at_the_first_step():
    sp, plan = start_canary()
    st = plan.status
    assert plan.route == r.Route(V2["storageUri"], 10) and not plan.create
    assert st["phase"] == "Progressing" and st["canaryVersion"] == "2.0.0" and st["canaryWeight"] == 10
    assert st["stableVersion"] == "1.0.0"
    assert plan.events[0][:2] == ("Normal", "CanaryStarted")
    assert r.condition(st, "TrafficSplit")["status"] == "True"


def test_analysis_waits_for_the_interval_and_a_ready_revision():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    assert not r.schedule(sp, plan.status, obs, T0 + timedelta(seconds=30)).analyze
    not_ready = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True)
    assert not r.schedule(sp, plan.status, not_ready, T0 + timedelta(seconds=90)).analyze
    assert r.schedule(sp, plan.status, obs, T0 + timedelta(seconds=61)).analyze


def test_passing_steps_advance_then_promote_then_succeed():
    sp, plan = start_canary()
    t = T0 + timedelta(seconds=61)
    plan = r.after_analysis(sp, plan.status, r.judge(good(), sp), t)
    assert plan.route == r.Route(V2["storageUri"], 50) and plan.status["canaryWeight"] == 50
    assert plan.status["stepStartedAt"] == r.iso(t) and plan.status["lastAnalysis"]["result"] == "pass"
    plan = r.after_analysis(sp, plan.status, r.judge(good(), sp), t + timedelta(seconds=61))
    assert plan.status["phase"] == "Promoting" and plan.route == r.Route(V2["storageUri"], None)
    # waits for KServe to actually route 100 % to the latest revision
    half = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=None, ready=True, latest_ready=True,
                    latest_percent=50)
    assert r.schedule(sp, plan.status, half, t).status["phase"] == "Promoting"
    st = r.schedule(sp, plan.status, serving(V2["storageUri"]), t).status
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "2.0.0" and "canaryVersion" not in st
    assert [h["outcome"] for h in st["history"]] == ["promoted", "promoted"]


def test_failed_analysis_rolls_back_with_an_event_and_a_history_entry():
    sp, plan = start_canary()
    bad = r.judge(good(canary=VersionMetrics(100, 40, 2.0, 0.9)), sp)
    plan = r.after_analysis(sp, plan.status, bad, T0 + timedelta(seconds=61))
    st = plan.status
    assert plan.route == r.Route(V2["storageUri"], 0)  # KServe: 0 % -> all traffic to the previous revision
    assert st["phase"] == "RolledBack" and st["canaryWeight"] == 0 and st["stableVersion"] == "1.0.0"
    h = st["history"][-1]
    assert h["version"] == "2.0.0" and h["outcome"] == "rolledBack" and "errorRate 0.4 > 0.05" in h["reason"]
    assert plan.events[-1][:2] == ("Warning", "RolledBack")
    check = next(c for c in st["lastAnalysis"]["checks"] if c["name"] == "errorRate")
    assert check == {"name": "errorRate", "value": 0.4, "threshold": 0.05, "result": "fail",
                     "message": check["message"]}
    # the same release is not retried by itself...
    again = r.schedule(sp, st, serving(V2["storageUri"], 0), T0 + timedelta(minutes=5))
    assert again.route is None and again.status["phase"] == "RolledBack" and "retry" in again.status["message"]
    # ...but is on request, and a new version starts normally
    assert r.schedule(sp, st, serving(V2["storageUri"], 0), T0, action="retry").status["phase"] == "Progressing"
    v3 = spec(model={**V2, "version": "3.0.0", "storageUri": "gs://m/3"})
    assert r.schedule(v3, st, serving(V2["storageUri"], 0), T0).route == r.Route("gs://m/3", 10)


def test_hold_keeps_the_weight_and_says_why_once():
    sp, plan = start_canary()
    held = r.judge(good(prometheus_error="refused"), sp)
    p1 = r.after_analysis(sp, plan.status, held, T0 + timedelta(seconds=61))
    assert p1.route is None and p1.status["canaryWeight"] == 10 and p1.status["phase"] == "Progressing"
    cond = r.condition(p1.status, "AnalysisReady")
    assert cond["status"] == "False" and cond["reason"] == "PrometheusUnreachable"
    assert [e[1] for e in p1.events] == ["AnalysisHeld"]
    p2 = r.after_analysis(sp, p1.status, held, T0 + timedelta(seconds=71))
    assert p2.events == () and p2.status["holds"] == 2
    # still due: the next tick analyses again rather than promoting
    assert r.schedule(sp, p2.status, serving(V2["storageUri"], 10), T0 + timedelta(seconds=81)).analyze


def test_restart_safe_the_same_status_gives_the_same_decision():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    a = r.schedule(sp, plan.status, obs, T0 + timedelta(seconds=20))
    b = r.schedule(sp, a.status, obs, T0 + timedelta(seconds=20))
    assert a.status == b.status and a.route is None and b.route is None and not b.events


def test_route_is_reapplied_when_the_inference_service_drifted():
    sp, plan = start_canary()
    drifted = serving(V2["storageUri"], 100)
    assert r.schedule(sp, plan.status, drifted, T0 + timedelta(seconds=5)).route == r.Route(V2["storageUri"], 10)


def test_manual_pause_resume_abort_promote():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    paused = r.schedule(spec(rollout={"paused": True}), plan.status, obs, T0 + timedelta(minutes=5))
    assert paused.status["phase"] == "Paused" and not paused.analyze
    resumed = r.schedule(sp, paused.status, obs, T0 + timedelta(minutes=6))
    assert resumed.status["phase"] == "Progressing" and resumed.status["stepStartedAt"] == r.iso(
        T0 + timedelta(minutes=6))
    aborted = r.schedule(sp, plan.status, obs, T0, action="abort")
    assert aborted.status["phase"] == "RolledBack" and aborted.status["history"][-1]["outcome"] == "aborted"
    promoted = r.schedule(sp, plan.status, obs, T0, action="promote")
    assert promoted.status["phase"] == "Promoting" and promoted.route == r.Route(V2["storageUri"], None)


def test_spec_change_mid_rollout_supersedes_or_aborts():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    v3 = spec(model={**V2, "version": "3.0.0", "storageUri": "gs://m/3"})
    p = r.schedule(v3, plan.status, obs, T0)
    assert p.status["canaryVersion"] == "3.0.0" and p.status["history"][-1]["outcome"] == "superseded"
    back = r.schedule(spec(model=V1), plan.status, obs, T0)
    assert back.status["phase"] == "RolledBack" and back.route == r.Route(V2["storageUri"], 0)
    # then the stable version is served alone again
    done = r.schedule(spec(model=V1), back.status, serving(V2["storageUri"], 0), T0)
    assert done.route == r.Route(V1["storageUri"], None) and done.status["phase"] == "Succeeded"


def test_inference_service_deleted_by_hand_is_recreated_from_status():
    sp, plan = start_canary()
    p = r.schedule(sp, plan.status, Observed(exists=False), T0 + timedelta(seconds=30))
    assert p.create and p.route == r.Route(V1["storageUri"], None)
    assert p.events[0][1] == "InferenceServiceRecreated" and "canaryVersion" not in p.status
    # next tick: the canary starts again from the first step (it was not judged bad)
    again = r.schedule(sp, p.status, serving(V1["storageUri"]), T0 + timedelta(seconds=40))
    assert again.route == r.Route(V2["storageUri"], 10)


def test_canary_that_never_gets_ready_is_rolled_back():
    sp, plan = start_canary()
    stuck = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True,
                     failure="RevisionFailed: image pull")
    p = r.schedule(sp, plan.status, stuck, T0 + timedelta(seconds=5))
    assert p.status["phase"] == "RolledBack" and "image pull" in p.status["history"][-1]["reason"]


def test_raw_deployment_says_there_is_no_split_and_rolls_back_by_redeploying_stable():
    sp = spec(deploymentMode="RawDeployment")
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert plan.route == r.Route(V2["storageUri"], None) and plan.status["canaryWeight"] == 100
    cond = r.condition(plan.status, "TrafficSplit")
    assert cond["status"] == "False" and cond["reason"] == "RawDeploymentMode" and "kserve#4074" in cond["message"]
    bad = r.judge(good(canary=VersionMetrics(100, 50, 2, 0.9)), sp, compare_stable=False)
    back = r.after_analysis(sp, plan.status, bad, T0 + timedelta(minutes=2))
    assert back.route == r.Route(V1["storageUri"], None) and back.status["phase"] == "RolledBack"
    ok = r.after_analysis(sp, plan.status, r.judge(good(), sp, compare_stable=False), T0 + timedelta(minutes=2))
    assert ok.status["phase"] == "Succeeded" and ok.status["stableVersion"] == "2.0.0"


def test_history_is_bounded():
    st = dict(STABLE, history=[dict(STABLE["history"][0]) for _ in range(r.HISTORY_LIMIT)])
    sp, _ = start_canary()
    plan = r.schedule(sp, st, serving(V1["storageUri"]), T0)
    p = r.after_analysis(sp, plan.status, r.judge(good(canary_sdr=-9.0), sp), T0)
    assert len(p.status["history"]) == r.HISTORY_LIMIT and p.status["history"][-1]["version"] == "2.0.0"


def test_conditions_keep_their_transition_time_while_unchanged():
    c = r.set_condition([], "Ready", True, "A", "a", T0)
    c = r.set_condition(c, "Ready", True, "B", "b", T0 + timedelta(hours=1))
    assert c[0]["lastTransitionTime"] == r.iso(T0) and c[0]["reason"] == "B"
    c = r.set_condition(c, "Ready", False, "C", "c", T0 + timedelta(hours=2))
    assert c[0]["lastTransitionTime"] == r.iso(T0 + timedelta(hours=2))
