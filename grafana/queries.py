"""PromQL building blocks the dashboards share.

Queries select by metric name and musicsplit labels (docs/metrics.md);
`namespace` only through the `$namespace` template variable, never a
literal. Predictor panels that describe what users get filter out the
operator's probe and mirrored shadow traffic with `source!~"probe|shadow"`:
unlike `source="user"`, that matcher also holds for series scraped from a
predictor that predates the `source` label.
"""

from __future__ import annotations

RATE = "$__rate_interval"
RANGE = "$__range"

NAMESPACE = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
VERSION = 'model_version=~"$version"'
USER = 'source!~"probe|shadow"'
# Every predictor series of the selected namespace, model and version.
PREDICTOR = (NAMESPACE, MODEL, VERSION)
# The operator labels its series with the SeparationModel's namespace and
# name; the name is the served model name (the predictor's `model` label).
ROLLOUT = (NAMESPACE, 'name=~"$model"')
# A predictor outcome that is the server's failure, not the caller's input
# (bad_input, too_large) or a refusal to queue (saturated: its own panels).
SERVER_ERRORS = 'outcome=~"error|not_ready"'
CALLER_ERRORS = 'outcome=~"bad_input|too_large"'


def sel(*matchers: str) -> str:
    """`{a, b}` from label matchers (empty ones dropped); `""` for none."""
    parts = [m for m in matchers if m]
    return "{" + ", ".join(parts) + "}" if parts else ""


def rate(metric: str, *matchers: str, window: str = RATE) -> str:
    return f"rate({metric}{sel(*matchers)}[{window}])"


def increase(metric: str, *matchers: str, window: str = RANGE) -> str:
    return f"increase({metric}{sel(*matchers)}[{window}])"


def by(labels: str, inner: str, agg: str = "sum") -> str:
    """`sum by (labels) (inner)`; `sum (inner)` for no labels."""
    return f"{agg} by ({labels}) ({inner})" if labels else f"{agg} ({inner})"


def sum_rate(metric: str, labels: str, *matchers: str, window: str = RATE) -> str:
    return by(labels, rate(metric, *matchers, window=window))


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator}\n/\n{denominator}"


def share(part: str, whole: str) -> str:
    """`part / whole` that reads 0, not "no data", while `part` has no series yet
    (a counter the component creates at its first event: cache hits, re-separations)."""
    return f"(\n{part}\nor\n0 * {whole}\n)\n/\n{whole}"


def quantile(q: float, histogram: str, labels: str, *matchers: str, window: str = RATE) -> str:
    """The q-quantile of a histogram (its name without `_bucket`) per `labels`."""
    grouping = f"{labels}, le" if labels else "le"
    return f"histogram_quantile({q}, {sum_rate(histogram + '_bucket', grouping, *matchers, window=window)})"


def mean(histogram: str, labels: str, *matchers: str, window: str = RATE) -> str:
    """The mean observation of a histogram per `labels` (its `_sum` over its `_count`)."""
    return ratio(sum_rate(histogram + "_sum", labels, *matchers, window=window),
                 sum_rate(histogram + "_count", labels, *matchers, window=window))
