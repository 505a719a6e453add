"""Rollout policy as pure decisions: Flagger's threshold, the hold deadline,
and each webhook type's effect on the scheduler. No Kubernetes, no HTTP: a
webhook's answer is what the worker would have written to status."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from musicsplit.operator import policy
from musicsplit.operator import scheduler as r
from musicsplit.operator.analysis import VersionMetrics, judge
from musicsplit.operator.router import Observed, Route
from musicsplit.operator.status import condition, iso
from tests.operator.builders import STABLE, T0, V1, V2, good, serving, spec, start_canary

BAD = VersionMetrics(requests=100, errors=40, p99_seconds=2.0, quality=0.9)  # errorRate 0.4 > 0.05
S = timedelta(seconds=1)


def hooks(*specs) -> dict:
    return {"webhooks": [{"name": n, "type": t, "url": f"http://hooks.test/{n}"} for n, t in specs]}


def answer(status: dict, name: str, type_: str, key: str, outcome: str = "ok", code: int | None = 200, at=T0):
    """What the webhook worker writes after a call."""
    rec = {"type": type_, "key": key, "outcome": outcome, "reason": f"HTTP {code}" if code else outcome,
           "startedAt": iso(at), "finishedAt": iso(at)}
    if code:
        rec["code"] = code
    return {**status, "webhooks": {**(status.get("webhooks") or {}), name: rec}}


def calls(sp, st, t, ready=True):
    return {(c.hook.name, c.key) for c in policy.due_calls(sp, st, t, "ml", "htdemucs", ready=ready)}


def analysed(sp, st, t, m=None):
    """One analysis (the handler's part), the rollout hooks' answers included."""
    m = replace(m or good(), webhooks=policy.rollout_checks(sp, st))
    return r.after_analysis(sp, st, judge(m, sp), t)


# ------------------------------------------------------------------ threshold


def test_threshold_one_rolls_back_at_the_first_failed_analysis():
    sp, plan = start_canary()
    assert sp.analysis.threshold == 1  # Flagger's default, and the behaviour before the field existed
    p = r.after_analysis(sp, plan.status, judge(good(canary=BAD), sp), T0 + 61 * S)
    assert p.status["phase"] == "RolledBack" and p.route == Route(V2["storageUri"], 0)
    assert p.status["history"][-1]["reason"].endswith("(over by 0.35)")  # no tally at threshold 1


def test_threshold_three_holds_the_weight_until_the_third_failure_each_an_interval_apart():
    sp, plan = start_canary(spec(analysis={"threshold": 3}))
    obs = serving(V2["storageUri"], 10)
    st, t = plan.status, T0 + 61 * S
    for n in (1, 2):
        p = r.after_analysis(sp, st, judge(good(canary=BAD), sp), t)
        st = p.status
        assert st["phase"] == "Progressing" and st["canaryWeight"] == 10 and p.route is None
        assert st["failedAnalyses"] == n and f"{n} of threshold 3" in st["message"]
        assert [e[:2] for e in p.events] == [("Warning", "AnalysisFailed")]
        assert st["holdStartedAt"] == iso(T0 + 61 * S)  # held since the first failure
        # The next analysis judges a fresh interval, not the same errors again.
        assert not r.schedule(sp, st, obs, t + 30 * S).analyze
        t += 61 * S
        assert r.schedule(sp, st, obs, t).analyze
    p = r.after_analysis(sp, st, judge(good(canary=BAD), sp), t)
    assert p.status["phase"] == "RolledBack" and p.route == Route(V2["storageUri"], 0)
    assert "(3 failed analyses, threshold 3)" in p.status["history"][-1]["reason"]


def test_failed_analyses_add_up_over_the_whole_rollout_not_per_step():
    """Flagger's FailedChecks: a step advance does not reset them; a new
    rollout (another version) does."""
    sp, plan = start_canary(spec(analysis={"threshold": 2}))
    p = r.after_analysis(sp, plan.status, judge(good(canary=BAD), sp), T0 + 61 * S)
    p = r.after_analysis(sp, p.status, judge(good(), sp), T0 + 122 * S)
    assert p.status["canaryWeight"] == 50 and p.status["failedAnalyses"] == 1
    assert "holdStartedAt" not in p.status  # it moved on
    p = r.after_analysis(sp, p.status, judge(good(canary=BAD), sp), T0 + 183 * S)
    assert p.status["phase"] == "RolledBack" and "(2 failed analyses, threshold 2)" in p.status["history"][-1]["reason"]
    v3 = spec(model={**V2, "version": "3.0.0", "storageUri": "gs://m/3"}, analysis={"threshold": 2})
    again = r.schedule(v3, p.status, serving(V2["storageUri"], 0), T0 + 200 * S)
    assert again.status["failedAnalyses"] == 0 and again.status["canaryVersion"] == "3.0.0"


def test_holds_never_count_toward_the_threshold():
    sp, plan = start_canary(spec(analysis={"threshold": 2}))
    st = plan.status
    for i in range(5):
        st = r.after_analysis(sp, st, judge(good(prometheus_error="refused"), sp), T0 + (61 + i) * S).status
    assert st["phase"] == "Progressing" and "failedAnalyses" in st and st["failedAnalyses"] == 0 and st["holds"] == 5


# ------------------------------------------------------------------ hold deadline


def held_canary(**rollout):
    sp = spec(rollout={"holdDeadline": "5m", **rollout})
    _, plan = start_canary(sp)
    p = r.after_analysis(sp, plan.status, judge(good(prometheus_error="refused"), sp), T0 + 61 * S)
    assert p.status["holdStartedAt"] == iso(T0 + 61 * S)
    return sp, p.status


def test_hold_deadline_rolls_back_by_default():
    sp, st = held_canary()
    obs = serving(V2["storageUri"], 10)
    assert r.schedule(sp, st, obs, T0 + 361 * S).status["phase"] == "Progressing"  # exactly 5m: not past it
    p = r.schedule(sp, st, obs, T0 + 362 * S)
    assert p.status["phase"] == "RolledBack" and p.route == Route(V2["storageUri"], 0)
    assert ("Warning", "HoldDeadlineExceeded") in [e[:2] for e in p.events]
    reason = p.status["history"][-1]["reason"]
    assert "held at 10 % for 301s, past holdDeadline 5m" in reason and "PrometheusUnreachable" in reason


def test_hold_deadline_escalates_once_and_the_canary_keeps_its_traffic():
    sp, st = held_canary(onHoldDeadline="escalate")
    obs = serving(V2["storageUri"], 10)
    p = r.schedule(sp, st, obs, T0 + 400 * S)
    assert p.status["phase"] == "Progressing" and p.status["canaryWeight"] == 10 and p.route is None
    assert p.analyze  # it goes on being analysed: evidence may still come
    cond = condition(p.status, "HoldDeadlineExceeded")
    assert cond["status"] == "True" and cond["reason"] == "Escalated" and "keeps its traffic" in cond["message"]
    assert [e[1] for e in p.events] == ["HoldDeadlineExceeded"]
    again = r.schedule(sp, p.status, obs, T0 + 500 * S)
    assert again.events == () and again.status["holdDeadlineExceededAt"] == iso(T0 + 400 * S)
    # Evidence arrives: the canary moves on and the escalation is over.
    moved = r.after_analysis(sp, again.status, judge(good(), sp), T0 + 510 * S)
    assert moved.status["canaryWeight"] == 50 and "holdStartedAt" not in moved.status
    assert condition(moved.status, "HoldDeadlineExceeded")["status"] == "False"


def test_pause_and_resume_restart_the_hold_clock():
    sp, st = held_canary()
    obs = serving(V2["storageUri"], 10)
    paused = r.schedule(spec(rollout={"holdDeadline": "5m", "paused": True}), st, obs, T0 + 300 * S)
    assert paused.status["phase"] == "Paused"
    resumed = r.schedule(sp, paused.status, obs, T0 + 1000 * S)
    assert resumed.status["phase"] == "Progressing" and "holdStartedAt" not in resumed.status
    assert r.schedule(sp, resumed.status, obs, T0 + 1010 * S).status["phase"] == "Progressing"


# ------------------------------------------------------------------ webhooks, type by type


def test_confirm_rollout_keeps_the_version_waiting_undeployed_until_every_hook_says_yes():
    sp = spec(analysis=hooks(("start-gate", "confirm-rollout")))
    p = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    st = p.status
    assert st["phase"] == "Waiting" and st["canaryVersion"] == "2.0.0" and st["canaryWeight"] == 0
    assert p.route is None  # nothing deployed
    key = policy.start_key(st)
    assert calls(sp, st, T0) == {("start-gate", key)}
    no = answer(st, "start-gate", "confirm-rollout", key, "rejected", 403, at=T0)
    p = r.schedule(sp, no, serving(V1["storageUri"]), T0 + 5 * S)
    assert p.status["phase"] == "Waiting" and p.route is None and "start-gate (HTTP 403)" in p.status["message"]
    assert calls(sp, no, T0 + 30 * S) == set() and calls(sp, no, T0 + 60 * S) == {("start-gate", key)}
    yes = answer(st, "start-gate", "confirm-rollout", key, at=T0 + 61 * S)
    p = r.schedule(sp, yes, serving(V1["storageUri"]), T0 + 62 * S)
    assert p.status["phase"] == "Progressing" and p.route == Route(V2["storageUri"], 10)


def test_a_paused_rollout_polls_no_gate_and_no_rollback_hook():
    hs = hooks(("start-gate", "confirm-rollout"), ("undo", "rollback"))
    sp, paused = spec(analysis=hs), spec(analysis=hs, rollout={"paused": True})
    st = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0).status
    asked = {("start-gate", policy.start_key(st)), ("undo", policy.rollback_key(st))}
    assert calls(sp, st, T0) == asked
    p = r.schedule(paused, st, serving(V1["storageUri"]), T0 + 5 * S)
    assert p.status["phase"] == "Waiting" and "(paused)" in p.status["message"]
    assert calls(paused, p.status, T0 + 120 * S) == set()
    assert calls(sp, p.status, T0 + 125 * S) == asked  # resumed: asked again


def test_pre_rollout_runs_before_any_traffic_and_its_failures_count_toward_the_threshold():
    sp = spec(analysis={"threshold": 2, **hooks(("smoke", "pre-rollout"))})
    _, plan = start_canary(sp)
    st = plan.status
    assert plan.route == Route(V2["storageUri"], 0) and st["stepIndex"] == -1 and st["canaryWeight"] == 0
    at_zero = serving(V2["storageUri"], 0)
    assert calls(sp, st, T0, ready=False) == set()  # the revision must serve first
    key = policy.interval_key(st)
    assert calls(sp, st, T0 + 5 * S) == {("smoke", key)}
    assert r.schedule(sp, st, at_zero, T0 + 5 * S).status["stepIndex"] == -1  # no answer yet: wait
    failed = answer(st, "smoke", "pre-rollout", key, "rejected", 500, at=T0 + 6 * S)
    p = r.schedule(sp, failed, at_zero, T0 + 7 * S)
    assert p.verdict == "fail" and p.status["failedAnalyses"] == 1 and p.route is None
    assert p.status["lastAnalysis"]["checks"][0]["message"] == "pre-rollout webhook smoke failed: HTTP 500"
    # Tried again an interval later, under a new key.
    retry = policy.interval_key(p.status)
    assert retry != key and calls(sp, p.status, T0 + 30 * S) == set()
    assert calls(sp, p.status, T0 + 68 * S) == {("smoke", retry)}
    p2 = r.schedule(sp, answer(p.status, "smoke", "pre-rollout", retry, "timeout", None), at_zero, T0 + 70 * S)
    assert p2.status["phase"] == "RolledBack" and "pre-rollout webhook smoke failed: timeout" in \
        p2.status["history"][-1]["reason"]
    # A yes sends the canary its first weight.
    ok = r.schedule(sp, answer(st, "smoke", "pre-rollout", key), at_zero, T0 + 7 * S)
    assert ok.verdict == "pass" and ok.route == Route(V2["storageUri"], 10) and ok.status["stepIndex"] == 0


def test_pre_rollout_in_raw_deployment_runs_before_the_canary_is_deployed():
    sp = spec(deploymentMode="RawDeployment", analysis=hooks(("smoke", "pre-rollout")))
    plan = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert plan.route == Route(V1["storageUri"], None) and plan.status["stepIndex"] == -1
    # Its one URL still serves the stable version: no golden-set probe of the canary there.
    alone = Observed(exists=True, storage_uri=V1["storageUri"], ready=True, latest_ready=True, url="http://m")
    job = r.probe_due(sp, {**plan.status, "goldenBaseline": {"version": "1.0.0", "storageUri": V1["storageUri"],
                                                             "meanSdr": 6.0}}, alone, T0, "ml", "htdemucs")
    assert job is None
    st = answer(plan.status, "smoke", "pre-rollout", policy.interval_key(plan.status))
    p = r.schedule(sp, st, serving(V1["storageUri"]), T0 + 5 * S)
    assert p.route == Route(V2["storageUri"], None) and p.status["canaryWeight"] == 100


def test_rollout_hooks_are_called_every_interval_and_are_checks_of_the_analysis():
    sp = spec(analysis=hooks(("load-test", "rollout")))
    _, plan = start_canary(sp)
    st = plan.status
    key = policy.interval_key(st)
    assert calls(sp, st, T0 + 1 * S) == {("load-test", key)}
    # No answer by the analysis: hold, not a failure.
    held = analysed(sp, st, T0 + 61 * S)
    assert held.status["lastAnalysis"]["reason"] == "WebhookPending" and held.status["failedAnalyses"] == 0
    answered_ = answer(st, "load-test", "rollout", key, at=T0 + 2 * S)
    assert calls(sp, answered_, T0 + 30 * S) == set() and calls(sp, answered_, T0 + 62 * S) == {("load-test", key)}
    ok = analysed(sp, answered_, T0 + 61 * S)
    assert ok.status["canaryWeight"] == 50
    check = next(c for c in ok.status["lastAnalysis"]["checks"] if c["name"] == "webhook load-test")
    assert check["result"] == "pass" and check["value"] == 200
    # The next step's interval is another key: the old answer does not count there.
    assert calls(sp, ok.status, T0 + 62 * S) == {("load-test", policy.interval_key(ok.status))}
    bad = analysed(sp, answer(st, "load-test", "rollout", key, "rejected", 503), T0 + 61 * S)
    assert bad.status["phase"] == "RolledBack"
    assert "rollout webhook load-test failed: HTTP 503" in bad.status["history"][-1]["reason"]


def test_a_webhook_the_operator_may_not_call_holds_and_never_fails():
    sp = spec(analysis=hooks(("load-test", "rollout")))
    _, plan = start_canary(sp)
    st = answer(plan.status, "load-test", "rollout", policy.interval_key(plan.status), "notAllowed", None)
    p = analysed(sp, st, T0 + 61 * S)
    assert p.status["lastAnalysis"]["result"] == "hold" and p.status["lastAnalysis"]["reason"] == "WebhookUrlNotAllowed"


def test_confirm_traffic_increase_gates_every_weight_increase_the_first_included():
    sp = spec(analysis=hooks(("more", "confirm-traffic-increase")))
    _, plan = start_canary(sp)
    st = plan.status
    assert plan.route == Route(V2["storageUri"], 0) and st["stepIndex"] == -1
    at_zero = serving(V2["storageUri"], 0)
    p = r.schedule(sp, st, at_zero, T0 + 2 * S)  # nothing to check before the first weight: only the gate
    st = p.status
    assert st["canaryWeight"] == 0 and p.route is None and st["phase"] == "Progressing"
    assert ("Normal", "WaitingForConfirmation") in [e[:2] for e in p.events] and "more (not answered" in st["message"]
    step0 = f"{policy.attempt(st)}/step-0"
    assert calls(sp, st, T0 + 2 * S) == {("more", step0)}
    assert r.schedule(sp, st, at_zero, T0 + 3 * S).events == ()  # said once
    p = r.schedule(sp, answer(st, "more", "confirm-traffic-increase", step0), at_zero, T0 + 4 * S)
    assert p.route == Route(V2["storageUri"], 10) and p.status["stepIndex"] == 0
    # At 10 % the analysis passes, and the next increase waits for the gate again.
    p = r.after_analysis(sp, p.status, judge(good(), sp), T0 + 65 * S)
    assert p.status["canaryWeight"] == 10 and p.route is None and p.status["holdStartedAt"] == iso(T0 + 65 * S)
    assert calls(sp, p.status, T0 + 65 * S) == {("more", f"{policy.attempt(st)}/step-1")}


def test_confirm_promotion_holds_in_waiting_promotion_while_analyses_go_on():
    sp = spec(analysis=hooks(("ship-it", "confirm-promotion")))
    _, plan = start_canary(sp)
    p = r.after_analysis(sp, plan.status, judge(good(), sp), T0 + 61 * S)
    p = r.after_analysis(sp, p.status, judge(good(), sp), T0 + 122 * S)
    st = p.status
    assert st["phase"] == "WaitingPromotion" and st["canaryWeight"] == 50 and p.route is None
    key = f"{policy.attempt(st)}/promotion"
    assert calls(sp, st, T0 + 122 * S) == {("ship-it", key)}
    obs = serving(V2["storageUri"], 50)
    no = answer(st, "ship-it", "confirm-promotion", key, "rejected", 403, at=T0 + 123 * S)
    assert not r.schedule(sp, no, obs, T0 + 150 * S).analyze
    assert r.schedule(sp, no, obs, T0 + 183 * S).analyze  # analysed every interval while it waits
    # A failure while waiting still rolls back (threshold 1).
    bad = r.after_analysis(sp, no, judge(good(canary=BAD), sp), T0 + 183 * S)
    assert bad.status["phase"] == "RolledBack"
    # Once it says yes the canary is promoted at the next tick.
    yes = answer(st, "ship-it", "confirm-promotion", key, at=T0 + 130 * S)
    p = r.schedule(sp, yes, obs, T0 + 131 * S)
    assert p.status["phase"] == "Promoting" and p.route == Route(V2["storageUri"], None)


def test_a_gate_answer_is_only_read_with_passing_evidence_at_that_weight():
    sp = spec(analysis=hooks(("ship-it", "confirm-promotion")))
    _, plan = start_canary(sp)
    p = r.after_analysis(sp, plan.status, judge(good(), sp), T0 + 61 * S)
    p = r.after_analysis(sp, p.status, judge(good(), sp), T0 + 122 * S)
    # The next analysis has no evidence: the gate's yes does not promote blind.
    held = r.after_analysis(sp, p.status, judge(good(prometheus_error="down"), sp), T0 + 183 * S)
    yes = answer(held.status, "ship-it", "confirm-promotion", f"{policy.attempt(held.status)}/promotion")
    assert not policy.moving_on(yes)
    assert r.schedule(sp, yes, serving(V2["storageUri"], 50), T0 + 184 * S).status["phase"] == "WaitingPromotion"


def test_manual_promote_and_abort_win_over_closed_gates():
    sp = spec(analysis=hooks(("ship-it", "confirm-promotion"), ("start-gate", "confirm-rollout")))
    waiting = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert waiting.status["phase"] == "Waiting"
    promoted = r.schedule(sp, waiting.status, serving(V1["storageUri"]), T0 + S, action="promote")
    assert promoted.status["phase"] == "Promoting" and promoted.route == Route(V2["storageUri"], None)
    aborted = r.schedule(sp, waiting.status, serving(V1["storageUri"]), T0 + S, action="abort")
    assert aborted.status["phase"] == "RolledBack" and aborted.route is None  # it was never deployed
    assert aborted.status["history"][-1]["outcome"] == "aborted"
    assert r.schedule(sp, aborted.status, serving(V1["storageUri"]), T0 + 2 * S).status["phase"] == "RolledBack"
    # In WaitingPromotion, with the gate closed:
    sp2 = spec(analysis=hooks(("ship-it", "confirm-promotion")))
    _, plan = start_canary(sp2)
    st = r.after_analysis(sp2, plan.status, judge(good(), sp2), T0 + 61 * S).status
    st = r.after_analysis(sp2, st, judge(good(), sp2), T0 + 122 * S).status
    obs = serving(V2["storageUri"], 50)
    assert r.schedule(sp2, st, obs, T0 + 123 * S, action="promote").status["phase"] == "Promoting"
    assert r.schedule(sp2, st, obs, T0 + 123 * S, action="abort").status["history"][-1]["outcome"] == "aborted"


def test_a_rollback_hook_that_says_yes_rolls_back_now():
    sp = spec(analysis=hooks(("red-button", "rollback")))
    _, plan = start_canary(sp)
    st = plan.status
    key = policy.rollback_key(st)
    assert calls(sp, st, T0) == {("red-button", key)}
    obs = serving(V2["storageUri"], 10)
    no = answer(st, "red-button", "rollback", key, "rejected", 404)
    assert r.schedule(sp, no, obs, T0 + 5 * S).status["phase"] == "Progressing"
    assert calls(sp, no, T0 + 61 * S) == {("red-button", key)}  # polled every interval
    p = r.schedule(sp, answer(st, "red-button", "rollback", key), obs, T0 + 5 * S)
    assert p.status["phase"] == "RolledBack" and p.route == Route(V2["storageUri"], 0)
    assert p.events[-1][1] == "RollbackWebhook" and "red-button (HTTP 200)" in p.status["history"][-1]["reason"]
    # A yes given to an earlier rollout of the same version is not this one's.
    retried = r.schedule(sp, p.status, serving(V2["storageUri"], 0), T0 + 20 * S, action="retry")
    stale = {**retried.status, "webhooks": p.status.get("webhooks") or answer(st, "red-button", "rollback", key)["webhooks"]}
    assert r.schedule(sp, stale, serving(V2["storageUri"], 10), T0 + 21 * S).status["phase"] == "Progressing"


def test_post_rollout_and_event_hooks_are_told_what_happened():
    sp = spec(analysis=hooks(("notify", "post-rollout"), ("slack", "event")))
    first = r.schedule(spec(model=V1, analysis=hooks(("notify", "post-rollout"))), {}, Observed(exists=False), T0)
    assert [c.hook.name for c in policy.notifications(sp, {}, first.status, [], "ml", "htdemucs", T0)] == []
    _, plan = start_canary(sp)
    out = policy.notifications(sp, STABLE, plan.status, plan.events, "ml", "htdemucs", T0)
    assert [c.hook.name for c in out] == ["slack"]
    event = out[0].payload
    assert event["metadata"]["eventReason"] == "CanaryStarted" and event["metadata"]["eventType"] == "Normal"
    assert event["phase"] == "Progressing" and event["canaryVersion"] == "2.0.0" and event["canaryWeight"] == 10
    assert event["metadata"]["timestamp"] == str(int(T0.timestamp() * 1000)) and out[0].key is None
    back = r.after_analysis(sp, plan.status, judge(good(canary=BAD), sp), T0 + 61 * S)
    out = policy.notifications(sp, plan.status, back.status, back.events, "ml", "htdemucs", T0 + 61 * S)
    post = next(c for c in out if c.hook.name == "notify")
    assert post.payload["outcome"] == "rolledBack" and post.payload["canaryVersion"] == "2.0.0"
    assert post.payload["phase"] == "RolledBack" and post.payload["stableVersion"] == "1.0.0"
    assert "errorRate" in post.payload["reason"]


def test_payload_is_flaggers_plus_versions_and_weight():
    sp = spec(analysis={"webhooks": [{"name": "load", "url": "http://t/", "metadata": {"cmd": "hey -z 1m"}}]})
    _, plan = start_canary(sp)
    (c,) = policy.due_calls(sp, plan.status, T0, "ml", "htdemucs", ready=True, canary_url="http://latest")
    assert c.hook.type == "rollout"  # Flagger's default type
    assert c.payload == {"name": "htdemucs", "namespace": "ml", "phase": "Progressing", "type": "rollout",
                         "webhook": "load", "metadata": {"cmd": "hey -z 1m"}, "canaryVersion": "2.0.0",
                         "canaryStorageUri": V2["storageUri"], "canaryWeight": 10, "stableVersion": "1.0.0",
                         "stableStorageUri": V1["storageUri"], "canaryUrl": "http://latest"}


def test_a_rollout_paused_before_its_first_step_stays_paused():
    sp = spec(rollout={"paused": True})
    p = r.schedule(sp, STABLE, serving(V1["storageUri"]), T0)
    assert p.status["phase"] == "Paused" and p.route is None
    p = r.schedule(sp, p.status, serving(V1["storageUri"]), T0 + 10 * S)
    assert p.status["phase"] == "Paused" and p.route is None and not p.status["history"][1:]
    assert r.schedule(spec(), p.status, serving(V1["storageUri"]), T0 + 20 * S).route == Route(V2["storageUri"], 10)


@pytest.mark.parametrize("analysis, words", [
    ({"threshold": 0}, "threshold"),
    ({"threshold": 101}, "threshold"),
    ({"webhooks": [{"name": "a" * 64, "url": "http://x/"}]}, "name"),
    ({"webhooks": [{"name": f"h{i}", "url": "http://x/"} for i in range(21)]}, "webhooks"),
    ({"webhooks": [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]}, "unique"),
    ({"webhooks": [{"name": "a", "url": "ftp://x/"}]}, "http"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "timeout": "6m"}]}, "at most 300s"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "type": "pre-promotion"}]}, "type"),
])
def test_bad_policy_specs_are_refused_with_a_reason(analysis, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        spec(analysis=analysis)
    assert words in str(e.value)
    with pytest.raises(ValidationError, match="duration"):
        spec(rollout={"holdDeadline": "soon"})
