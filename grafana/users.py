"""Users: what the people behind the requests see. A/B arms, re-separations
(a dissatisfaction signal), per-tenant load, quotas and callbacks."""

from __future__ import annotations

from .panels import Board, Q, graph, model_variable, namespace_variable, single, version_variable
from .queries import MODEL, VERSION, by, increase, mean, quantile, share, sum_rate

UID = "musicsplit-users"
JOBS = "musicsplit_gateway_jobs_total"


def build():
    b = Board(UID, "musicsplit / Users",
              "The gateway's view of its users: experiment arms and how each fares, how often people submit the "
              "same audio again, and load, quotas and failures per tenant.",
              [namespace_variable(), model_variable(), version_variable()])

    b.row("A/B experiment").add(
        graph("Assignments by arm", "Requests assigned to each arm per second (`explicit`: the caller named "
              "the model, no experiment).",
              [Q(sum_rate("musicsplit_gateway_ab_assignments_total", "model, arm", MODEL), "{{model}} {{arm}}")],
              "reqps", stacked=True),
        graph("Mean quality score by arm", "Mean quality score of finished jobs and v2 requests per arm.",
              [Q(mean("musicsplit_gateway_quality_score", "model, arm", MODEL, VERSION), "{{model}} {{arm}}")],
              "percentunit", min_val=0, max_val=1),
        graph("Job latency p95 by arm", "95th percentile from submission to result per arm.",
              [Q(quantile(0.95, "musicsplit_gateway_job_seconds", "model, arm", MODEL), "{{model}} {{arm}}")], "s"),
        graph("Job failure ratio by arm", "Failed jobs over finished jobs (cancelled ones left out) per arm.",
              [Q(share(sum_rate(JOBS, "model, arm", MODEL, VERSION, 'outcome="failure"'),
                       sum_rate(JOBS, "model, arm", MODEL, VERSION, 'outcome!="cancelled"')), "{{model}} {{arm}}")],
              "percentunit", min_val=0),
    )

    b.row("Satisfaction").add(
        graph("Re-separation rate by version",
              "Share of submissions that repeat the same user's same audio within the window: people "
              "unhappy with a result try again.",
              [Q(share(sum_rate("musicsplit_gateway_reseparations_total", "model, model_version", MODEL, VERSION),
                       sum_rate("musicsplit_gateway_separations_total", "model, model_version", MODEL, VERSION)),
                 "{{model}} {{model_version}}")], "percentunit", min_val=0),
        graph("Submissions by model and version", "Separations submitted per second (cache hits included).",
              [Q(sum_rate("musicsplit_gateway_separations_total", "model, model_version", MODEL, VERSION),
                 "{{model}} {{model_version}}")], "reqps"),
        graph("Fallbacks served", "Requests served by the fallback model because the chosen one was down.",
              [Q(sum_rate("musicsplit_gateway_fallbacks_total", "model, fallback", MODEL),
                 "{{model}} -> {{fallback}}")], "reqps"),
        graph("Rejected requests by reason", "Requests refused before any model time (bad audio, too large, "
              "queue full...).",
              [Q(sum_rate("musicsplit_gateway_rejected_total", "reason"), "{{reason}}")], "reqps", stacked=True),
    )

    b.row("Tenants").add(
        graph("Requests by tenant", "Requests per tenant: accepted, refused by quota, refused as bad input.",
              [Q(sum_rate("musicsplit_gateway_tenant_requests_total", "tenant, outcome"), "{{tenant}} {{outcome}}")],
              "reqps", stacked=True),
        graph("Jobs by tenant", "Finished jobs per tenant and outcome.",
              [Q(sum_rate("musicsplit_gateway_tenant_jobs_total", "tenant, outcome"), "{{tenant}} {{outcome}}")],
              "ops", stacked=True),
        single("Audio minutes by tenant (time range)", "Minutes of audio each tenant submitted over the range.",
               [Q(f"{by('tenant', increase('musicsplit_gateway_tenant_audio_seconds_total'))} / 60", "{{tenant}}",
                  instant=True)], w=8, sparkline=False),
        graph("Quota rejections", "Requests refused by a tenant quota, per tenant and quota.",
              [Q(sum_rate("musicsplit_gateway_quota_rejections_total", "tenant, quota"), "{{tenant}} {{quota}}")],
              "reqps", w=16),
        graph("Authentication failures", "Requests without a valid API key or token, by reason.",
              [Q(sum_rate("musicsplit_gateway_auth_failures_total", "reason"), "{{reason}}")], "reqps"),
        graph("Callbacks by outcome", "Job-finished callbacks to tenants' URLs: delivered, retried, failed, "
              "refused (not an allowed host).",
              [Q(sum_rate("musicsplit_gateway_callbacks_total", "outcome"), "{{outcome}}")], "ops"),
    )
    return b.build()
