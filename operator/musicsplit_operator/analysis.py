"""Analysis: is the canary healthy? Pure: measurements in, a verdict out.

`judge` turns what Prometheus and the golden-set probe measured into
pass / fail / hold with every check, its value, its threshold and by how
much it missed. The measuring itself is I/O and lives elsewhere
(`prometheus.py`, `probe.py`); what the verdict leads to is the
scheduler's (`scheduler.after_analysis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import SeparationModelSpec

# Verdicts
PASS, FAIL, HOLD = "pass", "fail", "hold"


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
    prometheus_error: str | None = None  # set when Prometheus could not be asked or gave no usable answer
    prometheus_reason: str | None = None  # the hold's reason then (default PrometheusUnreachable)
    probe_error: str | None = None  # set when the golden-set probe could not run
    probe_pending: str | None = None  # what the golden-set SDR still waits for
    webhooks: tuple["Check", ...] = ()  # the rollout webhooks' answers (policy.hook_checks)
    # Shadow agreement (the gateway's mirrored users' requests): dB per stem, and how many comparisons.
    shadow_agreement: dict[str, float] | None = None
    shadow_comparisons: float = 0.0


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None  # None: a check with no number to meet (a webhook's answer)
    result: str  # pass | fail | hold
    message: str
    reason: str | None = None  # a hold's own reason (default: InsufficientData)

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


def shadow_check(m: Measurements, spec: SeparationModelSpec) -> Check:
    """The lowest stem's mean agreement (SDR of the canary's stems against the
    stable's on mirrored users' requests) against spec.analysis.minShadowAgreementDb."""
    a = spec.analysis
    name, limit = "shadowAgreement", a.min_shadow_agreement_db
    if m.prometheus_error:
        return Check(name, None, limit, HOLD, f"{name}: no data: {m.prometheus_error}")
    n = m.shadow_comparisons
    if n < a.min_shadow_comparisons or not m.shadow_agreement:
        return Check(name, None, limit, HOLD,
                     f"{name}: {n:.0f} mirrored user requests compared with stable in the window "
                     f"({a.min_shadow_comparisons} needed; is the gateway's shadow traffic on?)")
    stem, value = min(m.shadow_agreement.items(), key=lambda kv: kv[1])
    check = _lower(name, value, limit, " dB")
    per_stem = ", ".join(f"{k} {v:.3g}" for k, v in sorted(m.shadow_agreement.items()))
    return Check(name, value, limit, check.result,
                 f"{check.message}, lowest stem {stem} over {n:.0f} comparisons (per stem, dB: {per_stem})")


def judge(m: Measurements, spec: SeparationModelSpec, *, compare_stable: bool = True,
          compare_shadow: bool = True) -> Verdict:
    """Is the canary healthy? `fail` on any measured regression, else `hold`
    while any check lacks evidence, else `pass`. Never `pass` without data.
    `compare_shadow`: whether users get stable outputs to compare with (see shadow.required)."""
    a = spec.analysis
    checks: list[Check] = []
    c, s = m.canary, m.stable
    if m.prometheus_error:
        for name, limit in (("errorRate", a.max_error_rate), ("latencyP99", a.max_p99_latency_seconds),
                            ("qualityScore", a.min_quality_score)):
            checks.append(Check(name, None, limit, HOLD, f"{name}: no data: {m.prometheus_error}"))
    else:
        requests = c.requests if c else 0.0
        enough = requests >= a.min_requests
        checks.append(Check(
            "requests", requests, a.min_requests, PASS if enough else HOLD,
            # Users' requests only: the operator's own probe and shadow copies are
            # no evidence that the canary serves its users well.
            f"canary served {requests:.0f} user requests in the window ({'>=' if enough else '<'} "
            f"{a.min_requests} needed)"
            # Metrics are filtered on model_version = spec.model.version: none at
            # all while traffic flows usually means the loaded model says otherwise.
            + ("; no user traffic reached it, or the model dir's musicsplit.yaml version differs from "
               "spec.model.version" if requests <= 0 else ""),
        ))
        why = "not enough user requests yet"
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
                                 missing=m.probe_pending or "no golden-set SDR for canary and stable"))
    if a.min_shadow_agreement_db is not None and compare_shadow:
        checks.append(shadow_check(m, spec))

    checks.extend(m.webhooks)

    failed = [c for c in checks if c.result == FAIL]
    held = [c for c in checks if c.result == HOLD]
    if failed:
        return Verdict(FAIL, tuple(checks), "AnalysisFailed", "; ".join(c.message for c in failed))
    if held:
        reasons = {c.reason for c in held}
        if m.prometheus_error:
            reason = m.prometheus_reason or "PrometheusUnreachable"
        elif any(c.name == "goldenSdrDrop" for c in held) and m.probe_error:
            reason = "ProbeUnavailable"
        else:
            reason = "InsufficientData" if None in reasons else sorted(reasons)[0]
        return Verdict(HOLD, tuple(checks), reason, "holding: " + "; ".join(c.message for c in held))
    return Verdict(PASS, tuple(checks), "AnalysisPassed", "; ".join(c.message for c in checks))


def matching_probe(record: dict | None, version: str | None, storage_uri: str | None) -> dict | None:
    """The probe record if it is of this release; one of another is no evidence."""
    if not record or not version or record.get("version") != version:
        return None
    # Baselines written before storageUri was recorded match on the version alone.
    return record if record.get("storageUri", storage_uri) == storage_uri else None


def golden_measurements(status: dict) -> dict:
    """The golden-set part of the Measurements, from what the probe wrote to
    status (`probe`: the canary; `goldenBaseline`: the stable): SDRs of the
    current canary and stable only, their errors, or what is still awaited."""
    canary = matching_probe(status.get("probe"), status.get("canaryVersion"), status.get("canaryStorageUri"))
    stable = matching_probe(status.get("goldenBaseline"), status.get("stableVersion"), status.get("stableStorageUri"))
    out: dict = {"canary_sdr": None, "stable_sdr": None, "probe_error": None, "probe_pending": None}
    errors, waiting = [], []
    for role, key, rec, version in (("canary", "canary_sdr", canary, status.get("canaryVersion")),
                                    ("stable", "stable_sdr", stable, status.get("stableVersion"))):
        if rec is None:
            waiting.append(f"{role} {version}")
        elif rec.get("error"):
            errors.append(f"{role} {version}: {rec['error']}")
        else:
            out[key] = rec.get("meanSdr")
    if errors:
        out["probe_error"] = "; ".join(errors)
    if waiting:
        out["probe_pending"] = "waiting for the golden-set probe of " + " and ".join(waiting)
    return out
