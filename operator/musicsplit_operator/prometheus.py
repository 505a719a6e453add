"""The analysis' measurements from Prometheus: PromQL over its HTTP API.
The verdict itself is `analysis.judge` (pure)."""

from __future__ import annotations

import logging
import math

import httpx

from .analysis import Measurements, VersionMetrics

log = logging.getLogger(__name__)


class PrometheusUnavailable(Exception):
    """Prometheus could not answer (down, unreachable, or an error)."""


def _esc(value: str) -> str:
    """A PromQL string literal's contents (label values come from spec and metadata)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(model: str, version: str, namespace: str, namespace_label: str = "namespace", **extra: str) -> str:
    """The series one analysis may count: this model version's, users' requests
    only (not the operator's probe, not mirrored shadow traffic), scraped in the
    SeparationModel's own namespace (a same-named model elsewhere is another)."""
    labels = {"model": model, "model_version": version, "source": "user", namespace_label: namespace, **extra}
    return ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())


def _growth(metric: str, sel: str, w: str) -> str:
    """How much a counter grew over the window, per series. Unlike increase(),
    a series born inside the window counts from zero: a canary's first errors
    create its `outcome="error"` series with a value already above zero, and
    increase() would never see them. Resets (a restarted pod) count as 0."""
    x = f"{metric}{{{sel}}}"
    return f"(clamp_min({x} - {x} offset {w}, 0) or {x})"


def queries(model: str, version: str, window_s: float, namespace: str,
            namespace_label: str = "namespace") -> dict[str, str]:
    """The PromQL the analysis runs for one model version."""
    w = f"{max(int(window_s), 1)}s"
    sel = selector(model, version, namespace, namespace_label)
    errors = selector(model, version, namespace, namespace_label, outcome="error")
    return {
        "requests": f"sum({_growth('musicsplit_requests_total', sel, w)})",
        "errors": f"sum({_growth('musicsplit_requests_total', errors, w)})",
        "p99": f"histogram_quantile(0.99, sum by (le) ({_growth('musicsplit_request_duration_seconds_bucket', sel, w)}))",
        "quality": (f"sum({_growth('audio_separation_quality_sum', sel, w)})"
                    f" / sum({_growth('audio_separation_quality_count', sel, w)})"),
    }


def query_scalar(client: httpx.Client, prometheus_url: str, promql: str) -> float | None:
    """One instant query; None when the result is empty (no such series)."""
    try:
        r = client.get(prometheus_url.rstrip("/") + "/api/v1/query", params={"query": promql})
    except httpx.HTTPError as e:
        raise PrometheusUnavailable(f"{type(e).__name__}: {e}") from e
    if r.status_code != 200:
        raise PrometheusUnavailable(f"HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"{body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def version_metrics(client: httpx.Client, prometheus_url: str, model: str, version: str,
                    window_s: float, namespace: str, namespace_label: str = "namespace") -> VersionMetrics:
    q = {k: query_scalar(client, prometheus_url, v)
         for k, v in queries(model, version, window_s, namespace, namespace_label).items()}
    return VersionMetrics(requests=q["requests"] or 0.0, errors=q["errors"] or 0.0,
                          p99_seconds=q["p99"], quality=q["quality"])


def measure(*, prometheus_url: str, model: str, namespace: str, canary_version: str, stable_version: str | None,
            window_s: float, namespace_label: str = "namespace", timeout_s: float = 10.0) -> Measurements:
    """What Prometheus says about canary and stable; failing to ask is a hold reason, never a pass."""
    canary = stable = None
    prom_err = None
    with httpx.Client(timeout=timeout_s) as client:
        try:
            canary = version_metrics(client, prometheus_url, model, canary_version, window_s, namespace,
                                     namespace_label)
            if stable_version:
                stable = version_metrics(client, prometheus_url, model, stable_version, window_s, namespace,
                                         namespace_label)
        except PrometheusUnavailable as e:
            prom_err = str(e)
            log.warning("Prometheus at %s unavailable: %s", prometheus_url, e)
    return Measurements(canary=canary, stable=stable, prometheus_error=prom_err)
