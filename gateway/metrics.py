"""Gateway Prometheus metrics. Labels are bounded: model, model_version, arm,
region, outcome, backend, stem, model_namespace (all from configuration, flags or
the predictors' answers), tenant (the tenants file's names, or an OIDC issuer's); never a user or job
id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from musicsplit.quality import QUALITY_BUCKETS

PREFIX = "musicsplit_gateway"

JOBS = Counter(f"{PREFIX}_jobs_total", "Separation jobs finished, by outcome",
               ["model", "model_version", "arm", "outcome"])
JOB_SECONDS = Histogram(f"{PREFIX}_job_seconds", "Job latency from submit to result",
                        ["model", "arm"], buckets=(0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
QUALITY = Histogram(f"{PREFIX}_quality_score", "Reference-free quality estimate (0..1) per finished job",
                    ["model", "model_version", "arm"], buckets=QUALITY_BUCKETS)
V2_REQUESTS = Counter(f"{PREFIX}_v2_requests_total", "v2 pass-through requests, by outcome",
                      ["model", "model_version", "arm", "outcome"])
V2_SECONDS = Histogram(f"{PREFIX}_v2_request_seconds", "v2 pass-through latency", ["model", "arm"],
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
ARM_REQUESTS = Counter(f"{PREFIX}_ab_assignments_total", "Requests assigned to each A/B arm", ["model", "arm"])
CHUNKS = Counter(f"{PREFIX}_chunks_total", "Chunks sent to predictors, by outcome", ["model", "outcome"])
UPSTREAM = Counter(f"{PREFIX}_upstream_requests_total", "Requests to predictor endpoints",
                   ["model", "region", "outcome"])
UPSTREAM_SECONDS = Histogram(f"{PREFIX}_upstream_seconds", "Predictor request latency", ["model", "region"],
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
FALLBACKS = Counter(f"{PREFIX}_fallbacks_total", "Requests served by the fallback model", ["model", "fallback"])
BREAKER_STATE = Gauge(f"{PREFIX}_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
                      ["model", "region"])
# What MusicsplitGatewayBreakerOpen reads: 1 from an opening until a call succeeds again (half-open
# included), per configured endpoint (its URL: from configuration, so bounded).
BREAKER_OPEN = Gauge(f"{PREFIX}_breaker_open", "1 while an endpoint's circuit breaker is open or half-open "
                     "(not yet closed by a successful call)", ["model", "region", "endpoint"])
BREAKER_OPENS = Counter(f"{PREFIX}_breaker_opens_total", "Circuit breaker openings", ["model", "region"])
ENDPOINT_UP = Gauge(f"{PREFIX}_endpoint_up", "Predictor endpoint ready per health probe", ["model", "region"])
QUEUE = Gauge(f"{PREFIX}_queue_depth", "Jobs waiting for a worker of any replica (the shared queue: aggregate with max)")
RUNNING = Gauge(f"{PREFIX}_running_jobs", "Jobs being separated now")
REJECTED = Counter(f"{PREFIX}_rejected_total", "Requests refused before any model time, by reason", ["reason"])
for _reason in ("queue_full", "v2_saturated", "payload_too_large"):  # at 0 from the start: rate() and alerts see them
    REJECTED.labels(reason=_reason)
CACHE = Counter(f"{PREFIX}_cache_requests_total", "Result cache lookups", ["backend", "result"])
CACHE_SECONDS = Histogram(f"{PREFIX}_cache_lookup_seconds", "Result cache lookup latency", ["backend", "result"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
SEPARATIONS = Counter(f"{PREFIX}_separations_total", "Submissions per model (re-separation rate denominator)",
                      ["model", "model_version"])
RESEPARATIONS = Counter(f"{PREFIX}_reseparations_total",
                        "Same user, same audio, submitted again within the window (dissatisfaction proxy)",
                        ["model", "model_version"])
TAKEOVERS = Counter(f"{PREFIX}_job_takeovers_total",
                    "Jobs whose lease had expired (their replica died or gave them up), resumed by this replica")
READY = Gauge(f"{PREFIX}_ready", "1 when this replica can take work (its job store and result store are up)")
BACKEND_UP = Gauge(f"{PREFIX}_backend_up", "1 when this replica reaches the backend", ["backend"])

# Tenants (docs/metrics.md). Requests: every authenticated API request, by what became of it.
TENANT_OUTCOMES = ("accepted", "rejected_quota", "rejected_input")
TENANT_REQUESTS = Counter(f"{PREFIX}_tenant_requests_total", "Authenticated API requests per tenant, by outcome",
                          ["tenant", "outcome"])
TENANT_JOBS = Counter(f"{PREFIX}_tenant_jobs_total", "Jobs finished per tenant, by outcome", ["tenant", "outcome"])
TENANT_AUDIO = Counter(f"{PREFIX}_tenant_audio_seconds_total", "Seconds of audio accepted per tenant", ["tenant"])
QUOTAS = ("concurrent_jobs", "requests_per_minute", "audio_minutes_per_day")
QUOTA_REJECTIONS = Counter(f"{PREFIX}_quota_rejections_total", "Requests refused by a tenant quota",
                           ["tenant", "quota"])
AUTH_FAILURES = Counter(f"{PREFIX}_auth_failures_total", "Requests refused for their credentials", ["reason"])
CALLBACKS = Counter(f"{PREFIX}_callbacks_total", "Completion callback attempts, by outcome", ["outcome"])
SHADOW_REQUESTS = Counter(f"{PREFIX}_shadow_requests_total",
                          "Separations mirrored to a canary (shadow traffic), by outcome: compared, "
                          "skipped (sampled while the concurrency bound was full), failed", ["model", "outcome"])
# SDR of the canary's stems against the stable's, within 0..100 dB (gateway/upstream/shadow.py says why).
SHADOW_AGREEMENT = Histogram(f"{PREFIX}_shadow_agreement_db",
                             "Per-stem SDR (dB) of a canary's answer to a mirrored user request against the "
                             "stable answer the user got; model_namespace: the SeparationModels' namespace",
                             ["model", "model_namespace", "canary_version", "stable_version", "stem"],
                             buckets=(0, 2.5, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 60, 100))
