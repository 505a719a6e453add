"""The scheduler: when a rollout moves, and what happens next. Pure functions:
spec, status, what KServe reports and the clock in; a Plan out.

- `schedule`: at this tick, deploy, start a canary, wait, analyse, promote,
  roll back or recreate;
- `after_analysis`: the verdict's consequence (next step, promotion,
  rollback, hold);
- `probe_due`: which golden-set probes the background worker should run.

The verdict is `analysis.judge`; what webhooks, the failed-analysis threshold
and the hold deadline mean is `policy.py`; the InferenceService that sets the
traffic is `router.py`; the status it all lands in is `status.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from . import policy
from .analysis import Verdict, canary_record, golden_stale, stable_record
from .router import Observed, Route, TrafficMode, traffic_mode
from .spec import GoldenSetSpec, SeparationModelSpec
from .status import (ACTIVE, FAILED, INITIALIZING, PAUSED, PROGRESSING, PROMOTING, ROLLED_BACK, SUCCEEDED, WAITING,
                     RolloutStatus, StatusEditor, iso, parse_time, rejected)
from .transitions import (ABORT, PROMOTE, RETRY, Plan, finish_promotion, hold_deadline, judged, move, plan_of,
                          promote, rollback, route_of, start_canary, wait_for_confirmation, waiting)

__all__ = ["ABORT", "PROMOTE", "RETRY", "Plan", "ProbeJob", "ProbeTarget", "after_analysis", "probe_due", "schedule"]


def _target(spec: SeparationModelSpec) -> dict:
    m = spec.model
    return {"version": m.version, "storageUri": m.storage_uri, "released": m.released, "registry": m.registry}


def schedule(spec: SeparationModelSpec, status: dict, obs: Observed, now: datetime, *,
             generation: int | None = None, action: str | None = None, mode: TrafficMode | None = None) -> Plan:
    """The scheduler: what to do at this tick. Returns `Plan(analyze=True)` when
    an analysis is due; the caller then measures and calls `after_analysis`.
    `mode`: how the InferenceService carries a canary (default: the spec's mode
    on a KServe before v0.20)."""
    s = StatusEditor(status or {}, spec, now, generation, mode)
    target = _target(spec)
    phase = s.st.phase
    stable_v, stable_uri = s.st.stable_version, s.st.stable_storage_uri
    is_stable = stable_v == target["version"] and stable_uri == target["storageUri"]

    # -- no InferenceService (first reconcile, or deleted by hand)
    if not obs.exists:
        if stable_uri:
            was = s.st.canary_version if phase != WAITING else None  # a Waiting one was never deployed
            if was:
                s.history(s.canary_model(), "interrupted", "InferenceService disappeared mid-rollout")
            s.clear_canary()
            s.update(phase=SUCCEEDED,
                    message=f"InferenceService recreated with stable {stable_v}")
            s.event("Warning", "InferenceServiceRecreated",
                    f"InferenceService was missing; recreated serving stable {stable_v}"
                    + (f" (canary {was} restarts from the first step)" if was else ""))
            return plan_of(s, route=Route(stable_uri, None, stable_v), create=True)
        s.clear_canary()
        s.set_canary(target, phase=INITIALIZING, canary_weight=100, step_started_at=iso(now),
                     message=f"deploying {target['version']} (first version: no stable to compare)")
        s.cond("Ready", False, "Initializing", s.st.message)
        s.event("Normal", "Deploying", s.st.message)
        return plan_of(s, route=Route(target["storageUri"], None, target["version"]), create=True)

    if phase is None and not stable_uri:
        # An InferenceService but no status: the first tick's status write was
        # refused after its InferenceService was created. Deploying, as then.
        s.set_canary(target, phase=INITIALIZING, canary_weight=100, step_started_at=iso(now),
                     message=f"deploying {target['version']} (first version: no stable to compare)")
        s.cond("Ready", False, "Initializing", s.st.message)
        s.event("Normal", "Deploying", s.st.message)
        serving_it = obs.storage_uri == target["storageUri"]
        return plan_of(s, route=None if serving_it else Route(target["storageUri"], None, target["version"]))

    if phase == INITIALIZING:
        if s.st.canary_storage_uri != target["storageUri"]:
            s.clear_canary()
            s.set_canary(target, phase=INITIALIZING, canary_weight=100, step_started_at=iso(now),
                         message=f"deploying {target['version']}")
            return plan_of(s, route=Route(target["storageUri"], None, target["version"]))
        if obs.ready and obs.latest_ready and obs.storage_uri == target["storageUri"]:
            s.st.message = "first version deployed"
            return finish_promotion(s)
        started = parse_time(s.st.step_started_at) or now
        if obs.failure or (now - started).total_seconds() > spec.rollout.progress_deadline_s:
            why = obs.failure or f"not ready within progressDeadline {spec.rollout.progress_deadline}"
            s.history(s.canary_model(), "failed", why)
            s.update(phase=FAILED, message=f"{target['version']} failed: {why}")
            s.cond("Ready", False, "DeploymentFailed", s.st.message)
            s.event("Warning", "DeploymentFailed", s.st.message)
            return plan_of(s)
        return plan_of(s)

    if phase == FAILED and not stable_uri:
        last = (s.st.history or [{}])[-1]
        if action == RETRY or (last.get("version"), last.get("storageUri")) != (target["version"], target["storageUri"]):
            s.clear_canary()
            s.set_canary(target, phase=INITIALIZING, canary_weight=100, step_started_at=iso(now),
                         message=f"deploying {target['version']}")
            s.event("Normal", "Deploying", s.st.message)
            return plan_of(s, route=Route(target["storageUri"], None, target["version"]))
        return plan_of(s)

    if phase == WAITING:
        plan = waiting(s, target, action)
        if plan is not None:
            return plan
        phase = s.st.phase

    if phase == PROMOTING:
        if action == ABORT:
            return rollback(s, "aborted", "Aborted", "aborted by user during promotion")
        if s.mode.promotes_at_once or (obs.latest_ready and obs.canary_percent is None
                                       and obs.latest_percent in (None, 100)
                                       and obs.storage_uri == s.st.canary_storage_uri):
            return finish_promotion(s)
        want = s.mode.promotion(s.view())
        return plan_of(s, route=want if obs.route != s.mode.seen(want) else None)

    # (Paused before its first step, a rollout has no canary yet: idle below.)
    if phase in ACTIVE and s.st.canary_version:
        canary = (s.st.canary_version, s.st.canary_storage_uri)
        if canary != (target["version"], target["storageUri"]):
            if is_stable:
                return rollback(s, "aborted", "Aborted", "spec reverted to the stable version")
            s.history(s.canary_model(), "superseded", f"spec moved on to {target['version']}")
            return start_canary(s, target, f"superseded {canary[0]}")
        if action == ABORT:
            return rollback(s, "aborted", "Aborted", "aborted by user (musicsplit.io/action=abort)")
        # Manual actions come before every webhook: promote skips the gates
        # still closed, abort needs no rollback hook (ADR 0106).
        if action == PROMOTE:
            return promote(s, "ManualPromotion", "promoted by user (musicsplit.io/action=promote) "
                                                 "without waiting for analysis or confirm webhooks")
        hook = policy.rollback_requested(spec, s.view())
        if hook:
            return rollback(s, "rolledBack", "RollbackWebhook", f"rollback webhook {hook} asked for it")
        if spec.rollout.paused:
            if phase != PAUSED:
                s.update(phase=PAUSED, message=f"paused at {s.st.canary_weight} %")
                s.cond("Progressing", False, "Paused", s.st.message)
                s.event("Normal", "Paused", s.st.message)
            return plan_of(s)
        if phase == PAUSED:
            # Resume: the interval starts again, so the analysis sees fresh data,
            # and so does the hold deadline.
            s.end_hold("Resumed", "the rollout was resumed")
            s.update(phase=PROGRESSING, step_started_at=iso(now), message=f"resumed at {s.st.canary_weight} %")
            s.cond("Progressing", True, "Resumed", s.st.message)
            s.event("Normal", "Resumed", s.st.message)
            return plan_of(s, route=route_of(s))
        held = policy.hold_expired(spec, s.view(), now)
        if held is not None:
            plan = hold_deadline(s, held)
            if plan is not None:
                return plan
        started = parse_time(s.st.step_started_at) or now
        elapsed = (now - started).total_seconds()
        want = route_of(s)
        route = want if obs.route != s.mode.seen(want) else None
        if not obs.latest_ready:
            if obs.failure or elapsed > spec.rollout.progress_deadline_s:
                why = obs.failure or f"canary revision not ready within progressDeadline {spec.rollout.progress_deadline}"
                return rollback(s, "rolledBack", "CanaryNotReady", why)
            return plan_of(s, route=route)
        if policy.moving_on(s.view()):
            # Passed at this weight: only a gate held it, and it may be open now.
            if not policy.gate(spec, s.view(), *policy.next_gate(spec, s.view(), s.mode)):
                plan = move(s)
                return replace(plan, route=plan.route or route)
        elif s.st.step_index == -1:
            # Before the first weight the analysis is the pre-rollout hooks' answers.
            if not policy.answered(spec, s.view(), "pre-rollout", policy.interval_key(s.view())):
                return plan_of(s, route=route)
            verdict = policy.pre_rollout_verdict(spec, s.view())
            plan = judged(s, verdict)
            return replace(plan, route=plan.route or route, verdict=verdict.result)
        if s.st.step_index == -1 or elapsed < spec.rollout.interval_s:
            return plan_of(s, route=route)
        return plan_of(s, route=route, analyze=True)

    # -- idle: Succeeded, RolledBack, Failed-with-stable, or unknown
    if is_stable:
        s.clear_canary()
        if phase != SUCCEEDED or obs.storage_uri != stable_uri or obs.canary_percent is not None:
            s.update(phase=SUCCEEDED, message=f"{stable_v} serves 100 % of traffic")
            s.cond("Ready", True, "StableServing", s.st.message)
            return plan_of(s, route=Route(stable_uri, None, stable_v))
        if obs.ready:
            s.cond("Ready", True, "StableServing", s.st.message if s.st.message else "stable serving")
        else:
            s.cond("Ready", False, "InferenceServiceNotReady", obs.failure or "InferenceService is not ready")
        return plan_of(s)
    bad = rejected(s.view(), target["version"], target["storageUri"])
    if bad and action != RETRY:
        s.st.message = (f"{target['version']} was {bad['outcome']} at {bad['at']} ({bad['reason']}); "
                          f"stable {stable_v} keeps serving. Ship a new version, or annotate "
                          f"musicsplit.io/action=retry to try it again")
        return plan_of(s)
    if action == ABORT:
        s.history({k: target.get(k) for k in ("version", "storageUri", "released")}, "aborted",
                  "aborted by user (musicsplit.io/action=abort) before its rollout started")
        s.update(phase=ROLLED_BACK, message=f"{target['version']} aborted before its rollout started; stable "
                                           f"{stable_v} keeps serving")
        s.event("Warning", "Aborted", s.st.message)
        return plan_of(s)
    if spec.rollout.paused:
        s.update(phase=PAUSED if phase != PAUSED else phase,
                message=f"rollout of {target['version']} paused before its first step")
        return plan_of(s)
    if action == PROMOTE:
        start_canary(s, target, "new version, promoted by user")
        return promote(s, "ManualPromotion", "promoted by user (musicsplit.io/action=promote) without analysis")
    if spec.analysis.hooks("confirm-rollout"):
        return wait_for_confirmation(s, target)
    return start_canary(s, target, "new version")


def after_analysis(spec: SeparationModelSpec, status: dict, verdict: Verdict, now: datetime, *,
                   generation: int | None = None, mode: TrafficMode | None = None) -> Plan:
    """The verdict's consequence: next step, promotion, a failure counted
    toward the threshold, rollback, or hold."""
    return judged(StatusEditor(status, spec, now, generation, mode), verdict)


# ---------------------------------------------------------------- golden-set probe


@dataclass(frozen=True)
class ProbeTarget:
    """One release to probe, and where; `role` says where the result goes
    (canary: status.probe, stable: status.goldenBaseline)."""

    role: str
    version: str
    storage_uri: str
    url: str | None
    missing: str | None = None  # why there is no URL to probe (recorded as the probe's error)
    replaces: str | None = None  # measuredAt of the result this one replaces (a set that changed since)


@dataclass(frozen=True)
class ProbeJob:
    namespace: str
    name: str  # the SeparationModel's, and the served model's name
    targets: tuple[ProbeTarget, ...]
    uid: str | None = None  # the SeparationModel's metadata.uid
    golden_set: GoldenSetSpec = field(default_factory=GoldenSetSpec)  # which tracks
    # The stable's result while it sits in status.probe (the promoted canary's
    # own): written to goldenBaseline with the new canary's, which replaces it.
    baseline: dict | None = None


def _due(record: dict | None, now: datetime, retry_s: float, stale: bool) -> bool:
    """No result for this release yet, one of a set that changed since, or a
    failed one old enough to try again. A result is final otherwise: the probe
    is deterministic, so measuring again at the next step would only repeat it."""
    if record is None or stale:
        return True
    if record.get("error"):
        at = parse_time(record.get("measuredAt"))
        return at is None or (now - at).total_seconds() >= retry_s
    return False


def probe_due(spec: SeparationModelSpec, status: dict, obs: Observed, now: datetime, namespace: str,
              name: str, uid: str | None = None, mode: TrafficMode | None = None) -> ProbeJob | None:
    """The golden-set probes to run now (in the background; the tick only reads
    their results from status), or None."""
    mode = mode or traffic_mode(spec)
    golden = spec.analysis.golden_set
    if not golden.enabled:
        return None
    ref, retry_s = golden.ref, spec.rollout.interval_s
    st = RolloutStatus.of(status)
    phase, stable_v, stable_uri = st.phase, st.stable_version, st.stable_storage_uri
    stale = golden_stale(status, ref)
    canary_rec, stable_rec = canary_record(status, ref), stable_record(status, ref)
    stable_due = bool(stable_v) and _due(stable_rec, now, retry_s, stale == "stable")
    replaces = lambda rec: rec.get("measuredAt") if rec else None  # noqa: E731
    targets = []
    baseline = None
    # Only once KServe routes the canary its share: right after a route change,
    # status still describes the previous revisions, and the `latest` tag would
    # send the probe to the stable one (and a Standard canary before its first
    # step is not deployed: the URL serves the stable).
    if phase in ACTIVE and obs.latest_ready and mode.routed(obs, status):
        canary_v, canary_uri = st.canary_version, st.canary_storage_uri
        if canary_v and _due(canary_rec, now, retry_s, stale == "canary"):
            url = mode.canary_url(obs, status)
            targets.append(ProbeTarget("canary", canary_v, canary_uri, url, None if url else
                                       mode.no_canary_url(),
                                       replaces(canary_rec)))
            if stable_rec is not None and stable_rec is status.get("probe"):
                baseline = stable_rec
        if stable_due:
            url = mode.stable_url(obs, status)
            targets.append(ProbeTarget("stable", stable_v, stable_uri, url, None if url else mode.no_stable_url(),
                                       replaces(stable_rec)))
    elif phase == SUCCEEDED and stable_due and obs.ready and obs.storage_uri == stable_uri:
        # The version serving alone: measured now, so dashboards and the
        # registry have its golden SDR, and the next rollout its baseline
        # (Standard mode without canaries keeps no previous revision to probe then).
        url = mode.serving_url(obs)
        if url:
            targets.append(ProbeTarget("stable", stable_v, stable_uri, url, None, replaces(stable_rec)))
    return ProbeJob(namespace, name, tuple(targets), uid, golden, baseline) if targets else None
