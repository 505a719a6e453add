"""Analysis: is the canary healthy? Pure: measurements in, a verdict out.

`judge` turns what Prometheus and the golden-set probe measured into
pass / fail / hold with every check, its value, its threshold and by how
much it missed. The measuring itself is I/O and lives elsewhere
(`prometheus.py`, `probe.py`); what the verdict leads to is the
scheduler's (`scheduler.after_analysis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .spec import SeparationModelSpec
from .status import ACTIVE, PROMOTING, matching_probe

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
    canary_stems: dict | None = None  # golden-set SDR per stem (dB)
    stable_stems: dict | None = None
    prometheus_error: str | None = None  # set when Prometheus could not be asked or gave no usable answer
    prometheus_reason: str | None = None  # the hold's reason then (default PrometheusUnreachable)
    probe_error: str | None = None  # set when the golden-set probe could not run
    probe_reason: str | None = None  # the hold's reason then (default ProbeUnavailable; a broken golden set's own)
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
    per_stem: dict | None = None  # the golden-set checks' figure per stem (dB)

    def as_status(self) -> dict:
        out = {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "result": self.result,
            "message": self.message,
        }
        if self.per_stem:
            out["perStem"] = {k: round(v, 4) for k, v in self.per_stem.items()}
        return out


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


def _golden_checks(m: Measurements, spec: SeparationModelSpec) -> list[Check]:
    """The golden set's mean SDR drop vs stable (and the canary's floor, if
    set); per stem in `perStem`, judged on the mean."""
    limit, floor = spec.analysis.sdr_drop_limit, spec.analysis.golden_set.min_sdr_db
    named = [("goldenSdrDrop", limit)] + ([("goldenSdr", floor)] if floor is not None else [])
    if m.probe_error:
        return [Check(n, None, t, HOLD, f"{n}: probe unavailable: {m.probe_error}") for n, t in named]
    out = []
    drop = (m.stable_sdr - m.canary_sdr) if (_finite(m.stable_sdr) and _finite(m.canary_sdr)) else None
    check = _upper("goldenSdrDrop", drop, limit, " dB", missing=m.probe_pending or "no golden-set SDR for canary and "
                                                                                    "stable")
    c_stems, s_stems = m.canary_stems or {}, m.stable_stems or {}
    stems = {k: s_stems[k] - c_stems[k] for k in c_stems if k in s_stems} if drop is not None else None
    if stems:
        worst = max(stems, key=stems.get)
        check = replace(check, per_stem=stems, message=f"{check.message}; worst stem {worst} "
                                                       f"{stems[worst]:.3g} dB")
    out.append(check)
    if floor is not None:
        sdr = _lower("goldenSdr", m.canary_sdr, floor, " dB", missing=m.probe_pending or "no golden-set SDR for the "
                                                                                      "canary")
        out.append(replace(sdr, per_stem=c_stems or None) if sdr.value is not None else sdr)
    return out


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
    if a.golden_set.enabled:
        checks += _golden_checks(m, spec)
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
        elif any(c.name.startswith("goldenSdr") for c in held) and m.probe_error:
            reason = m.probe_reason or "ProbeUnavailable"
        else:
            reason = "InsufficientData" if None in reasons else sorted(reasons)[0]
        return Verdict(HOLD, tuple(checks), reason, "holding: " + "; ".join(c.message for c in held))
    return Verdict(PASS, tuple(checks), "AnalysisPassed", "; ".join(c.message for c in checks))


def canary_record(status: dict, golden_set: str = "builtin") -> dict | None:
    return matching_probe(status.get("probe"), status.get("canaryVersion"), status.get("canaryStorageUri"),
                          golden_set)


def stable_record(status: dict, golden_set: str = "builtin") -> dict | None:
    """The stable release's result: `goldenBaseline`, or, right after a
    promotion, the promoted canary's own (still in `probe`: the same release
    on the same set scores the same, so it is not probed again)."""
    v, uri = status.get("stableVersion"), status.get("stableStorageUri")
    base = matching_probe(status.get("goldenBaseline"), v, uri, golden_set)
    if base is not None and not base.get("error"):
        return base
    own = matching_probe(status.get("probe"), v, uri, golden_set)
    return own if own is not None and not own.get("error") else base


def golden_stale(status: dict, golden_set: str = "builtin") -> str | None:
    """`canary` or `stable`: the older of two results measured on different
    contents of the set (a ConfigMap edited between the probes); it must be
    measured again before they compare. None when they compare."""
    c, s = canary_record(status, golden_set), stable_record(status, golden_set)
    if not c or not s or c.get("error") or s.get("error"):
        return None
    dc, ds = c.get("goldenSetDigest"), s.get("goldenSetDigest")
    if dc is None or ds is None or dc == ds:
        return None
    return "stable" if (s.get("measuredAt") or "") <= (c.get("measuredAt") or "") else "canary"


def golden_measurements(status: dict, golden_set: str = "builtin") -> dict:
    """The golden-set part of the Measurements, from what the probe wrote to
    status (`probe`: the canary; `goldenBaseline`: the stable): SDRs of the
    current canary and stable only, on the spec's golden set, their errors, or
    what is still awaited."""
    out: dict = {"canary_sdr": None, "stable_sdr": None, "canary_stems": None, "stable_stems": None,
                 "probe_error": None, "probe_reason": None, "probe_pending": None}
    errors, waiting, reasons = [], [], []
    stale = golden_stale(status, golden_set)
    for role, rec in (("canary", canary_record(status, golden_set)), ("stable", stable_record(status, golden_set))):
        version = status.get(f"{role}Version")
        if rec is None or role == stale:
            waiting.append(f"{role} {version}" + (" (the golden set changed since it was measured)"
                                                  if role == stale else ""))
        elif rec.get("error"):
            errors.append(f"{role} {version}: {rec['error']}")
            reasons.append(rec.get("errorReason"))
        else:
            out[f"{role}_sdr"], out[f"{role}_stems"] = rec.get("meanSdr"), rec.get("perStem")
    if errors:
        out["probe_error"] = "; ".join(errors)
        out["probe_reason"] = next((r for r in reasons if r), None)
    if waiting:
        out["probe_pending"] = "waiting for the golden-set probe of " + " and ".join(waiting)
    return out


def golden_series(status: dict, golden_set: str = "builtin") -> dict[str, dict]:
    """The golden SDR per role for musicsplit_golden_sdr_db (docs/metrics.md):
    {role: {"version": V, "sdr": {stem: dB, "mean": dB}}}. `current` is the
    newest version probed (the canary during a rollout, the stable after it),
    `previous` the one it replaces (the stable during a rollout; after a
    promotion the one it replaced, until the next rollout starts)."""
    in_flight = status.get("canaryVersion") and status.get("phase") in (*ACTIVE, PROMOTING)
    records: dict[str, dict | None] = {}
    if in_flight:
        records = {"current": canary_record(status, golden_set), "previous": stable_record(status, golden_set)}
    else:
        records["current"] = stable_record(status, golden_set)
        last = (status.get("history") or [{}])[-1]
        replaced = status.get("goldenBaseline")
        if (last.get("outcome") == "promoted" and last.get("version") == status.get("stableVersion")
                and replaced and replaced.get("version") != status.get("stableVersion")
                and replaced.get("goldenSet", "builtin") == golden_set):
            records["previous"] = replaced
    out = {}
    for role, rec in records.items():
        if rec and not rec.get("error") and rec.get("meanSdr") is not None:
            out[role] = {"version": rec["version"], "sdr": {**(rec.get("perStem") or {}), "mean": rec["meanSdr"]}}
    if out.get("previous", {}).get("version") == out.get("current", {}).get("version"):
        out.pop("previous", None)
    return out
