"""Canary: a rollout's stable and canary versions side by side (as Flagger's
canary dashboard shows primary and canary), with the operator's view of it:
traffic weight, phase, analyses, holds, rollbacks."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import VariableSort

from .panels import (Board, Q, bars, graph, model_variable, namespace_variable, single, thresholds, timeline,
                     version_variable)
from .queries import NAMESPACE, ROLLOUT, SERVER_ERRORS, USER, by, increase, mean, quantile, ratio, sum_rate

UID = "musicsplit-canary"
OPERATOR = ", ".join(ROLLOUT)
VALID = 'outcome!~"bad_input|too_large"'


def _version(role: str) -> tuple[str, ...]:
    return NAMESPACE, 'model=~"$model"', f'model_version="${role}"', USER


def side_by_side(title: str, description: str, expr, unit: str, **kw) -> list:
    """The same panel for the stable (left) and the canary (right) version, one y-axis scale each."""
    return [graph(f"Stable ($stable): {title}", description, [Q(expr("stable"), "$stable")], unit, **kw),
            graph(f"Canary ($canary): {title}", description, [Q(expr("canary"), "$canary")], unit, **kw)]


def build():
    b = Board(UID, "musicsplit / Canary",
              "One SeparationModel's rollout: the stable version (left) and the canary (right) on user "
              "traffic only, and the operator's decisions. Pick the model; `stable` defaults to the oldest "
              "version seen in the time range and `canary` to the newest.",
              [namespace_variable(),
               model_variable().multi(False).include_all(False),
               version_variable("stable", "Stable version", multi=False, sort=VariableSort.NATURAL_ASC),
               version_variable("canary", "Canary version", multi=False, sort=VariableSort.NATURAL_DESC)])

    b.row("Rollout").add(
        single("Phase", "The rollout phase the operator reports (status.phase).",
               [Q(f"max by (phase) (musicsplit_rollout_phase{{{OPERATOR}}}) == 1", "{{phase}}", instant=True)],
               show_name=True, sparkline=False),
        single("Canary weight", "Percent of traffic the canary gets now (0: no canary).",
               [Q(f"max (musicsplit_rollout_canary_weight{{{OPERATOR}}})")], "percent"),
        single("Analyses held in a row",
               "Consecutive analyses that could not judge the canary (too few user requests, Prometheus or the "
               "probe unavailable). The canary keeps its share meanwhile.",
               [Q(f"max (musicsplit_rollout_analysis_holds{{{OPERATOR}}})")],
               steps=thresholds((None, "green"), (5, "orange"), (10, "red"))),
        single("Failed analyses", "Failed analyses at the current step, toward the rollback threshold.",
               [Q(f"max (musicsplit_rollout_failed_analyses{{{OPERATOR}}})")],
               steps=thresholds((None, "green"), (1, "orange"))),
        single("Rollbacks (time range)", "Versions rolled back over the dashboard's time range.",
               [Q(by("", increase("musicsplit_rollouts_total", *ROLLOUT, 'outcome="rolledBack"')), instant=True)],
               steps=thresholds((None, "green"), (1, "red")), sparkline=False),
        single("Promotions (time range)", "Versions promoted to 100 % over the dashboard's time range.",
               [Q(by("", increase("musicsplit_rollouts_total", *ROLLOUT, 'outcome="promoted"')), instant=True)],
               sparkline=False),
        graph("Canary weight over time", "Traffic percent the canary got, step by step.",
              [Q(by("name", f"musicsplit_rollout_canary_weight{{{OPERATOR}}}", "max"), "{{name}}")], "percent",
              min_val=0, max_val=100),
        timeline("Phase over time", "Which phase the rollout was in.",
                 [Q(f"max by (phase) (musicsplit_rollout_phase{{{OPERATOR}}}) == 1", "{{phase}}")]),
        graph("Analyses by result", "Canary analyses per minute: pass, fail, hold.",
              [Q(f"60 * {sum_rate('musicsplit_rollout_analyses_total', 'result', *ROLLOUT)}", "{{result}}")],
              "short", stacked=True),
        graph("Holds and hold deadlines",
              "Analyses held in a row, and rollouts whose holds outlasted the hold deadline (per minute).",
              [Q(by("name", f"musicsplit_rollout_analysis_holds{{{OPERATOR}}}", "max"), "holds {{name}}"),
               Q(f"60 * {sum_rate('musicsplit_rollout_hold_deadline_exceeded_total', 'name', *ROLLOUT)}",
                 "deadline exceeded {{name}}")]),
        graph("Rollout outcomes", "Versions leaving a rollout, by outcome (per minute).",
              [Q(f"60 * {sum_rate('musicsplit_rollouts_total', 'outcome', *ROLLOUT)}", "{{outcome}}")], stacked=True),
        graph("Rollout webhooks", "Pre-rollout, rollout and post-rollout webhook calls by type and outcome.",
              [Q(f"60 * {sum_rate('musicsplit_rollout_webhooks_total', 'type, outcome', *ROLLOUT)}",
                 "{{type}} {{outcome}}")]),
    )

    requests = "musicsplit_requests_total"
    b.row("Stable vs canary (user traffic)").add(
        *side_by_side("request rate", "User requests per second served by this version.",
                      lambda v: sum_rate(requests, "", *_version(v)), "reqps"),
        *side_by_side("server error ratio", "Failed user requests (error, not_ready) over valid user requests.",
                      lambda v: ratio(sum_rate(requests, "", *_version(v), SERVER_ERRORS),
                                      sum_rate(requests, "", *_version(v), VALID)), "percentunit", min_val=0),
        *side_by_side("p99 latency", "99th percentile of the predictor's request time.",
                      lambda v: quantile(0.99, "musicsplit_request_duration_seconds", "", *_version(v)), "s"),
        *side_by_side("mean quality score", "Mean reference-free quality score (0..1) of user requests.",
                      lambda v: mean("audio_separation_quality", "", *_version(v)), "percentunit",
                      min_val=0, max_val=1),
    )

    b.row("Ground truth and shadow traffic").add(
        bars("Golden-set SDR: stable vs canary", "Per-stem SDR the operator's probe measured on the golden set.",
             [Q(by("model_version, stem",
                   f'musicsplit_golden_sdr_db{{{OPERATOR}, model_version=~"$stable|$canary"}}', "max"),
                "{{model_version}} {{stem}}", instant=True)], "dB"),
        graph("Shadow agreement (canary vs stable) by stem",
              "Median SDR between the canary's and the stable version's stems on mirrored user requests "
              "(0..100 dB, identical stems 100): high means the canary separates as the stable version does.",
              [Q(quantile(0.5, "musicsplit_gateway_shadow_agreement_db", "stem", 'model=~"$model"',
                          # The gateway's own scrape namespace is not the model's: model_namespace is.
                          'model_namespace=~"$namespace"', 'canary_version="$canary"',
                          'stable_version="$stable"'), "{{stem}}")], "dB"),
        graph("Shadow requests by outcome", "Mirrored requests compared, skipped or failed.",
              [Q(sum_rate("musicsplit_gateway_shadow_requests_total", "outcome", 'model=~"$model"'), "{{outcome}}")],
              "reqps"),
    )
    return b.build()

