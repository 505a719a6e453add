"""Prometheus metrics of the predictor (served on KServe's /metrics).

Every series carries `model` and `model_version` and nothing per user or
per request, so cardinality stays bounded by the versions deployed. Request,
latency, quality and cost series also carry `source` (user, probe, shadow):
canary analysis counts user traffic only. The operator's canary analysis and
the Grafana dashboards query these names (docs/metrics.md): renaming one is
a breaking change.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily

from musicsplit.quality import COMPONENTS, QUALITY_BUCKETS, QualityReport

LABELS = ("model", "model_version")
BY_SOURCE = LABELS + ("source",)
# `X-Musicsplit-Source`: the operator's golden-set probe and the gateway's shadow
# copies say who sent them; no header (or any other value) is a user. Never the
# raw header value as a label: that would be a label anyone can mint.
SOURCE_HEADER = "x-musicsplit-source"
SOURCES = ("user", "probe", "shadow")
ISSUES = ("silent_stem", "non_finite")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Outcomes: success | bad_input | too_large | saturated | not_ready | error.
# Only `error` is the model's fault; canary analysis divides it by the total.
OUTCOMES = ("success", "bad_input", "too_large", "saturated", "not_ready", "error")

REQUESTS = Counter("musicsplit_requests", "Separation requests by outcome", BY_SOURCE + ("outcome",))
LATENCY = Histogram(
    "musicsplit_request_duration_seconds",
    "End-to-end time of a separation request inside the predictor",
    BY_SOURCE, buckets=LATENCY_BUCKETS,
)
AUDIO_SECONDS = Counter("musicsplit_audio_seconds", "Seconds of input audio separated", BY_SOURCE)
COMPUTE_SECONDS = Counter(
    "musicsplit_compute_seconds", "Wall seconds spent in model inference", BY_SOURCE + ("device",)
)
RTF = Histogram(
    "musicsplit_real_time_factor",
    "Inference seconds per second of audio (below 1 is faster than real time)",
    BY_SOURCE, buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
QUALITY = Histogram(
    "audio_separation_quality",
    "Reference-free quality estimate (0..1, calibrated to rank like SDR) per request",
    BY_SOURCE, buckets=QUALITY_BUCKETS,
)
QUALITY_COMPONENT = Histogram(
    "musicsplit_quality_component",
    "Components of the quality estimate (0..1 each): consistency, leakage, identity, artefacts, integrity",
    BY_SOURCE + ("component",), buckets=QUALITY_BUCKETS,
)
ESTIMATED_SDR = Histogram(
    "musicsplit_quality_estimated_sdr_db",
    "The quality estimate as an SDR in dB (-10..25), before the 0..1 mapping",
    BY_SOURCE, buckets=(-10, -5, 0, 3, 6, 9, 12, 15, 20, 25),
)
ENERGY_SHARE = Histogram(
    "musicsplit_stem_energy_share",
    "Each stem's share of the stems' energy per request (output drift)",
    BY_SOURCE + ("stem",), buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)
SNR = Histogram(
    "musicsplit_mixture_snr_db",
    "Mixture-consistency SNR: input vs the sum of the stems (dB)",
    BY_SOURCE, buckets=(0, 5, 10, 15, 20, 30, 40, 60, 100),
)
OUTPUT_ISSUES = Counter(
    "musicsplit_output_issues",
    "Separations whose output shows an issue: silent_stem (a stem silent, the input not), non_finite (NaN/Inf)",
    BY_SOURCE + ("issue",),
)
COST = Counter("musicsplit_cost_usd", "Compute cost of separations (USD)", BY_SOURCE + ("device",))
COST_PER_REQUEST = Histogram(
    "musicsplit_cost_per_separation_usd", "Compute cost of one separation (USD)", BY_SOURCE,
    buckets=(1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1),
)
INFLIGHT = Gauge("musicsplit_inflight_requests", "Requests running or queued for inference", LABELS)
LOAD_SECONDS = Gauge("musicsplit_model_load_seconds", "Time the last model load took", LABELS)
LOAD_FAILURES = Counter("musicsplit_model_load_failures", "Model loads that failed", ("model",))
READY = Gauge("musicsplit_model_ready", "1 when the model is loaded and serving", ("model",))
MODEL_INFO = Info("musicsplit_model", "The model being served")
BUILD_INFO = Info("musicsplit_build", "musicsplit build")


def request_source(headers: Mapping[str, str] | None) -> str:
    """`user`, `probe` or `shadow` from the request's headers (HTTP) or metadata (gRPC)."""
    for key, value in (headers or {}).items():
        if key.lower() == SOURCE_HEADER:
            value = str(value).strip().lower()
            return value if value in SOURCES else "user"
    return "user"


def observe_quality(labels: dict[str, str], report: QualityReport) -> None:
    """The estimate, its components and the stems' energy shares of one request."""
    QUALITY.labels(**labels).observe(report.score)
    ESTIMATED_SDR.labels(**labels).observe(report.estimated_sdr_db)
    for component in COMPONENTS:
        QUALITY_COMPONENT.labels(**labels, component=component).observe(report.components.get(component, 0.0))
    for stem, share in report.energy_share.items():
        ENERGY_SHARE.labels(**labels, stem=stem).observe(share)


def precreate(labels: dict[str, str]) -> None:
    """Every user outcome and issue series at 0 from the load on, so rate()/increase()
    see a new version's first errors instead of a series that appears mid-window."""
    for outcome in OUTCOMES:
        REQUESTS.labels(**labels, source="user", outcome=outcome)
    for issue in ISSUES:
        OUTPUT_ISSUES.labels(**labels, source="user", issue=issue)


class MonthlyCost:
    """Extrapolates the last hour's spend to a 30-day month (a gauge, per version)."""

    WINDOW = 3600.0

    def __init__(self):
        self._events: deque[tuple[float, float]] = deque()
        self._started = time.monotonic()

    def add(self, usd: float) -> None:
        now = time.monotonic()
        self._events.append((now, usd))
        while self._events and self._events[0][0] < now - self.WINDOW:
            self._events.popleft()

    def estimate(self) -> float:
        now = time.monotonic()
        spent = sum(usd for t, usd in self._events if t >= now - self.WINDOW)
        window = min(self.WINDOW, max(now - self._started, 1.0))
        return spent / window * 30 * 24 * 3600


class DeviceCollector:
    """GPU utilisation and memory, read at scrape time (only where CUDA is)."""

    def __init__(self, labels: dict[str, str], monthly: MonthlyCost):
        self.labels = labels
        self.monthly = monthly

    def collect(self):
        names, values = list(self.labels), list(self.labels.values())
        cost = GaugeMetricFamily(
            "musicsplit_cost_monthly_estimate_usd",
            "Last hour's compute spend extrapolated to 30 days", labels=names,
        )
        cost.add_metric(values, self.monthly.estimate())
        yield cost
        import torch

        if not torch.cuda.is_available():
            return
        util = GaugeMetricFamily(
            "musicsplit_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=names + ["gpu"]
        )
        used = GaugeMetricFamily(
            "musicsplit_gpu_memory_used_bytes", "GPU memory allocated by the model", labels=names + ["gpu"]
        )
        total = GaugeMetricFamily(
            "musicsplit_gpu_memory_total_bytes", "GPU memory on the device", labels=names + ["gpu"]
        )
        for i in range(torch.cuda.device_count()):
            gpu = [str(i)]
            try:
                util.add_metric(values + gpu, torch.cuda.utilization(i) / 100.0)
            except Exception:  # NVML missing: utilisation unknown, memory still reported
                pass
            used.add_metric(values + gpu, float(torch.cuda.memory_allocated(i)))
            total.add_metric(values + gpu, float(torch.cuda.get_device_properties(i).total_memory))
        yield util
        yield used
        yield total


_collector: DeviceCollector | None = None


def register_device_collector(labels: dict[str, str], monthly: MonthlyCost) -> DeviceCollector:
    """One collector per process; a reload points it at the new model's labels."""
    global _collector
    if _collector is None:
        _collector = DeviceCollector(labels, monthly)
        REGISTRY.register(_collector)
    _collector.labels, _collector.monthly = labels, monthly
    return _collector
