"""The scheduler's decisions, as pure functions: no Kubernetes, no Prometheus."""

from __future__ import annotations

from datetime import timedelta

from musicsplit.operator import scheduler as r
from musicsplit.operator.analysis import VersionMetrics, judge
from musicsplit.operator.router import LEGACY, V0_20, Observed, Route, traffic_mode
from musicsplit.operator.status import HISTORY_LIMIT, condition, iso
from tests.operator.builders import STABLE, T0, V1, V2, good, serving, spec, start_canary


def test_first_version_is_deployed_then_succeeds_when_ready():
    sp = spec(model=V1)
    plan = r.schedule(sp, {}, Observed(exists=False), T0, generation=1)
    assert plan.create and plan.route == Route(V1["storageUri"], None)
    assert plan.status["phase"] == "Initializing" and plan.status["observedGeneration"] == 1
    plan = r.schedule(sp, plan.status, Observed(exists=True, storage_uri=V1["storageUri"]), T0 + timedelta(seconds=5))
    assert plan.status["phase"] == "Initializing" and plan.route is None
    plan = r.schedule(sp, plan.status, serving(V1["storageUri"]), T0 + timedelta(seconds=10))
    st = plan.status
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "1.0.0" and st["canaryWeight"] == 0
    assert st["history"][-1]["outcome"] == "promoted"
    assert condition(st, "Ready")["status"] == "True"


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
    assert plan.route == Route(V2["storageUri"], 10) and not plan.create
    assert st["phase"] == "Progressing" and st["canaryVersion"] == "2.0.0" and st["canaryWeight"] == 10
    assert st["stableVersion"] == "1.0.0"
    assert plan.events[0][:2] == ("Normal", "CanaryStarted")
    assert condition(st, "TrafficSplit")["status"] == "True"


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
    plan = r.after_analysis(sp, plan.status, judge(good(), sp), t)
    assert plan.route == Route(V2["storageUri"], 50) and plan.status["canaryWeight"] == 50
    assert plan.status["stepStartedAt"] == iso(t) and plan.status["lastAnalysis"]["result"] == "pass"
    plan = r.after_analysis(sp, plan.status, judge(good(), sp), t + timedelta(seconds=61))
    assert plan.status["phase"] == "Promoting" and plan.route == Route(V2["storageUri"], None)
    # waits for KServe to actually route 100 % to the latest revision
    half = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=None, ready=True, latest_ready=True,
                    latest_percent=50)
    assert r.schedule(sp, plan.status, half, t).status["phase"] == "Promoting"
    st = r.schedule(sp, plan.status, serving(V2["storageUri"]), t).status
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "2.0.0" and "canaryVersion" not in st
    assert [h["outcome"] for h in st["history"]] == ["promoted", "promoted"]


def test_failed_analysis_rolls_back_with_an_event_and_a_history_entry():
    sp, plan = start_canary()
    bad = judge(good(canary=VersionMetrics(100, 40, 2.0, 0.9)), sp)
    plan = r.after_analysis(sp, plan.status, bad, T0 + timedelta(seconds=61))
    st = plan.status
    assert plan.route == Route(V2["storageUri"], 0)  # KServe: 0 % -> all traffic to the previous revision
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
    assert r.schedule(v3, st, serving(V2["storageUri"], 0), T0).route == Route("gs://m/3", 10)


def test_hold_keeps_the_weight_and_says_why_once():
    sp, plan = start_canary()
    held = judge(good(prometheus_error="refused"), sp)
    p1 = r.after_analysis(sp, plan.status, held, T0 + timedelta(seconds=61))
    assert p1.route is None and p1.status["canaryWeight"] == 10 and p1.status["phase"] == "Progressing"
    cond = condition(p1.status, "AnalysisReady")
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
    assert r.schedule(sp, plan.status, drifted, T0 + timedelta(seconds=5)).route == Route(V2["storageUri"], 10)


def test_manual_pause_resume_abort_promote():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    paused = r.schedule(spec(rollout={"paused": True}), plan.status, obs, T0 + timedelta(minutes=5))
    assert paused.status["phase"] == "Paused" and not paused.analyze
    resumed = r.schedule(sp, paused.status, obs, T0 + timedelta(minutes=6))
    assert resumed.status["phase"] == "Progressing" and resumed.status["stepStartedAt"] == iso(
        T0 + timedelta(minutes=6))
    aborted = r.schedule(sp, plan.status, obs, T0, action="abort")
    assert aborted.status["phase"] == "RolledBack" and aborted.status["history"][-1]["outcome"] == "aborted"
    promoted = r.schedule(sp, plan.status, obs, T0, action="promote")
    assert promoted.status["phase"] == "Promoting" and promoted.route == Route(V2["storageUri"], None)


def test_spec_change_mid_rollout_supersedes_or_aborts():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    v3 = spec(model={**V2, "version": "3.0.0", "storageUri": "gs://m/3"})
    p = r.schedule(v3, plan.status, obs, T0)
    assert p.status["canaryVersion"] == "3.0.0" and p.status["history"][-1]["outcome"] == "superseded"
    back = r.schedule(spec(model=V1), plan.status, obs, T0)
    assert back.status["phase"] == "RolledBack" and back.route == Route(V2["storageUri"], 0)
    # then the stable version is served alone again
    done = r.schedule(spec(model=V1), back.status, serving(V2["storageUri"], 0), T0)
    assert done.route == Route(V1["storageUri"], None) and done.status["phase"] == "Succeeded"


def test_inference_service_deleted_by_hand_is_recreated_from_status():
    sp, plan = start_canary()
    p = r.schedule(sp, plan.status, Observed(exists=False), T0 + timedelta(seconds=30))
    assert p.create and p.route == Route(V1["storageUri"], None)
    assert p.events[0][1] == "InferenceServiceRecreated" and "canaryVersion" not in p.status
    # next tick: the canary starts again from the first step (it was not judged bad)
    again = r.schedule(sp, p.status, serving(V1["storageUri"]), T0 + timedelta(seconds=40))
    assert again.route == Route(V2["storageUri"], 10)


def test_canary_that_never_gets_ready_is_rolled_back():
    sp, plan = start_canary()
    stuck = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True,
                     failure="RevisionFailed: image pull")
    p = r.schedule(sp, plan.status, stuck, T0 + timedelta(seconds=5))
    assert p.status["phase"] == "RolledBack" and "image pull" in p.status["history"][-1]["reason"]


def test_raw_deployment_says_there_is_no_split_and_rolls_back_by_redeploying_stable():
    sp = spec(deploymentMode="RawDeployment")
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert plan.route == Route(V2["storageUri"], None) and plan.status["canaryWeight"] == 100
    cond = condition(plan.status, "TrafficSplit")
    assert cond["status"] == "False" and cond["reason"] == "RawDeploymentMode" and "kserve#4074" in cond["message"]
    bad = judge(good(canary=VersionMetrics(100, 50, 2, 0.9)), sp, compare_stable=False)
    back = r.after_analysis(sp, plan.status, bad, T0 + timedelta(minutes=2))
    assert back.route == Route(V1["storageUri"], None) and back.status["phase"] == "RolledBack"
    ok = r.after_analysis(sp, plan.status, judge(good(), sp, compare_stable=False), T0 + timedelta(minutes=2))
    assert ok.status["phase"] == "Succeeded" and ok.status["stableVersion"] == "2.0.0"


def test_history_is_bounded():
    st = dict(STABLE, history=[dict(STABLE["history"][0]) for _ in range(HISTORY_LIMIT)])
    sp, _ = start_canary()
    plan = r.schedule(sp, st, serving(V1["storageUri"]), T0)
    p = r.after_analysis(sp, plan.status, judge(good(canary_sdr=-9.0), sp), T0)
    assert len(p.status["history"]) == HISTORY_LIMIT and p.status["history"][-1]["version"] == "2.0.0"


# -------------------------------------------------------------- which golden-set probes are due


def due(sp, st, obs, t):
    job = r.probe_due(sp, st, obs, t, "ml", "htdemucs")
    return {(x.role, x.version, x.url, x.missing) for x in job.targets} if job else set()


def test_a_ready_canary_and_its_stable_are_probed_once_each():
    sp, plan = start_canary()
    st = plan.status
    not_ready = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True,
                         urls={"latest": "http://c", "prev": "http://s"})
    assert due(sp, st, not_ready, T0) == set()  # the canary revision is not serving yet
    # KServe's status from before the route change: `latest` is still the stable revision.
    stale = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True, latest_ready=True,
                     latest_percent=100, urls={"latest": "http://s"})
    assert due(sp, st, stale, T0) == set()
    obs = serving(V2["storageUri"], 10)
    assert due(sp, st, obs, T0) == {("canary", "2.0.0", "http://c", None), ("stable", "1.0.0", "http://s", None)}
    job = r.probe_due(sp, st, obs, T0, "ml", "htdemucs")
    assert (job.namespace, job.name) == ("ml", "htdemucs")
    # A result is final for its release: the probe is deterministic.
    done = {**st, "probe": {"version": "2.0.0", "storageUri": V2["storageUri"], "meanSdr": 6.0,
                            "measuredAt": iso(T0)},
            "goldenBaseline": {"version": "1.0.0", "storageUri": V1["storageUri"], "meanSdr": 6.1,
                               "measuredAt": iso(T0)}}
    assert due(sp, done, obs, T0 + timedelta(hours=1)) == set()
    assert due(spec(analysis={"goldenSet": {"builtin": False}}), st, obs, T0) == set()


def test_a_failed_probe_is_tried_again_after_an_interval_and_a_stale_one_at_once():
    sp, plan = start_canary()
    obs = serving(V2["storageUri"], 10)
    failed = {**plan.status, "goldenBaseline": {"version": "1.0.0", "storageUri": V1["storageUri"], "meanSdr": 6.1},
              "probe": {"version": "2.0.0", "storageUri": V2["storageUri"], "error": "boom", "measuredAt": iso(T0)}}
    assert due(sp, failed, obs, T0 + timedelta(seconds=30)) == set()
    assert due(sp, failed, obs, T0 + timedelta(seconds=60)) == {("canary", "2.0.0", "http://c", None)}
    other = {**failed, "probe": {"version": "1.5.0", "storageUri": "gs://m/1.5", "meanSdr": 9.0}}
    assert due(sp, other, obs, T0) == {("canary", "2.0.0", "http://c", None)}


def test_a_revision_without_a_url_is_a_probe_error_to_record():
    sp, plan = start_canary()
    no_tags = Observed(exists=True, storage_uri=V2["storageUri"], canary_percent=10, ready=True, latest_ready=True,
                       latest_percent=10)
    assert due(sp, plan.status, no_tags, T0) == {
        ("canary", "2.0.0", None, "KServe reports no URL for the latest revision (tag 'latest')"),
        ("stable", "1.0.0", None, "KServe reports no URL for the previous revision (tag 'prev')")}


def test_raw_deployment_measures_the_stable_while_it_serves_alone():
    sp = spec(deploymentMode="RawDeployment")
    alone = Observed(exists=True, storage_uri=V1["storageUri"], ready=True, latest_ready=True, url="http://m")
    assert due(sp, STABLE, alone, T0) == {("stable", "1.0.0", "http://m", None)}
    plan = r.schedule(sp, STABLE, alone, T0)
    canary = Observed(exists=True, storage_uri=V2["storageUri"], ready=True, latest_ready=True, url="http://m")
    assert {(role, url) for role, _, url, _ in due(sp, plan.status, canary, T0)} == {("canary", "http://m"),
                                                                                     ("stable", None)}
    assert "RawDeployment keeps no previous revision" in next(
        m for role, _, _, m in due(sp, plan.status, canary, T0) if role == "stable")


def test_the_version_serving_alone_is_measured_once_and_its_result_kept_as_the_next_baseline():
    sp = spec(model=V1)
    alone = serving(V1["storageUri"])
    assert due(sp, STABLE, alone, T0) == {("stable", "1.0.0", "http://c", None)}  # through the `latest` tag
    moving = Observed(exists=True, storage_uri=V1["storageUri"], canary_percent=0, ready=True, latest_ready=True,
                      latest_percent=0, urls={"latest": "http://c", "prev": "http://s"})
    assert due(sp, STABLE, moving, T0) == set()  # not while the route still splits
    # Promoted: the canary's own result (status.probe) is the stable's; nothing to probe ...
    promoted = {**STABLE, "probe": {"version": "1.0.0", "storageUri": V1["storageUri"], "meanSdr": 6.0,
                                    "measuredAt": iso(T0)}}
    assert due(sp, promoted, alone, T0) == set()
    # ... and when the next canary's result replaces it there, it is written as the baseline.
    sp2, plan = start_canary()
    job = r.probe_due(sp2, {**plan.status, "probe": promoted["probe"]}, serving(V2["storageUri"], 10), T0, "ml", "m")
    assert [t.role for t in job.targets] == ["canary"] and job.baseline == promoted["probe"]


def test_a_result_of_another_golden_set_or_older_content_is_measured_again():
    sp, plan = start_canary(spec(analysis={"goldenSet": {"configMap": "refs"}}))
    obs = serving(V2["storageUri"], 10)
    builtin = {**plan.status, "probe": {"version": "2.0.0", "storageUri": V2["storageUri"], "meanSdr": 6.0},
               "goldenBaseline": {"version": "1.0.0", "storageUri": V1["storageUri"], "meanSdr": 6.1}}
    assert {t[0] for t in due(sp, builtin, obs, T0)} == {"canary", "stable"}
    job = r.probe_due(sp, builtin, obs, T0, "ml", "m")
    assert job.golden_set.config_map == "refs"
    on_refs = dict(goldenSet="configMap:refs", meanSdr=6.0)
    edited = {**plan.status,
              "probe": {"version": "2.0.0", "storageUri": V2["storageUri"], "goldenSetDigest": "new",
                        "measuredAt": iso(T0 + timedelta(minutes=5)), **on_refs},
              "goldenBaseline": {"version": "1.0.0", "storageUri": V1["storageUri"], "goldenSetDigest": "old",
                                 "measuredAt": iso(T0), **on_refs}}
    job = r.probe_due(sp, edited, obs, T0, "ml", "m")
    assert [(t.role, t.replaces) for t in job.targets] == [("stable", iso(T0))]


# ---------------------------------------------------------------- KServe v0.20 Standard mode: spec.canary


def _standard_canary_obs(canary_uri, pct, ready=True, stable_uri=V1["storageUri"]):
    """What observe() reports for an InferenceService with one spec.canary entry."""
    return Observed(exists=True, storage_uri=stable_uri, canary_percent=pct, ready=True, latest_ready=ready,
                    latest_percent=pct if ready else None, canary_uri=canary_uri, standard=True,
                    urls={"latest": "http://m-canary-predictor", "prev": "http://m-stable-predictor"})


def test_standard_mode_with_spec_canary_steps_analyses_and_promotes_like_knative():
    sp = spec(deploymentMode="Standard")
    mode = traffic_mode(sp, V0_20)
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0, mode=mode)
    # The canary beside the stable, at the first weight (not all traffic at once).
    assert plan.route == Route(V2["storageUri"], 10, stable_uri=V1["storageUri"])
    assert condition(plan.status, "TrafficSplit")["status"] == "True"
    assert condition(plan.status, "Ready")["message"] == "stable 1.0.0 serves 90 % of traffic, canary 2.0.0 10 %"
    # Ready canary at its weight: nothing to rewrite; its own URL probed, the stable's too.
    obs = _standard_canary_obs(V2["storageUri"], 10)
    assert r.schedule(sp, plan.status, obs, T0 + timedelta(seconds=5), mode=mode).route is None
    job = r.probe_due(spec(deploymentMode="Standard", analysis={"goldenSet": {}}), plan.status, obs,
                      T0 + timedelta(seconds=5), "ns", "m", mode=mode)
    assert {(t.role, t.url) for t in job.targets} == {("canary", "http://m-canary-predictor"),
                                                     ("stable", "http://m-stable-predictor")}
    t = T0 + timedelta(seconds=61)
    assert r.schedule(sp, plan.status, obs, t, mode=mode).analyze
    # Analysis compares canary with stable (both serve), steps on, then promotes by name.
    plan = r.after_analysis(sp, plan.status, judge(good(), sp, compare_stable=mode.splits), t, mode=mode)
    assert plan.route == Route(V2["storageUri"], 50, stable_uri=V1["storageUri"])
    plan = r.after_analysis(sp, plan.status, judge(good(), sp), t + timedelta(seconds=61), mode=mode)
    assert plan.status["phase"] == "Promoting" and plan.route == Route(V2["storageUri"], None)
    # Promoting until KServe serves the canary's predictor alone.
    still = _standard_canary_obs(V2["storageUri"], 50)
    assert r.schedule(sp, plan.status, still, t, mode=mode).status["phase"] == "Promoting"
    alone = Observed(exists=True, storage_uri=V2["storageUri"], ready=True, latest_ready=True, standard=True)
    st = r.schedule(sp, plan.status, alone, t, mode=mode).status
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "2.0.0"


def test_standard_mode_canary_rollback_drops_the_entry_and_on_an_older_kserve_all_traffic_moves_at_once():
    sp = spec(deploymentMode="RawDeployment")
    mode = traffic_mode(sp, V0_20)
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0, mode=mode)
    bad = judge(good(canary=VersionMetrics(100, 40, 2.0, 0.9)), sp)
    plan = r.after_analysis(sp, plan.status, bad, T0 + timedelta(seconds=61), mode=mode)
    assert plan.status["phase"] == "RolledBack" and plan.route == Route(V1["storageUri"], None)
    # KServe before v0.20: no spec.canary, so no split, and the condition says so.
    legacy = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0, mode=traffic_mode(sp, LEGACY))
    assert legacy.route == Route(V2["storageUri"], None)
    cond = condition(legacy.status, "TrafficSplit")
    assert cond["status"] == "False" and "no spec.canary" in cond["message"]
