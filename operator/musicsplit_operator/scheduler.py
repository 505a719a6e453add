"""The scheduler: when a rollout moves, and what happens next. Pure functions:
spec, status, what KServe reports and the clock in; a Plan out.

- `schedule`: at this tick, deploy, start a canary, wait, analyse, promote,
  roll back or recreate;
- `after_analysis`: the verdict's consequence (next step, promotion,
  rollback, hold);
- `probe_due`: which golden-set probes the background worker should run.

The verdict is `analysis.judge`; the InferenceService that sets the traffic
is `router.py`; the status it all lands in is `status.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .analysis import FAIL, HOLD, Verdict, canary_record, golden_stale, stable_record
from .router import Observed, Route
from .spec import GoldenSetSpec, SeparationModelSpec
from .status import (ACTIVE, FAILED, INITIALIZING, PAUSED, PROGRESSING, PROMOTING, ROLLED_BACK, SUCCEEDED,
                     StatusEditor, iso, parse_time, rejected)

# Manual actions (annotation musicsplit.io/action)
ABORT, PROMOTE, RETRY = "abort", "promote", "retry"


@dataclass(frozen=True)
class Plan:
    status: dict  # the whole new status
    route: Route | None = None  # None: leave the InferenceService as it is
    create: bool = False  # the InferenceService must be created
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    analyze: bool = False  # run the analysis, then call after_analysis()


def _plan(s: StatusEditor, **kw) -> Plan:
    return Plan(status=s.d, events=tuple(s.events), **kw)


def _target(spec: SeparationModelSpec) -> dict:
    m = spec.model
    return {"version": m.version, "storageUri": m.storage_uri, "released": m.released, "registry": m.registry}


def _start_canary(s: StatusEditor, target: dict, why: str) -> Plan:
    spec = s.spec
    weight = 100 if spec.raw else spec.rollout.weights()[0]
    s.clear_canary()
    s.set_canary(target, phase=PROGRESSING, canaryWeight=weight, stepIndex=0, stepStartedAt=iso(s.now), holds=0,
                 message=f"canary {target['version']} at {weight} %")
    s.cond("Progressing", True, "CanaryStarted", s.d["message"])
    s.event("Normal", "CanaryStarted",
            f"{why}: canary {target['version']} ({target['storageUri']}) gets {weight} % of traffic"
            f"{' (RawDeployment: no split, all traffic)' if spec.raw else ''}; stable {s.d.get('stableVersion')}")
    return _plan(s, route=Route(target["storageUri"], None if spec.raw else weight))


def _rollback(s: StatusEditor, outcome: str, reason: str, message: str) -> Plan:
    model = s.canary_model()
    s.history(model, outcome, message)
    s.d.update(phase=ROLLED_BACK, message=f"{model['version']} {outcome}: {message}")
    s.cond("Progressing", False, reason, s.d["message"])
    s.event("Warning", reason, f"canary {model['version']} rolled back to stable {s.d.get('stableVersion')}: "
                               f"{message}")
    s.clear_canary()
    stable_uri = s.d["stableStorageUri"]
    # Serverless: percent 0 sends all traffic back to the previous revision
    # (KServe's documented rollback). Raw: redeploy the stable storageUri.
    return _plan(s, route=Route(stable_uri, None) if s.spec.raw else Route(model["storageUri"], 0))


def _promote(s: StatusEditor, reason: str, message: str) -> Plan:
    s.d.update(phase=PROMOTING, message=f"promoting {s.d['canaryVersion']}: {message}")
    s.cond("Progressing", True, reason, s.d["message"])
    s.event("Normal", reason, s.d["message"])
    if s.spec.raw:
        return _finish_promotion(s)
    s.d["canaryWeight"] = 100
    return _plan(s, route=Route(s.d["canaryStorageUri"], None))


def _finish_promotion(s: StatusEditor) -> Plan:
    model = s.canary_model()
    s.history(model, "promoted", s.d.get("message", "promoted"))
    s.d.update(phase=SUCCEEDED, stableVersion=model["version"], stableStorageUri=model["storageUri"],
               message=f"{model['version']} serves 100 % of traffic")
    if model.get("released"):
        s.d["stableReleased"] = model["released"]
    else:
        s.d.pop("stableReleased", None)
    s.clear_canary()
    s.cond("Progressing", False, "Promoted", s.d["message"])
    s.cond("Ready", True, "StableServing", s.d["message"])
    s.event("Normal", "Promoted", s.d["message"])
    return _plan(s, route=Route(model["storageUri"], None) if s.spec.raw else None)


def schedule(spec: SeparationModelSpec, status: dict, obs: Observed, now: datetime, *,
             generation: int | None = None, action: str | None = None) -> Plan:
    """The scheduler: what to do at this tick. Returns `Plan(analyze=True)` when
    an analysis is due; the caller then measures and calls `after_analysis`."""
    s = StatusEditor(status or {}, spec, now, generation)
    target = _target(spec)
    phase = s.d.get("phase")
    stable_v, stable_uri = s.d.get("stableVersion"), s.d.get("stableStorageUri")
    is_stable = stable_v == target["version"] and stable_uri == target["storageUri"]

    # -- no InferenceService (first reconcile, or deleted by hand)
    if not obs.exists:
        if stable_uri:
            was = s.d.get("canaryVersion")
            if was:
                s.history(s.canary_model(), "interrupted", "InferenceService disappeared mid-rollout")
            s.clear_canary()
            s.d.update(phase=SUCCEEDED,
                       message=f"InferenceService recreated with stable {stable_v}")
            s.event("Warning", "InferenceServiceRecreated",
                    f"InferenceService was missing; recreated serving stable {stable_v}"
                    + (f" (canary {was} restarts from the first step)" if was else ""))
            return _plan(s, route=Route(stable_uri, None), create=True)
        s.clear_canary()
        s.set_canary(target, phase=INITIALIZING, canaryWeight=100, stepStartedAt=iso(now),
                     message=f"deploying {target['version']} (first version: no stable to compare)")
        s.cond("Ready", False, "Initializing", s.d["message"])
        s.event("Normal", "Deploying", s.d["message"])
        return _plan(s, route=Route(target["storageUri"], None), create=True)

    if phase == INITIALIZING:
        if s.d.get("canaryStorageUri") != target["storageUri"]:
            s.clear_canary()
            s.set_canary(target, phase=INITIALIZING, canaryWeight=100, stepStartedAt=iso(now),
                         message=f"deploying {target['version']}")
            return _plan(s, route=Route(target["storageUri"], None))
        if obs.ready and obs.latest_ready and obs.storage_uri == target["storageUri"]:
            s.d["message"] = "first version deployed"
            return _finish_promotion(s)
        started = parse_time(s.d.get("stepStartedAt")) or now
        if obs.failure or (now - started).total_seconds() > spec.rollout.progress_deadline_s:
            why = obs.failure or f"not ready within progressDeadline {spec.rollout.progress_deadline}"
            s.history(s.canary_model(), "failed", why)
            s.d.update(phase=FAILED, message=f"{target['version']} failed: {why}")
            s.cond("Ready", False, "DeploymentFailed", s.d["message"])
            s.event("Warning", "DeploymentFailed", s.d["message"])
            return _plan(s)
        return _plan(s)

    if phase == FAILED and not stable_uri:
        last = (s.d.get("history") or [{}])[-1]
        if action == RETRY or (last.get("version"), last.get("storageUri")) != (target["version"], target["storageUri"]):
            s.clear_canary()
            s.set_canary(target, phase=INITIALIZING, canaryWeight=100, stepStartedAt=iso(now),
                         message=f"deploying {target['version']}")
            s.event("Normal", "Deploying", s.d["message"])
            return _plan(s, route=Route(target["storageUri"], None))
        return _plan(s)

    if phase == PROMOTING:
        if action == ABORT:
            return _rollback(s, "aborted", "Aborted", "aborted by user during promotion")
        if spec.raw or (obs.latest_ready and obs.canary_percent is None and obs.latest_percent in (None, 100)):
            return _finish_promotion(s)
        return _plan(s, route=Route(s.d["canaryStorageUri"], None))

    if phase in ACTIVE:
        canary = (s.d.get("canaryVersion"), s.d.get("canaryStorageUri"))
        if canary != (target["version"], target["storageUri"]):
            if is_stable:
                return _rollback(s, "aborted", "Aborted", "spec reverted to the stable version")
            s.history(s.canary_model(), "superseded", f"spec moved on to {target['version']}")
            return _start_canary(s, target, f"superseded {canary[0]}")
        if action == ABORT:
            return _rollback(s, "aborted", "Aborted", "aborted by user (musicsplit.io/action=abort)")
        if action == PROMOTE:
            return _promote(s, "ManualPromotion", "promoted by user (musicsplit.io/action=promote) "
                                                  "without waiting for analysis")
        if spec.rollout.paused:
            if phase != PAUSED:
                s.d.update(phase=PAUSED, message=f"paused at {s.d.get('canaryWeight')} %")
                s.cond("Progressing", False, "Paused", s.d["message"])
                s.event("Normal", "Paused", s.d["message"])
            return _plan(s)
        if phase == PAUSED:
            # Resume: the interval starts again, so the analysis sees fresh data.
            s.d.update(phase=PROGRESSING, stepStartedAt=iso(now), message=f"resumed at {s.d.get('canaryWeight')} %")
            s.cond("Progressing", True, "Resumed", s.d["message"])
            s.event("Normal", "Resumed", s.d["message"])
            return _plan(s, route=Route(s.d["canaryStorageUri"], None if spec.raw else s.d.get("canaryWeight")))
        started = parse_time(s.d.get("stepStartedAt")) or now
        elapsed = (now - started).total_seconds()
        want_uri = s.d["canaryStorageUri"]
        want_pct = None if spec.raw else s.d.get("canaryWeight")
        route = Route(want_uri, want_pct) if (obs.storage_uri, obs.canary_percent) != (want_uri, want_pct) else None
        if not obs.latest_ready:
            if obs.failure or elapsed > spec.rollout.progress_deadline_s:
                why = obs.failure or f"canary revision not ready within progressDeadline {spec.rollout.progress_deadline}"
                return _rollback(s, "rolledBack", "CanaryNotReady", why)
            return _plan(s, route=route)
        if elapsed < spec.rollout.interval_s:
            return _plan(s, route=route)
        return _plan(s, route=route, analyze=True)

    # -- idle: Succeeded, RolledBack, Failed-with-stable, or unknown
    if is_stable:
        s.clear_canary()
        if phase != SUCCEEDED or obs.storage_uri != stable_uri or obs.canary_percent is not None:
            s.d.update(phase=SUCCEEDED, message=f"{stable_v} serves 100 % of traffic")
            s.cond("Ready", True, "StableServing", s.d["message"])
            return _plan(s, route=Route(stable_uri, None))
        if obs.ready:
            s.cond("Ready", True, "StableServing", s.d["message"] if s.d.get("message") else "stable serving")
        else:
            s.cond("Ready", False, "InferenceServiceNotReady", obs.failure or "InferenceService is not ready")
        return _plan(s)
    bad = rejected(s.d, target["version"], target["storageUri"])
    if bad and action != RETRY:
        s.d["message"] = (f"{target['version']} was {bad['outcome']} at {bad['at']} ({bad['reason']}); "
                          f"stable {stable_v} keeps serving. Ship a new version, or annotate "
                          f"musicsplit.io/action=retry to try it again")
        return _plan(s)
    if spec.rollout.paused:
        s.d.update(phase=PAUSED if phase != PAUSED else phase,
                   message=f"rollout of {target['version']} paused before its first step")
        return _plan(s)
    return _start_canary(s, target, "new version")


def after_analysis(spec: SeparationModelSpec, status: dict, verdict: Verdict, now: datetime, *,
                   generation: int | None = None) -> Plan:
    """The verdict's consequence: next step, promotion, rollback, or hold."""
    s = StatusEditor(status, spec, now, generation)
    prev = s.d.get("lastAnalysis") or {}
    s.d["lastAnalysis"] = {
        "time": iso(now), "weight": s.d.get("canaryWeight"), "canaryVersion": s.d.get("canaryVersion"),
        "stableVersion": s.d.get("stableVersion"), "result": verdict.result, "reason": verdict.reason,
        "message": verdict.message, "checks": [c.as_status() for c in verdict.checks],
    }
    if verdict.result == HOLD:
        s.d["holds"] = int(s.d.get("holds") or 0) + 1
        s.cond("AnalysisReady", False, verdict.reason, verdict.message)
        s.d["message"] = f"holding at {s.d.get('canaryWeight')} %: {verdict.reason}"
        if prev.get("reason") != verdict.reason or prev.get("weight") != s.d.get("canaryWeight"):
            s.event("Warning", "AnalysisHeld", f"{verdict.reason}: {verdict.message}")
        return _plan(s)
    s.cond("AnalysisReady", True, "Measured", "the last analysis had the data it needed")
    if verdict.result == FAIL:
        return _rollback(s, "rolledBack", "RolledBack",
                         f"at {s.d.get('canaryWeight')} %: {verdict.message}")
    weights = spec.rollout.weights()
    i = int(s.d.get("stepIndex") or 0)
    if spec.raw or i + 1 >= len(weights):
        return _promote(s, "Promoting", f"analysis passed at {s.d.get('canaryWeight')} %, the last step")
    w = weights[i + 1]
    s.d.update(stepIndex=i + 1, canaryWeight=w, stepStartedAt=iso(now), holds=0,
               message=f"canary {s.d['canaryVersion']} at {w} %")
    s.cond("Progressing", True, "StepAdvanced", s.d["message"])
    s.event("Normal", "StepAdvanced", f"analysis passed at {weights[i]} %; canary now gets {w} %")
    return _plan(s, route=Route(s.d["canaryStorageUri"], w))


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
              name: str, uid: str | None = None) -> ProbeJob | None:
    """The golden-set probes to run now (in the background; the tick only reads
    their results from status), or None."""
    golden = spec.analysis.golden_set
    if not golden.enabled:
        return None
    ref, retry_s = golden.ref, spec.rollout.interval_s
    phase = status.get("phase")
    stable_v, stable_uri = status.get("stableVersion"), status.get("stableStorageUri")
    stale = golden_stale(status, ref)
    canary_rec, stable_rec = canary_record(status, ref), stable_record(status, ref)
    stable_due = bool(stable_v) and _due(stable_rec, now, retry_s, stale == "stable")
    replaces = lambda rec: rec.get("measuredAt") if rec else None  # noqa: E731
    targets = []
    baseline = None
    # Serverless: only once KServe routes the canary's share to it. Right after
    # a route change, status still describes the previous revisions, and the
    # `latest` tag would send the probe to the stable one.
    routed = spec.raw or obs.latest_percent == status.get("canaryWeight")
    if phase in ACTIVE and obs.latest_ready and routed:
        canary_v, canary_uri = status.get("canaryVersion"), status.get("canaryStorageUri")
        if canary_v and _due(canary_rec, now, retry_s, stale == "canary"):
            url = obs.url if spec.raw else obs.urls.get("latest")
            targets.append(ProbeTarget("canary", canary_v, canary_uri, url, None if url else
                                       "KServe reports no URL for the latest revision (tag 'latest')",
                                       replaces(canary_rec)))
            if stable_rec is not None and stable_rec is status.get("probe"):
                baseline = stable_rec
        if stable_due:
            if spec.raw:
                targets.append(ProbeTarget("stable", stable_v, stable_uri, None,
                                           "RawDeployment keeps no previous revision to probe, and the stable "
                                           "version's baseline on this golden set was not measured while it served",
                                           replaces(stable_rec)))
            else:
                url = obs.urls.get("prev")
                targets.append(ProbeTarget("stable", stable_v, stable_uri, url, None if url else
                                           "KServe reports no URL for the previous revision (tag 'prev')",
                                           replaces(stable_rec)))
    elif phase == SUCCEEDED and stable_due and obs.ready and obs.storage_uri == stable_uri:
        # The version serving alone: measured now, so dashboards and the
        # registry have its golden SDR, and the next rollout its baseline
        # (RawDeployment keeps no previous revision to probe then).
        url = obs.url if spec.raw else (obs.urls.get("latest") if obs.latest_ready and obs.canary_percent is None
                                        and obs.latest_percent in (None, 100) else None)
        if url:
            targets.append(ProbeTarget("stable", stable_v, stable_uri, url, None, replaces(stable_rec)))
    return ProbeJob(namespace, name, tuple(targets), uid, golden, baseline) if targets else None
