"""Overview: is musicsplit serving? Traffic, errors, latency, saturation, cache."""

from __future__ import annotations

from .panels import Board, Q, graph, model_variable, namespace_variable, single, thresholds, version_variable
from .queries import (CALLER_ERRORS, MODEL, NAMESPACE, PREDICTOR, SERVER_ERRORS, USER, VERSION, by, quantile,
                      ratio, share, sum_rate)

UID = "musicsplit-overview"
REQUESTS = "musicsplit_requests_total"
LATENCY = "musicsplit_request_duration_seconds"
VALID = 'outcome!~"bad_input|too_large"'
PV = "model, model_version"


def server_error_ratio(labels: str) -> str:
    return ratio(sum_rate(REQUESTS, labels, *PREDICTOR, USER, SERVER_ERRORS),
                 sum_rate(REQUESTS, labels, *PREDICTOR, USER, VALID))


def cache_hit_ratio(labels: str) -> str:
    cache = "musicsplit_gateway_cache_requests_total"
    return share(sum_rate(cache, labels, 'result="hit"'), sum_rate(cache, labels))


def build():
    b = Board(UID, "musicsplit / Overview",
              "Requests, errors, latency and saturation of the predictors and the gateway. Predictor panels count "
              "user traffic only (no golden-set probe, no shadow copies).",
              [namespace_variable(), model_variable(), version_variable()])

    b.row("At a glance").add(
        single("Requests / s", "User requests per second reaching the selected predictors.",
               [Q(sum_rate(REQUESTS, "", *PREDICTOR, USER))], "reqps"),
        single("Server error ratio",
               "Share of user requests that failed on the server's side (outcome error or not_ready). Bad input "
               "(400/413) is the caller's and is left out. The availability SLO allows 0.1 %.",
               [Q(server_error_ratio(""))], "percentunit",
               steps=thresholds((None, "green"), (0.001, "orange"), (0.01, "red"))),
        single("p99 latency", "99th percentile of the time a separation request spends in the predictor.",
               [Q(quantile(0.99, LATENCY, "", *PREDICTOR, USER))], "s",
               steps=thresholds((None, "green"), (30, "orange"), (60, "red"))),
        single("In flight", "Requests running or queued inside the selected predictors now.",
               [Q(by("", f"musicsplit_inflight_requests{{{NAMESPACE}, {MODEL}, {VERSION}}}"))]),
        single("Job queue depth", "Gateway jobs waiting for a worker in the queue all gateway replicas share (each exports its whole depth: max).",
               [Q("max (musicsplit_gateway_queue_depth)")], steps=thresholds((None, "green"), (32, "orange"))),
        single("Cache hit ratio", "Share of gateway result-cache lookups answered from the cache.",
               [Q(cache_hit_ratio(""))], "percentunit"),
    )

    b.row("Predictors").add(
        graph("Requests by model and version", "User requests per second per model version.",
              [Q(sum_rate(REQUESTS, PV, *PREDICTOR, USER), "{{model}} {{model_version}}")], "reqps"),
        graph("Requests by outcome",
              "Every outcome, user traffic: success, bad_input (400), too_large (413), saturated (429), "
              "not_ready (503), error (500).",
              [Q(sum_rate(REQUESTS, "outcome", *PREDICTOR, USER), "{{outcome}}")], "reqps", stacked=True),
        graph("Server error ratio by model and version",
              "Failed user requests (error, not_ready) over all user requests but the caller's bad input.",
              [Q(server_error_ratio(PV), "{{model}} {{model_version}}")], "percentunit", min_val=0),
        graph("Latency p50 / p95 / p99 by model and version",
              "Time a request spends in the predictor (decode, queue, inference, encode), user traffic.",
              [Q(quantile(q, LATENCY, PV, *PREDICTOR, USER), f"p{round(q * 100)} {{{{model}}}} {{{{model_version}}}}")
               for q in (0.5, 0.95, 0.99)], "s"),
        graph("Requests in flight", "Requests running or queued per model version (all traffic sources).",
              [Q(by(PV, f"musicsplit_inflight_requests{{{NAMESPACE}, {MODEL}, {VERSION}}}"),
                 "{{model}} {{model_version}}")]),
        graph("Refusals (429 / 503)",
              "Requests refused before any model time: the predictor saturated (429) or without a loaded model "
              "(503), and the gateway's job queue full (429). Every traffic source.",
              [Q(sum_rate(REQUESTS, "model, outcome", *PREDICTOR, 'outcome=~"saturated|not_ready"'),
                 "predictor {{model}} {{outcome}}"),
               Q(sum_rate("musicsplit_gateway_rejected_total", "reason", 'reason="queue_full"'),
                 "gateway {{reason}}")], "reqps"),
        graph("Ready replicas per model",
              "Predictor replicas with the model loaded and serving, out of the replicas scraped.",
              [Q(by("model", f"musicsplit_model_ready{{{NAMESPACE}, {MODEL}}}"), "ready {{model}}"),
               Q(by("model", f"musicsplit_model_ready{{{NAMESPACE}, {MODEL}}}", "count"), "scraped {{model}}")]),
        graph("Caller errors by model", "Requests rejected as the caller's fault (400 bad input, 413 too large).",
              [Q(sum_rate(REQUESTS, "model, outcome", *PREDICTOR, USER, CALLER_ERRORS), "{{model}} {{outcome}}")],
              "reqps"),
    )

    b.row("Gateway").add(
        graph("Jobs by outcome", "Finished jobs per second: success, failure, cancelled.",
              [Q(sum_rate("musicsplit_gateway_jobs_total", "model, outcome", MODEL, VERSION), "{{model}} {{outcome}}")],
              "ops", stacked=True),
        graph("Job latency p50 / p95 / p99", "From submission to result, queue time included.",
              [Q(quantile(q, "musicsplit_gateway_job_seconds", "model", MODEL), f"p{round(q * 100)} {{{{model}}}}")
               for q in (0.5, 0.95, 0.99)], "s"),
        graph("v2 pass-through requests by outcome", "KServe v2 requests proxied by the gateway.",
              [Q(sum_rate("musicsplit_gateway_v2_requests_total", "model, outcome", MODEL, VERSION),
                 "{{model}} {{outcome}}")], "reqps"),
        graph("Queue depth and running jobs", "Jobs waiting for a worker, and jobs being separated (all replicas).",
              [Q("max (musicsplit_gateway_queue_depth)", "queued"), Q("sum (musicsplit_gateway_running_jobs)", "running")]),
        graph("Cache hit ratio by backend", "Result-cache lookups answered from the cache, per cache backend.",
              [Q(cache_hit_ratio("backend"), "{{backend}}")], "percentunit", min_val=0, max_val=1),
        graph("Predictor endpoints up",
              "Endpoints each gateway replica's health probe finds ready (1), per model and region; the circuit "
              "breaker state (0 closed, 1 half-open, 2 open); and, per endpoint, whether its breaker has been "
              "open since its last successful call (1), what MusicsplitGatewayBreakerOpen pages on after 2 min.",
              [Q(by("model, region", f"musicsplit_gateway_endpoint_up{{{MODEL}}}", "min"), "up {{model}} {{region}}"),
               Q(by("model, region", f"musicsplit_gateway_breaker_state{{{MODEL}}}", "max"),
                 "breaker {{model}} {{region}}"),
               Q(by("model, endpoint", f"musicsplit_gateway_breaker_open{{{MODEL}}}", "max"),
                 "open {{model}} {{endpoint}}")]),
        graph("Upstream requests by outcome", "The gateway's calls to predictors, per region and outcome.",
              [Q(sum_rate("musicsplit_gateway_upstream_requests_total", "model, region, outcome", MODEL),
                 "{{model}} {{region}} {{outcome}}")], "reqps"),
        graph("Gateway backends up", "Each shared backend the gateway depends on (1 up, 0 down), worst replica.",
              [Q(by("backend", "musicsplit_gateway_backend_up", "min"), "{{backend}}")], min_val=0, max_val=1),
        graph("Scrape targets up", "Targets Prometheus scrapes successfully, per musicsplit component.",
              [Q(by("musicsplit_component", 'up{musicsplit_component=~"predictor|gateway|operator"}'),
                 "up {{musicsplit_component}}"),
               Q(by("musicsplit_component", 'up{musicsplit_component=~"predictor|gateway|operator"}', "count"),
                 "scraped {{musicsplit_component}}")]),
    )
    return b.build()
