"""Model quality: the reference-free estimate, its components and SNR every request gets, the
golden-set SDR (ground truth) per version, and broken outputs."""

from __future__ import annotations

from .panels import (Board, Q, bars, distribution, graph, model_variable, namespace_variable, single,
                     version_variable)
from .queries import MODEL, PREDICTOR, RATE, ROLLOUT, USER, VERSION, by, increase, mean, quantile, ratio, sum_rate

UID = "musicsplit-quality"
QUALITY = "audio_separation_quality"
SNR = "musicsplit_mixture_snr_db"
COMPONENT = "musicsplit_quality_component"
ESTIMATED_SDR = "musicsplit_quality_estimated_sdr_db"
SHARE = "musicsplit_stem_energy_share"
SDR = "musicsplit_golden_sdr_db"
ISSUES = "musicsplit_output_issues_total"
PV = "model, model_version"
LEGEND = "{{model}} {{model_version}}"


def build():
    b = Board(UID, "musicsplit / Model quality",
              "Separation quality per model version: the 0..1 quality estimate, its components, stable vs canary, "
              "stem energy shares, the mixture-consistency SNR "
              "measured on every user request (no ground truth), the golden-set SDR the operator measures "
              "(ground truth), and silent or non-finite outputs.",
              [namespace_variable(), model_variable(), version_variable()])

    b.row("Quality score (every user request, no ground truth)").add(
        graph("Mean quality score by version",
              "Mean of the per-request quality estimate (0..1, calibrated to rank like SDR: 0.73 is about 6 dB). "
              "A drop for one version while the others hold points at the model, not the input mix.",
              [Q(mean(QUALITY, PV, *PREDICTOR, USER), LEGEND)], "percentunit", min_val=0, max_val=1),
        graph("Quality score p10 / p50 / p90 by version",
              "The distribution of the per-request score per version: the worst tenth, the median, the best tenth.",
              [Q(quantile(q, QUALITY, PV, *PREDICTOR, USER), f"p{round(q * 100)} {LEGEND}")
               for q in (0.1, 0.5, 0.9)],
              "percentunit", min_val=0, max_val=1),
        distribution("Quality score distribution",
                     "How many requests fell in each quality bucket over time (selected versions).",
                     Q(by("le", increase(QUALITY + "_bucket", *PREDICTOR, USER, window=RATE)))),
        bars("Share of requests scoring below 0.7 by version",
             "Requests whose quality score was at most 0.7 over the dashboard's time range.",
             [Q(ratio(by(PV, increase(QUALITY + "_bucket", *PREDICTOR, USER, 'le="0.7"')),
                      by(PV, increase(QUALITY + "_count", *PREDICTOR, USER))), LEGEND, instant=True)],
             "percentunit", min_val=0),
        graph("Quality score by A/B arm (gateway)",
              "Mean quality score of finished gateway jobs and v2 requests per experiment arm.",
              [Q(mean("musicsplit_gateway_quality_score", "model, arm", MODEL, VERSION), "{{model}} {{arm}}")],
              "percentunit", w=24, min_val=0, max_val=1),
    )

    # Which version is the canary: the operator's golden-SDR role (current = canary during a rollout).
    roles = f'(0 * max by (model_version, role) ({SDR}{{{", ".join(ROLLOUT)}, stem="mean"}}) + 1)'
    b.row("Estimate components, stable vs canary, output drift").add(
        graph("Estimate components by version",
              "Mean of each component of the estimate (docs/quality.md): consistency (stems add up), leakage "
              "(stems share content), identity (each stem looks like its name), artefacts (noise, flicker), "
              "integrity (silent, clipped, NaN). The one that falls says how a version went wrong.",
              [Q(mean(COMPONENT, f"{PV}, component", *PREDICTOR, USER), "{{model_version}} {{component}}")],
              "percentunit", min_val=0, max_val=1),
        graph("Stable vs canary: mean estimate",
              "Mean estimate per version, labelled with its rollout role from the operator (current: the "
              "canary during a rollout; previous: stable). Both see the same users' traffic split.",
              [Q(f"{mean(QUALITY, PV, *PREDICTOR, USER)}\n* on (model_version) group_left (role)\n{roles}",
                 "{{model}} {{model_version}} ({{role}})")],
              "percentunit", min_val=0, max_val=1),
        graph("Estimated SDR p50 by version",
              "The estimate before its 0..1 mapping, as dB of SDR (calibrated on separations with known stems).",
              [Q(quantile(0.5, ESTIMATED_SDR, PV, *PREDICTOR, USER), f"p50 {LEGEND}")], "dB"),
        graph("Median energy share per stem by version",
              "Each stem's median share of the stems' energy: a shift against a version's first day is output "
              "drift (MusicsplitOutputDrift).",
              [Q(quantile(0.5, SHARE, f"{PV}, stem", *PREDICTOR, USER), "{{model_version}} {{stem}}")],
              "percentunit", min_val=0, max_val=1),
    )

    b.row("Mixture-consistency SNR").add(
        graph("SNR p10 / p50 / p90 by version",
              "Input vs the sum of the stems, in dB, per version: low means the stems do not add back up to the "
              "mixture.",
              [Q(quantile(q, SNR, PV, *PREDICTOR, USER), f"p{round(q * 100)} {LEGEND}") for q in (0.1, 0.5, 0.9)],
              "dB"),
        distribution("SNR distribution", "How many requests fell in each SNR bucket over time (selected versions).",
                     Q(by("le", increase(SNR + "_bucket", *PREDICTOR, USER, window=RATE))),
                     "dB"),
    )

    rollout_versions = (*ROLLOUT, VERSION)
    b.row("Golden set (ground truth)").add(
        bars("Golden-set SDR by version (mean over stems)",
             "SDR the operator's probe measured on the golden set (mixtures with known stems) for each version, "
             "at the precision it serves at. `previous` is the version the `current` one replaces.",
             [Q(by("name, model_version, role", f'{SDR}{{{", ".join(rollout_versions)}, stem="mean"}}', "max"),
               "{{name}} {{model_version}} ({{role}})", instant=True)], "dB"),
        bars("Golden-set SDR per stem and version", "Per-stem SDR on the golden set.",
             [Q(by("model_version, stem", f'{SDR}{{{", ".join(rollout_versions)}, stem!="mean"}}', "max"),
               "{{model_version}} {{stem}}", instant=True)], "dB"),
        graph("Golden-set SDR over time", "Each probe's mean SDR per version: a step down is a regression.",
              [Q(by("name, model_version", f'{SDR}{{{", ".join(rollout_versions)}, stem="mean"}}', "max"),
                 "{{name}} {{model_version}}")], "dB", w=24),
    )

    successes = sum_rate("musicsplit_requests_total", PV, *PREDICTOR, USER, 'outcome="success"')
    issue_share = f"{sum_rate(ISSUES, f'{PV}, issue', *PREDICTOR, USER)}\n/ ignoring (issue) group_left\n{successes}"
    b.row("Broken outputs").add(
        graph("Silent or non-finite outputs by version",
              "Outputs with a silent stem (below -60 dBFS while the mixture is not) or NaN/Inf samples, per "
              "second. Non-finite output is always a bug (precision, kernels, weights).",
              [Q(sum_rate(ISSUES, f"{PV}, issue", *PREDICTOR, USER), "{{model}} {{model_version}} {{issue}}")],
              "ops"),
        graph("Share of requests with an output issue",
              "Output issues per successful user request, per version and issue.",
              [Q(issue_share, "{{model}} {{model_version}} {{issue}}")], "percentunit", min_val=0),
        single("Non-finite outputs (time range)", "Outputs with NaN or Inf samples over the dashboard's range.",
               [Q(by("", increase(ISSUES, *PREDICTOR, USER, 'issue="non_finite"')), instant=True)], w=24,
               sparkline=False),
    )
    return b.build()
