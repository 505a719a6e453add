"""Rollout transitions: what each decision of the scheduler does to the status
(phase, canary fields, conditions, Events, history) and to the route. Pure:
a `StatusEditor` in, a `Plan` out. The scheduler (`scheduler.py`) decides
which one happens at a tick; `policy.py` says what webhooks, the
failed-analysis threshold and the hold deadline mean.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import policy
from .analysis import HOLD, PASS, Verdict
from .router import Route
from .status import (PAUSED, PROGRESSING, PROMOTING, ROLLED_BACK, SUCCEEDED, WAITING, WAITING_PROMOTION, StatusEditor,
                     condition, iso)

# Manual actions (annotation musicsplit.io/action)
ABORT, PROMOTE, RETRY = "abort", "promote", "retry"


@dataclass(frozen=True)
class Plan:
    status: dict  # the whole new status, as stored (RolloutStatus.dump(): camelCase keys)
    route: Route | None = None  # None: leave the InferenceService as it is
    create: bool = False  # the InferenceService must be created
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    analyze: bool = False  # run the analysis, then call after_analysis()
    verdict: str | None = None  # the result of an analysis judged at this tick without measuring (pre-rollout)


def plan_of(s: StatusEditor, **kw) -> Plan:
    _ready_during_rollout(s)
    return Plan(status=s.view(), events=tuple(s.events), **kw)


def _ready_during_rollout(s: StatusEditor) -> None:
    """While a canary takes traffic, Ready says who serves what (never the
    stable's "100 %" of before the rollout)."""
    canary, stable = s.st.canary_version, s.st.stable_version
    if s.st.phase not in (PROGRESSING, PAUSED, WAITING_PROMOTION, PROMOTING) or not canary or not stable:
        return
    w = int(s.st.canary_weight or 0)
    s.cond("Ready", True, "CanaryRollout", f"stable {stable} serves {100 - w} % of traffic, canary {canary} {w} %")


def route_of(s: StatusEditor) -> Route:
    """What the InferenceService serves while the canary is in flight."""
    return s.mode.during(s.view())


def set_canary(s: StatusEditor, target: dict, **fields) -> None:
    """A new rollout attempt of `target` (its webhook answers start afresh)."""
    s.clear_canary()
    s.set_canary(target, **fields)


def start_canary(s: StatusEditor, target: dict, why: str) -> Plan:
    spec = s.spec
    # Pre-rollout and confirm-traffic-increase hooks come before the first weight:
    # the revision starts with none (step -1).
    first = -1 if policy.staged(spec) else 0
    weight = s.mode.first_weight(spec, first == -1)
    set_canary(s, target, phase=PROGRESSING, canary_weight=weight, step_index=first, step_started_at=iso(s.now),
               holds=0, failed_analyses=0, message=f"canary {target['version']} at {weight} %")
    s.cond("Progressing", True, "CanaryStarted", s.st.message)
    if first == -1:
        where = ("is deployed with no traffic until they pass" if s.mode.splits else
                 "is not deployed until they pass (RawDeployment: no split)")
        s.event("Normal", "CanaryStarted", f"{why}: canary {target['version']} ({target['storageUri']}) {where} "
                                           f"(pre-rollout / confirm-traffic-increase webhooks); "
                                           f"stable {s.st.stable_version}")
    else:
        s.event("Normal", "CanaryStarted",
                f"{why}: canary {target['version']} ({target['storageUri']}) gets {weight} % of traffic"
                f"{'' if s.mode.splits else ' (RawDeployment: no split, all traffic)'}; stable {s.st.stable_version}")
    return plan_of(s, route=route_of(s))


def wait_for_confirmation(s: StatusEditor, target: dict) -> Plan:
    set_canary(s, target, phase=WAITING, canary_weight=0,
               message=f"{target['version']} waits for its confirm-rollout webhooks before anything is deployed")
    s.cond("Progressing", False, "WaitingForConfirmation", s.st.message)
    s.event("Normal", "WaitingForConfirmation", s.st.message)
    return plan_of(s)


def waiting(s: StatusEditor, target: dict, action: str | None) -> Plan | None:
    """Phase Waiting: the confirm-rollout gate is closed and nothing of the
    canary is deployed. None: the spec moved on, decide afresh."""
    if (s.st.canary_version, s.st.canary_storage_uri) != (target["version"], target["storageUri"]):
        s.clear_canary()  # never deployed: no history entry
        return None
    hook = policy.rollback_requested(s.spec, s.view())
    if action == ABORT or hook:
        outcome, reason, why = (("aborted", "Aborted", "aborted by user (musicsplit.io/action=abort)")
                                if action == ABORT else
                                ("rolledBack", "RollbackWebhook", f"rollback webhook {hook} asked for it"))
        model = s.canary_model()
        s.history(model, outcome, f"{why} before its rollout started")
        s.clear_canary()
        s.update(phase=ROLLED_BACK, message=f"{model['version']} {outcome} before its rollout started: {why}")
        s.cond("Progressing", False, reason, s.st.message)
        s.event("Warning", reason, s.st.message)
        return plan_of(s)
    if action == PROMOTE:
        start_canary(s, target, "promoted by user")
        return promote(s, "ManualPromotion", "promoted by user (musicsplit.io/action=promote) without waiting "
                                             "for confirm-rollout webhooks or analysis")
    if s.spec.rollout.paused:
        s.st.message = f"{target['version']} waits for its confirm-rollout webhooks (paused)"
        return plan_of(s)
    closed = policy.gate(s.spec, s.view(), "confirm-rollout", policy.start_key(s.view()))
    if closed:
        s.st.message = f"{target['version']} waits for confirm-rollout: {', '.join(closed)}"
        return plan_of(s)
    return start_canary(s, target, "confirm-rollout webhooks said yes")


def rollback(s: StatusEditor, outcome: str, reason: str, message: str) -> Plan:
    model = s.canary_model()
    s.history(model, outcome, message)
    s.update(phase=ROLLED_BACK, message=f"{model['version']} {outcome}: {message}")
    s.cond("Progressing", False, reason, s.st.message)
    s.event("Warning", reason, f"canary {model['version']} rolled back to stable {s.st.stable_version}: "
                               f"{message}")
    s.clear_canary()
    return plan_of(s, route=s.mode.rollback(s.view(), model))


def promote(s: StatusEditor, reason: str, message: str) -> Plan:
    s.update(phase=PROMOTING, message=f"promoting {s.st.canary_version}: {message}")
    s.cond("Progressing", True, reason, s.st.message)
    s.event("Normal", reason, s.st.message)
    if s.mode.promotes_at_once:
        return finish_promotion(s)
    s.st.canary_weight = 100
    return plan_of(s, route=s.mode.promotion(s.view()))


def hold_deadline(s: StatusEditor, held_s: float) -> Plan | None:
    """The canary was held past spec.rollout.holdDeadline: roll back, or
    escalate (it keeps its traffic; condition, Event, metric and alert say so)."""
    ro = s.spec.rollout
    why = (f"held at {s.st.canary_weight} % for {held_s:.0f}s, past holdDeadline {ro.hold_deadline} "
           f"({s.st.message})")
    if ro.on_hold_deadline == "rollback":
        return rollback(s, "rolledBack", "HoldDeadlineExceeded", why)
    s.st.hold_deadline_exceeded_at = iso(s.now)
    s.cond("HoldDeadlineExceeded", True, "Escalated", f"{why}; the canary keeps its traffic (onHoldDeadline: "
                                                      f"escalate)")
    s.event("Warning", "HoldDeadlineExceeded", f"canary {s.st.canary_version} {why}; it keeps its traffic "
                                               f"until someone acts (onHoldDeadline: escalate)")
    return None


def move(s: StatusEditor) -> Plan:
    """The canary's next move once its analysis passed and its gate is open:
    the next weight, or the promotion."""
    spec, i = s.spec, int(s.st.step_index or 0)
    weights = s.mode.weights(spec)
    was = s.st.canary_weight
    s.end_hold("Advanced", f"canary moved on from {was} %")
    if i >= 0 and i + 1 >= len(weights):
        return promote(s, "Promoting", f"analysis passed at {was} %, the last step")
    w = weights[i + 1]
    s.update(phase=PROGRESSING, step_index=i + 1, canary_weight=w, step_started_at=iso(s.now), holds=0,
             message=f"canary {s.st.canary_version} at {w} %")
    s.cond("Progressing", True, "StepAdvanced", s.st.message)
    s.event("Normal", "StepAdvanced", ("its pre-rollout and confirm-traffic-increase webhooks said yes" if i == -1
                                       else f"analysis passed at {was} %") + f"; canary now gets {w} %")
    return plan_of(s, route=route_of(s))


def passed(s: StatusEditor) -> Plan:
    """The analysis passed: move on, unless the move's confirm gate is closed."""
    gate_type, key = policy.next_gate(s.spec, s.view(), s.mode)
    closed = policy.gate(s.spec, s.view(), gate_type, key)
    if not closed:
        return move(s)
    # Held at this weight, and analysed again every interval meanwhile (Flagger).
    s.st.step_started_at = iso(s.now)
    s.hold()
    if gate_type == "confirm-promotion":
        s.st.phase = WAITING_PROMOTION
    s.st.message = f"analysis passed at {s.st.canary_weight} %; waiting for {gate_type}: {', '.join(closed)}"
    prev = s.st.condition("Progressing") or {}
    s.cond("Progressing", True, "WaitingForConfirmation", s.st.message)
    if prev.get("reason") != "WaitingForConfirmation" or gate_type not in (prev.get("message") or ""):
        s.event("Normal", "WaitingForConfirmation", s.st.message)
    return plan_of(s)


def finish_promotion(s: StatusEditor) -> Plan:
    model = s.canary_model()
    s.history(model, "promoted", s.st.message or "promoted")
    s.update(phase=SUCCEEDED, stable_version=model["version"], stable_storage_uri=model["storageUri"],
             message=f"{model['version']} serves 100 % of traffic")
    if model.get("released"):
        s.st.stable_released = model["released"]
    else:
        s.st.stable_released = None
    s.clear_canary()
    s.cond("Progressing", False, "Promoted", s.st.message)
    s.cond("Ready", True, "StableServing", s.st.message)
    s.event("Normal", "Promoted", s.st.message)
    # Standard without canaries already serves it alone; saying so again is harmless.
    return plan_of(s, route=s.mode.promotion({"canaryStorageUri": model["storageUri"],
                                              "canaryVersion": model["version"]})
                   if s.mode.promotes_at_once else None)


def judged(s: StatusEditor, verdict: Verdict) -> Plan:
    """A verdict's consequence: hold, a failure counted toward the threshold
    (rolled back once it is reached), or a pass (the next move, or its gate)."""
    spec, now = s.spec, s.now
    prev = s.st.last_analysis or {}
    s.st.last_analysis = {
        "time": iso(now), "weight": s.st.canary_weight, "canaryVersion": s.st.canary_version,
        "stableVersion": s.st.stable_version, "result": verdict.result, "reason": verdict.reason,
        "message": verdict.message, "checks": [c.as_status() for c in verdict.checks],
    }
    w = s.st.canary_weight
    if verdict.result == HOLD:
        s.st.holds = int(s.st.holds or 0) + 1
        s.hold()
        s.cond("AnalysisReady", False, verdict.reason, verdict.message)
        s.st.message = f"holding at {w} %: {verdict.reason}"
        if prev.get("reason") != verdict.reason or prev.get("weight") != w:
            s.event("Warning", "AnalysisHeld", f"{verdict.reason}: {verdict.message}")
        return plan_of(s)
    s.cond("AnalysisReady", True, "Measured", "the last analysis had the data it needed")
    if verdict.result == PASS:
        return passed(s)
    # Failed: counted over the whole rollout of this version (Flagger's
    # FailedChecks); rolled back once the count reaches the threshold.
    n, threshold = int(s.st.failed_analyses or 0) + 1, spec.analysis.threshold
    s.st.failed_analyses = n
    if n >= threshold:
        tally = f" ({n} failed analyses, threshold {threshold})" if threshold > 1 else ""
        return rollback(s, "rolledBack", "RolledBack", f"at {w} %: {verdict.message}{tally}")
    # Below the threshold: held at this weight; the next analysis looks at a new interval.
    s.st.step_started_at = iso(now)
    s.hold()
    s.st.message = f"analysis failed at {w} % ({n} of threshold {threshold}): {verdict.reason}"
    s.event("Warning", "AnalysisFailed", f"{n} of {threshold} failed analyses allowed before a rollback, at {w} %: "
                                         f"{verdict.message}")
    return plan_of(s)
