"""The analysis' measurements from Prometheus: PromQL over its HTTP API.
The verdict itself is `analysis.judge` (pure).

Which Prometheus: the operator's own (`MUSICSPLIT_OPERATOR_PROMETHEUS_URL`),
or the one a SeparationModel names if the operator's allowlist has it.
Nothing a Prometheus answers is copied into status or Events: errors say
what was wrong with the answer (HTTP status, not JSON, which field is
missing), never what it said; the operator's log has a little more.
"""

from __future__ import annotations

import json
import logging
import math

import httpx

from . import egress
from .analysis import Measurements, VersionMetrics

log = logging.getLogger(__name__)

UNREACHABLE, BAD_ANSWER, NOT_ALLOWED = "PrometheusUnreachable", "PrometheusError", "PrometheusUrlNotAllowed"
MAX_ANSWER_BYTES = 1 << 20  # one instant query's answer is a few hundred bytes
# Prometheus' own errorType values (its HTTP API): safe to repeat, unlike its error text.
ERROR_TYPES = {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable", "not_found",
               "not_acceptable"}


class PrometheusUnavailable(Exception):
    """Prometheus could not be asked or gave no usable answer. The message is
    ours, fit for status; `reason` is the hold's reason."""

    def __init__(self, message: str, reason: str = UNREACHABLE):
        super().__init__(message)
        self.reason = reason


def resolve_url(spec_url: str | None, operator_url: str, allowlist: list[str]) -> tuple[str | None, str]:
    """The Prometheus a SeparationModel's analysis may query, and why; None
    when its spec names one the operator does not allow (never requested: a
    SeparationModel author must not make the operator call arbitrary URLs)."""
    norm = lambda u: u.strip().rstrip("/")  # noqa: E731
    # Messages go into every SeparationModel's conditions: never with credentials.
    if not spec_url or norm(spec_url) == norm(operator_url):
        return operator_url, f"analysis queries the operator's Prometheus {egress.redact(operator_url)}"
    if egress.listed(spec_url, allowlist):
        return spec_url, (f"analysis queries {egress.redact(spec_url)} (spec.analysis.prometheusUrl, in the "
                          "operator's allowlist)")
    return None, (f"spec.analysis.prometheusUrl {egress.redact(spec_url)} is not in the operator's allowlist "
                  "(MUSICSPLIT_OPERATOR_PROMETHEUS_URL_ALLOWLIST): nothing is queried there; remove the field "
                  "to use the operator's Prometheus, or ask the operator's admin to allow it")


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


def _read(client: httpx.Client, url: str, promql: str, at: float | None = None) -> tuple[int, bytes]:
    """Status and body, the body bounded before it is buffered."""
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    try:
        with client.stream("GET", url, params=params) as r:
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise PrometheusUnavailable(f"answer from Prometheus over {MAX_ANSWER_BYTES} bytes", BAD_ANSWER)
            return r.status_code, bytes(body)
    except httpx.TimeoutException as e:
        raise PrometheusUnavailable(f"no answer from Prometheus within {client.timeout.read}s") from e
    except httpx.ConnectError as e:
        raise PrometheusUnavailable(f"ConnectError: {e}") from e
    except httpx.HTTPError as e:  # a broken HTTP exchange: name the failure, not what came back
        raise PrometheusUnavailable(f"{type(e).__name__} talking to Prometheus") from e


def _malformed(what: str) -> PrometheusUnavailable:
    return PrometheusUnavailable(f"malformed answer from Prometheus: {what}", BAD_ANSWER)


def _data(client: httpx.Client, prometheus_url: str, promql: str, at: float | None = None) -> dict:
    """One instant query's `data` ({resultType, result: list}), now or at the
    Unix time `at`, or PrometheusUnavailable."""
    status, raw = _read(client, prometheus_url.rstrip("/") + "/api/v1/query", promql, at)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    error_type = body.get("errorType") if isinstance(body, dict) else None
    error_type = error_type if error_type in ERROR_TYPES else None
    if body is not None and error_type:
        log.warning("Prometheus refused %s: %s: %.300s", promql, error_type, body.get("error"))
    if status != 200:
        raise PrometheusUnavailable(f"HTTP {status} from Prometheus" + (f" ({error_type})" if error_type else ""),
                                    UNREACHABLE if status >= 500 and not error_type else BAD_ANSWER)
    if body is None:
        raise PrometheusUnavailable("non-JSON answer from Prometheus", BAD_ANSWER)
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        raise _malformed("no status")
    if body["status"] == "error":
        raise PrometheusUnavailable(f"Prometheus refused the query ({error_type or 'no errorType'})", BAD_ANSWER)
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise _malformed("no data.result")
    return data


def _value(sample) -> float:
    try:
        return float(sample[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise _malformed("data.result holds no [time, value] sample") from None


def query_scalar(client: httpx.Client, prometheus_url: str, promql: str, at: float | None = None) -> float | None:
    """One instant query (now, or at the Unix time `at`); None when the result
    is empty (no such series)."""
    data = _data(client, prometheus_url, promql, at)
    result = data["result"]
    if not result:
        return None
    if data.get("resultType") == "scalar":
        sample = result
    else:
        first = result[0]
        sample = first.get("value") if isinstance(first, dict) else None
    value = _value(sample)
    return None if math.isnan(value) else value


def query_vector(client: httpx.Client, prometheus_url: str, promql: str, label: str) -> dict[str, float]:
    """One instant query whose series differ by `label`: {label value: value}, NaNs left out."""
    out = {}
    for series in _data(client, prometheus_url, promql)["result"]:
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            raise _malformed("data.result holds no series")
        value = _value(series.get("value"))
        if not math.isnan(value):
            out[str(series["metric"].get(label, ""))] = value
    return out


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
    prom_err = reason = None
    with httpx.Client(timeout=timeout_s) as client:
        try:
            canary = version_metrics(client, prometheus_url, model, canary_version, window_s, namespace,
                                     namespace_label)
            if stable_version:
                stable = version_metrics(client, prometheus_url, model, stable_version, window_s, namespace,
                                         namespace_label)
        except PrometheusUnavailable as e:
            prom_err, reason = str(e), e.reason
            log.warning("Prometheus at %s: %s", egress.redact(prometheus_url), e)
    return Measurements(canary=canary, stable=stable, prometheus_error=prom_err,
                        prometheus_reason=reason if prom_err else None)


def release_queries(model: str, version: str, window_s: float, namespace: str,
                    namespace_label: str = "namespace") -> dict[str, str]:
    """What a release did for its users over its rollout: p99 latency and cost
    per audio minute (the registry's record of it)."""
    w = f"{max(int(window_s), 1)}s"
    sel = selector(model, version, namespace, namespace_label)
    return {
        "latencyP99Seconds": (f"histogram_quantile(0.99, sum by (le) "
                              f"({_growth('musicsplit_request_duration_seconds_bucket', sel, w)}))"),
        "costPerAudioMinuteUsd": (f"60 * sum({_growth('musicsplit_cost_usd_total', sel, w)})"
                                  f" / sum({_growth('musicsplit_audio_seconds_total', sel, w)})"),
    }


def release_figures(*, prometheus_url: str, model: str, version: str, namespace: str, window_s: float, at: float,
                    namespace_label: str = "namespace", timeout_s: float = 10.0) -> dict[str, float]:
    """The release_queries' values over the window ending at `at` (figures
    without data are left out); raises PrometheusUnavailable."""
    out = {}
    with httpx.Client(timeout=timeout_s) as client:
        for name, promql in release_queries(model, version, window_s, namespace, namespace_label).items():
            value = query_scalar(client, prometheus_url, promql, at)
            if value is not None and math.isfinite(value):
                out[name] = value
    return out
