"""A/B analysis: per-arm quality and latency with confidence intervals, and a verdict.

Every finished request records (arm, model, version, outcome, quality,
latency) in the gateway's database. The report compares each arm with the
reference arm (`control` if present, else the largest) using Welch's t-test
(unequal variances) on quality and latency, and a two-proportion z-test on
the failure rate; a difference is called significant when p < alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist, fmean, stdev


def _t_ppf(q: float, df: float) -> float:
    try:
        from scipy import stats

        return float(stats.t.ppf(q, df))
    except ImportError:  # pragma: no cover - normal approximation
        return NormalDist().inv_cdf(q)


def _t_sf2(t: float, df: float) -> float:
    """Two-sided p-value of a t statistic."""
    try:
        from scipy import stats

        return float(2 * stats.t.sf(abs(t), df))
    except ImportError:  # pragma: no cover
        return 2 * (1 - NormalDist().cdf(abs(t)))


@dataclass
class Summary:
    n: int
    mean: float | None
    low: float | None
    high: float | None

    def text(self, fmt: str = "{:.4f}") -> str:
        if self.mean is None:
            return "n/a"
        if self.low is None:
            return f"{fmt.format(self.mean)} (n={self.n})"
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}] (n={self.n})"


def mean_ci(values: list[float], confidence: float = 0.95) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    m = fmean(values)
    if n < 2:
        return Summary(n, m, None, None)
    half = _t_ppf(0.5 + confidence / 2, n - 1) * stdev(values) / math.sqrt(n)
    return Summary(n, m, m - half, m + half)


def welch(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """(difference of means b - a, two-sided p-value), or None with too little data."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    diff = fmean(b) - fmean(a)
    if va + vb == 0:
        return diff, (1.0 if diff == 0 else 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1))
    return diff, _t_sf2(t, df)


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> float | None:
    if n1 == 0 or n2 == 0:
        return None
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x2 / n2 - x1 / n1) / se
    return 2 * (1 - NormalDist().cdf(abs(z)))


@dataclass
class Arm:
    name: str
    models: set[str] = field(default_factory=set)
    quality: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    requests: int = 0
    failures: int = 0


@dataclass
class Comparison:
    arm: str
    reference: str
    metric: str
    difference: float
    p_value: float
    significant: bool


def analyse(observations: list[dict], alpha: float = 0.05) -> tuple[dict[str, Arm], list[Comparison], str | None]:
    arms: dict[str, Arm] = {}
    for o in observations:
        if o["arm"] == "explicit":  # the caller named the model: not part of any experiment
            continue
        arm = arms.setdefault(o["arm"], Arm(o["arm"]))
        arm.models.add(o["model"])
        if o["outcome"] == "cancelled":
            continue
        arm.requests += 1
        if o["outcome"] != "success":
            arm.failures += 1
            continue
        if o.get("quality") is not None:
            arm.quality.append(float(o["quality"]))
        if o.get("latency_s") is not None:
            arm.latency.append(float(o["latency_s"]))
    if not arms:
        return arms, [], None
    reference = "control" if "control" in arms else max(arms.values(), key=lambda a: a.requests).name
    comparisons = []
    ref = arms[reference]
    for arm in arms.values():
        if arm.name == reference:
            continue
        for metric, a, b in (("quality", ref.quality, arm.quality), ("latency_s", ref.latency, arm.latency)):
            result = welch(a, b)
            if result:
                diff, p = result
                comparisons.append(Comparison(arm.name, reference, metric, diff, p, p < alpha))
        p = two_proportions(ref.failures, ref.requests, arm.failures, arm.requests)
        if p is not None:
            diff = arm.failures / arm.requests - ref.failures / ref.requests
            comparisons.append(Comparison(arm.name, reference, "failure_rate", diff, p, p < alpha))
    return arms, comparisons, reference


def report(observations: list[dict], alpha: float = 0.05, confidence: float = 0.95) -> str:
    arms, comparisons, reference = analyse(observations, alpha)
    if not arms:
        return "no A/B observations recorded yet\n"
    lines = [f"A/B report: {sum(a.requests for a in arms.values())} requests, {len(arms)} arms, "
             f"{confidence:.0%} confidence intervals, alpha={alpha}", ""]
    lines.append(f"{'arm':<16} {'models':<20} {'requests':>8} {'failures':>8}  quality (mean [CI])"
                 f"{'':<18}latency s (mean [CI])")
    for arm in sorted(arms.values(), key=lambda a: (a.name != reference, a.name)):
        q = mean_ci(arm.quality, confidence)
        t = mean_ci(arm.latency, confidence)
        lines.append(f"{arm.name:<16} {','.join(sorted(arm.models)):<20} {arm.requests:>8} {arm.failures:>8}  "
                     f"{q.text():<37} {t.text('{:.3f}')}")
    lines.append("")
    if not comparisons:
        lines.append("verdict: not enough data to compare arms (need at least 2 successes per arm)")
    for c in comparisons:
        verdict = "SIGNIFICANT" if c.significant else "not significant"
        lines.append(f"{c.arm} vs {c.reference}: {c.metric} difference {c.difference:+.4f}, "
                     f"p={c.p_value:.4g} -> {verdict}")
    if comparisons:
        sig = [c for c in comparisons if c.significant]
        lines.append("")
        lines.append("verdict: " + ("significant differences in " + ", ".join(f"{c.arm}/{c.metric}" for c in sig)
                                    if sig else "no significant difference between arms at this sample size"))
    return "\n".join(lines) + "\n"
