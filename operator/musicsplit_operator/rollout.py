"""Rollout decisions as pure functions: data in, data out, no Kubernetes.

Split the way Flagger splits it:
- scheduler (`schedule`): given the spec, the status so far, what KServe
  reports and the clock, what happens now (start a canary, wait, analyse,
  promote, roll back);
- analysis (`judge`): given measurements of canary and stable, is the canary
  healthy, unhealthy, or is there not enough evidence to say (hold);
- router (`router.py`): renders the InferenceService that sets the traffic.

All rollout state lives in the resource's status (`Plan.status` is the whole
new status), so an operator restarted mid-rollout carries on from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .spec import SeparationModelSpec

HISTORY_LIMIT = 50

# Phases
INITIALIZING, PROGRESSING, PROMOTING = "Initializing", "Progressing", "Promoting"
SUCCEEDED, ROLLED_BACK, FAILED, PAUSED = "Succeeded", "RolledBack", "Failed", "Paused"
ACTIVE = (PROGRESSING, PAUSED)

# Manual actions (annotation musicsplit.io/action)
ABORT, PROMOTE, RETRY = "abort", "promote", "retry"

# Analysis verdicts
PASS, FAIL, HOLD = "pass", "fail", "hold"


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------- analysis


@dataclass(frozen=True)
class VersionMetrics:
    """What Prometheus says about one model version over the analysis window."""

    requests: float
    errors: float
    p99_seconds: float | None
    quality: float | None  # mean audio_separation_quality, 0..1

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Measurements:
    canary: VersionMetrics | None = None
    stable: VersionMetrics | None = None
    canary_sdr: float | None = None  # golden-set mean SDR (dB)
    stable_sdr: float | None = None
    prometheus_error: str | None = None  # set when Prometheus could not be asked
    probe_error: str | None = None  # set when the golden-set probe could not run


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float
    result: str  # pass | fail | hold
    message: str

    def as_status(self) -> dict:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "result": self.result,
            "message": self.message,
        }


@dataclass(frozen=True)
class Verdict:
    result: str  # pass | fail | hold
    checks: tuple[Check, ...]
    reason: str  # CamelCase, for conditions and events
    message: str

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.result == FAIL]


def _finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _upper(name: str, value: float | None, limit: float, unit: str = "", missing: str = "no data") -> Check:
    if not _finite(value):
        return Check(name, None, limit, HOLD, f"{name}: {missing}")
    if value <= limit:
        return Check(name, value, limit, PASS, f"{name} {value:.4g}{unit} <= {limit:g}{unit}")
    return Check(name, value, limit, FAIL,
                 f"{name} {value:.4g}{unit} > {limit:g}{unit} (over by {value - limit:.4g}{unit})")


def _lower(name: str, value: float | None, limit: float, unit: str = "", missing: str = "no data") -> Check:
    if not _finite(value):
        return Check(name, None, limit, HOLD, f"{name}: {missing}")
    if value >= limit:
        return Check(name, value, limit, PASS, f"{name} {value:.4g}{unit} >= {limit:g}{unit}")
    return Check(name, value, limit, FAIL,
                 f"{name} {value:.4g}{unit} < {limit:g}{unit} (under by {limit - value:.4g}{unit})")


def judge(m: Measurements, spec: SeparationModelSpec, *, compare_stable: bool = True) -> Verdict:
    """Is the canary healthy? `fail` on any measured regression, else `hold`
    while any check lacks evidence, else `pass`. Never `pass` without data."""
    a = spec.analysis
    checks: list[Check] = []
    c, s = m.canary, m.stable
    if m.prometheus_error:
        for name, limit in (("errorRate", a.max_error_rate), ("latencyP99", a.max_p99_latency_seconds),
                            ("qualityScore", a.min_quality_score)):
            checks.append(Check(name, None, limit, HOLD, f"{name}: Prometheus unreachable: {m.prometheus_error}"))
    else:
        requests = c.requests if c else 0.0
        enough = requests >= a.min_requests
        checks.append(Check(
            "requests", requests, a.min_requests, PASS if enough else HOLD,
            f"canary served {requests:.0f} requests in the window ({'>=' if enough else '<'} {a.min_requests} needed)"
            # Metrics are filtered on model_version = spec.model.version: none at
            # all while traffic flows usually means the loaded model says otherwise.
            + ("; check that the model dir's musicsplit.yaml version equals spec.model.version"
               if requests <= 0 else ""),
        ))
        why = "not enough canary requests yet"
        if enough:
            checks.append(_upper("errorRate", c.error_rate, a.max_error_rate))
            checks.append(_upper("latencyP99", c.p99_seconds, a.max_p99_latency_seconds, "s"))
            checks.append(_lower("qualityScore", c.quality, a.min_quality_score))
            if compare_stable:
                drop = (s.quality - c.quality) if (s and _finite(s.quality) and _finite(c.quality)) else None
                checks.append(_upper("qualityDrop", drop, a.max_quality_drop,
                                     missing="no stable quality data to compare"))
        else:
            for name, limit in (("errorRate", a.max_error_rate), ("latencyP99", a.max_p99_latency_seconds),
                                ("qualityScore", a.min_quality_score)):
                checks.append(Check(name, None, limit, HOLD, f"{name}: {why}"))
    if a.golden_set:
        if m.probe_error:
            checks.append(Check("goldenSdrDrop", None, a.max_sdr_drop_db, HOLD,
                                f"goldenSdrDrop: probe unavailable: {m.probe_error}"))
        else:
            drop = (m.stable_sdr - m.canary_sdr) if (_finite(m.stable_sdr) and _finite(m.canary_sdr)) else None
            checks.append(_upper("goldenSdrDrop", drop, a.max_sdr_drop_db, " dB",
                                 missing="no golden-set SDR for canary and stable"))

    failed = [c for c in checks if c.result == FAIL]
    held = [c for c in checks if c.result == HOLD]
    if failed:
        return Verdict(FAIL, tuple(checks), "AnalysisFailed", "; ".join(c.message for c in failed))
    if held:
        if m.prometheus_error:
            reason = "PrometheusUnreachable"
        elif any(c.name == "goldenSdrDrop" for c in held) and m.probe_error:
            reason = "ProbeUnavailable"
        else:
            reason = "InsufficientData"
        return Verdict(HOLD, tuple(checks), reason, "holding: " + "; ".join(c.message for c in held))
    return Verdict(PASS, tuple(checks), "AnalysisPassed", "; ".join(c.message for c in checks))


# ---------------------------------------------------------------- observation


@dataclass(frozen=True)
class Observed:
    """What KServe reports about the InferenceService (router.observe builds it)."""

    exists: bool
    storage_uri: str | None = None  # what its spec serves as the latest revision
    canary_percent: int | None = None  # spec.predictor.canaryTrafficPercent
    ready: bool = False  # Ready condition
    latest_ready: bool = False  # the latest revision is ready (RawDeployment: the applied spec's Deployment)
    latest_percent: int | None = None  # traffic % the latest revision actually gets
    failure: str | None = None  # a reason KServe gives for not becoming ready
    urls: dict = field(default_factory=dict)  # traffic tag -> URL (latest, prev)
    url: str | None = None


# ---------------------------------------------------------------- scheduler


@dataclass(frozen=True)
class Route:
    """What the InferenceService must serve: the latest revision's storageUri,
    and the canary's traffic % (None: no split, the latest gets it all)."""

    storage_uri: str
    canary_percent: int | None


@dataclass(frozen=True)
class Plan:
    status: dict  # the whole new status
    route: Route | None = None  # None: leave the InferenceService as it is
    create: bool = False  # the InferenceService must be created
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)
    analyze: bool = False  # run the analysis, then call after_analysis()


def set_condition(conditions: list[dict], type_: str, status: bool, reason: str, message: str, now: datetime,
                  generation: int | None = None) -> list[dict]:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for c in conditions or []:
        if c.get("type") == type_:
            found = True
            c = {**c, "reason": reason, "message": message, "observedGeneration": generation,
                 "lastTransitionTime": c.get("lastTransitionTime") if c.get("status") == value else iso(now),
                 "status": value}
        out.append(c)
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": iso(now), "observedGeneration": generation})
    return out


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _history(status: dict, spec_model: dict, outcome: str, reason: str, now: datetime) -> list[dict]:
    entry = {"version": spec_model["version"], "storageUri": spec_model["storageUri"],
             "released": spec_model.get("released"), "outcome": outcome, "at": iso(now), "reason": reason}
    return ([*(status.get("history") or []), entry])[-HISTORY_LIMIT:]


def rejected(status: dict, version: str, storage_uri: str) -> dict | None:
    """The history entry that rolled this exact release back, if its latest entry did."""
    for h in reversed(status.get("history") or []):
        if h.get("version") == version and h.get("storageUri") == storage_uri:
            return h if h.get("outcome") in ("rolledBack", "aborted", "failed") else None
    return None


class _S:
    """A status being edited: a copy of the old one plus helpers."""

    def __init__(self, status: dict, spec: SeparationModelSpec, now: datetime, generation: int | None):
        keep = ("phase", "stableVersion", "stableStorageUri", "stableReleased", "canaryVersion", "canaryStorageUri",
                "canaryReleased", "canaryWeight", "stepIndex", "stepStartedAt", "holds", "lastAnalysis", "history",
                "conditions", "message", "goldenBaseline")
        self.d = {k: status.get(k) for k in keep if status.get(k) is not None}
        self.d.setdefault("history", [])
        self.d.setdefault("conditions", [])
        self.d["observedGeneration"] = generation
        self.spec, self.now, self.gen = spec, now, generation
        self.events: list[tuple[str, str, str]] = []
        mode_ok = not spec.raw
        self.cond("TrafficSplit", mode_ok, "Serverless" if mode_ok else "RawDeploymentMode",
                  "canaryTrafficPercent splits traffic between the previous and the latest revision (Knative)"
                  if mode_ok else
                  "KServe RawDeployment mode has no traffic split (kserve#4074): a new version takes 100 % of "
                  "traffic at once and is analysed there; rollback redeploys the stable storageUri")

    def cond(self, type_, ok, reason, message):
        self.d["conditions"] = set_condition(self.d["conditions"], type_, ok, reason, message, self.now, self.gen)

    def event(self, type_, reason, message):
        self.events.append((type_, reason, message))

    def history(self, model: dict, outcome: str, reason: str):
        self.d["history"] = _history(self.d, model, outcome, reason, self.now)

    def clear_canary(self):
        for k in ("canaryVersion", "canaryStorageUri", "canaryReleased", "stepIndex", "stepStartedAt", "holds"):
            self.d.pop(k, None)
        self.d["canaryWeight"] = 0

    def canary_model(self) -> dict:
        return {"version": self.d.get("canaryVersion"), "storageUri": self.d.get("canaryStorageUri"),
                "released": self.d.get("canaryReleased")}

    def plan(self, **kw) -> Plan:
        return Plan(status=self.d, events=tuple(self.events), **kw)


def _target(spec: SeparationModelSpec) -> dict:
    m = spec.model
    return {"version": m.version, "storageUri": m.storage_uri, "released": m.released}


def _start_canary(s: _S, target: dict, why: str) -> Plan:
    spec = s.spec
    weight = 100 if spec.raw else spec.rollout.weights()[0]
    s.clear_canary()
    s.d.update(phase=PROGRESSING, canaryVersion=target["version"], canaryStorageUri=target["storageUri"],
               canaryWeight=weight, stepIndex=0, stepStartedAt=iso(s.now), holds=0,
               message=f"canary {target['version']} at {weight} %")
    if target.get("released"):
        s.d["canaryReleased"] = target["released"]
    s.cond("Progressing", True, "CanaryStarted", s.d["message"])
    s.event("Normal", "CanaryStarted",
            f"{why}: canary {target['version']} ({target['storageUri']}) gets {weight} % of traffic"
            f"{' (RawDeployment: no split, all traffic)' if spec.raw else ''}; stable {s.d.get('stableVersion')}")
    return s.plan(route=Route(target["storageUri"], None if spec.raw else weight))


def _rollback(s: _S, outcome: str, reason: str, message: str) -> Plan:
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
    return s.plan(route=Route(stable_uri, None) if s.spec.raw else Route(model["storageUri"], 0))


def _promote(s: _S, reason: str, message: str) -> Plan:
    s.d.update(phase=PROMOTING, message=f"promoting {s.d['canaryVersion']}: {message}")
    s.cond("Progressing", True, reason, s.d["message"])
    s.event("Normal", reason, s.d["message"])
    if s.spec.raw:
        return _finish_promotion(s)
    s.d["canaryWeight"] = 100
    return s.plan(route=Route(s.d["canaryStorageUri"], None))


def _finish_promotion(s: _S) -> Plan:
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
    return s.plan(route=Route(model["storageUri"], None) if s.spec.raw else None)


def schedule(spec: SeparationModelSpec, status: dict, obs: Observed, now: datetime, *,
             generation: int | None = None, action: str | None = None) -> Plan:
    """The scheduler: what to do at this tick. Returns `Plan(analyze=True)` when
    an analysis is due; the caller then measures and calls `after_analysis`."""
    s = _S(status or {}, spec, now, generation)
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
            return s.plan(route=Route(stable_uri, None), create=True)
        s.clear_canary()
        s.d.update(phase=INITIALIZING, canaryVersion=target["version"], canaryStorageUri=target["storageUri"],
                   canaryWeight=100, stepStartedAt=iso(now),
                   message=f"deploying {target['version']} (first version: no stable to compare)")
        if target.get("released"):
            s.d["canaryReleased"] = target["released"]
        s.cond("Ready", False, "Initializing", s.d["message"])
        s.event("Normal", "Deploying", s.d["message"])
        return s.plan(route=Route(target["storageUri"], None), create=True)

    if phase == INITIALIZING:
        if s.d.get("canaryStorageUri") != target["storageUri"]:
            s.clear_canary()
            s.d.update(phase=INITIALIZING, canaryVersion=target["version"], canaryStorageUri=target["storageUri"],
                       canaryWeight=100, stepStartedAt=iso(now), message=f"deploying {target['version']}")
            return s.plan(route=Route(target["storageUri"], None))
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
            return s.plan()
        return s.plan()

    if phase == FAILED and not stable_uri:
        last = (s.d.get("history") or [{}])[-1]
        if action == RETRY or (last.get("version"), last.get("storageUri")) != (target["version"], target["storageUri"]):
            s.clear_canary()
            s.d.update(phase=INITIALIZING, canaryVersion=target["version"], canaryStorageUri=target["storageUri"],
                       canaryWeight=100, stepStartedAt=iso(now), message=f"deploying {target['version']}")
            s.event("Normal", "Deploying", s.d["message"])
            return s.plan(route=Route(target["storageUri"], None))
        return s.plan()

    if phase == PROMOTING:
        if action == ABORT:
            return _rollback(s, "aborted", "Aborted", "aborted by user during promotion")
        if spec.raw or (obs.latest_ready and obs.canary_percent is None and obs.latest_percent in (None, 100)):
            return _finish_promotion(s)
        return s.plan(route=Route(s.d["canaryStorageUri"], None))

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
            return s.plan()
        if phase == PAUSED:
            # Resume: the interval starts again, so the analysis sees fresh data.
            s.d.update(phase=PROGRESSING, stepStartedAt=iso(now), message=f"resumed at {s.d.get('canaryWeight')} %")
            s.cond("Progressing", True, "Resumed", s.d["message"])
            s.event("Normal", "Resumed", s.d["message"])
            return s.plan(route=Route(s.d["canaryStorageUri"], None if spec.raw else s.d.get("canaryWeight")))
        started = parse_time(s.d.get("stepStartedAt")) or now
        elapsed = (now - started).total_seconds()
        want_uri = s.d["canaryStorageUri"]
        want_pct = None if spec.raw else s.d.get("canaryWeight")
        route = Route(want_uri, want_pct) if (obs.storage_uri, obs.canary_percent) != (want_uri, want_pct) else None
        if not obs.latest_ready:
            if obs.failure or elapsed > spec.rollout.progress_deadline_s:
                why = obs.failure or f"canary revision not ready within progressDeadline {spec.rollout.progress_deadline}"
                return _rollback(s, "rolledBack", "CanaryNotReady", why)
            return s.plan(route=route)
        if elapsed < spec.rollout.interval_s:
            return s.plan(route=route)
        return s.plan(route=route, analyze=True)

    # -- idle: Succeeded, RolledBack, Failed-with-stable, or unknown
    if is_stable:
        s.clear_canary()
        if phase != SUCCEEDED or obs.storage_uri != stable_uri or obs.canary_percent is not None:
            s.d.update(phase=SUCCEEDED, message=f"{stable_v} serves 100 % of traffic")
            s.cond("Ready", True, "StableServing", s.d["message"])
            return s.plan(route=Route(stable_uri, None))
        if obs.ready:
            s.cond("Ready", True, "StableServing", s.d["message"] if s.d.get("message") else "stable serving")
        else:
            s.cond("Ready", False, "InferenceServiceNotReady", obs.failure or "InferenceService is not ready")
        return s.plan()
    bad = rejected(s.d, target["version"], target["storageUri"])
    if bad and action != RETRY:
        s.d["message"] = (f"{target['version']} was {bad['outcome']} at {bad['at']} ({bad['reason']}); "
                          f"stable {stable_v} keeps serving. Ship a new version, or annotate "
                          f"musicsplit.io/action=retry to try it again")
        return s.plan()
    if spec.rollout.paused:
        s.d.update(phase=PAUSED if phase != PAUSED else phase,
                   message=f"rollout of {target['version']} paused before its first step")
        return s.plan()
    return _start_canary(s, target, "new version")


def after_analysis(spec: SeparationModelSpec, status: dict, verdict: Verdict, now: datetime, *,
                   generation: int | None = None) -> Plan:
    """The verdict's consequence: next step, promotion, rollback, or hold."""
    s = _S(status, spec, now, generation)
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
        return s.plan()
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
    return s.plan(route=Route(s.d["canaryStorageUri"], w))
