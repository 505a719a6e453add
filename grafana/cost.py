"""Cost and capacity: what separations cost, where compute goes, how fast
models run and how full the GPUs are."""

from __future__ import annotations

from .panels import Board, Q, graph, model_variable, namespace_variable, single, version_variable
from .queries import MODEL, NAMESPACE, PREDICTOR, USER, by, increase, mean, quantile, ratio, sel, sum_rate

UID = "musicsplit-cost"
PV = "model, model_version"
LEGEND = "{{model}} {{model_version}}"
COST = "musicsplit_cost_usd_total"
PER_SEPARATION = "musicsplit_cost_per_separation_usd"


def build():
    b = Board(UID, "musicsplit / Cost and capacity",
              "Compute cost (GPU or CPU seconds x the configured price) per separation and per month, compute "
              "seconds, real-time factor, GPU utilisation and memory per model. Spend counts every traffic "
              "source (user, golden-set probe, shadow): it is all paid for.",
              [namespace_variable(), model_variable(), version_variable()])

    b.row("Cost").add(
        single("Monthly estimate", "The last hour's spend of the selected versions extrapolated to 30 days.",
               [Q(by("", f"musicsplit_cost_monthly_estimate_usd{sel(*PREDICTOR)}"))], "currencyUSD"),
        single("Spend per hour", "Compute spend per hour now, every traffic source.",
               [Q(f"3600 * {sum_rate(COST, '', *PREDICTOR)}")], "currencyUSD"),
        single("Mean cost per separation", "Mean compute cost of one user separation.",
               [Q(mean(PER_SEPARATION, "", *PREDICTOR, USER))], "currencyUSD"),
        single("Cost per audio hour", "Compute cost of separating one hour of user audio.",
               [Q("3600 * " + ratio(sum_rate(COST, "", *PREDICTOR, USER),
                                    sum_rate("musicsplit_audio_seconds_total", "", *PREDICTOR, USER)))],
               "currencyUSD"),
        single("Spend (time range)", "Compute spend over the dashboard's time range, every traffic source.",
               [Q(by("", increase(COST, *PREDICTOR)), instant=True)], "currencyUSD", w=8, sparkline=False),
        graph("Cost per separation by version (mean, p95)", "Compute cost of one user separation per version.",
              [Q(mean(PER_SEPARATION, PV, *PREDICTOR, USER), f"mean {LEGEND}"),
               Q(quantile(0.95, PER_SEPARATION, PV, *PREDICTOR, USER), f"p95 {LEGEND}")], "currencyUSD"),
        graph("Monthly estimate by version", "Each version's last hour of spend extrapolated to 30 days.",
              [Q(by(PV, f"musicsplit_cost_monthly_estimate_usd{sel(*PREDICTOR)}"), LEGEND)], "currencyUSD"),
        graph("Spend per hour by traffic source",
              "Where the money goes: user traffic, the golden-set probe, shadow copies.",
              [Q(f"3600 * {sum_rate(COST, 'model, source', *PREDICTOR)}", "{{model}} {{source}}")], "currencyUSD",
              stacked=True),
    )

    b.row("Capacity").add(
        graph("Compute seconds per second by device",
              "Seconds of GPU (cuda) or CPU time spent in inference per wall second: busy devices.",
              [Q(sum_rate("musicsplit_compute_seconds_total", f"{PV}, device", *PREDICTOR),
                 "{{model}} {{model_version}} {{device}}")], "short"),
        graph("Real-time factor p50 / p95 by version",
              "Inference seconds per second of audio: below 1 is faster than real time.",
              [Q(quantile(q, "musicsplit_real_time_factor", PV, *PREDICTOR, USER), f"p{round(q * 100)} {LEGEND}")
               for q in (0.5, 0.95)], "short"),
        graph("Audio separated", "Seconds of input audio separated per wall second, every traffic source.",
              [Q(sum_rate("musicsplit_audio_seconds_total", f"{PV}, source", *PREDICTOR),
                 "{{model}} {{model_version}} {{source}}")], "short", stacked=True),
        graph("GPU utilisation by model",
              "Busy fraction of the GPUs serving each version (NVML), mean and busiest device.",
              [Q(by(PV, f"musicsplit_gpu_utilization_ratio{sel(*PREDICTOR)}", "avg"), f"mean {LEGEND}"),
               Q(by(PV, f"musicsplit_gpu_utilization_ratio{sel(*PREDICTOR)}", "max"), f"max {LEGEND}")],
              "percentunit", min_val=0, max_val=1),
        graph("GPU memory by model", "Memory the model holds on its GPUs, over the devices' total.",
              [Q(ratio(by(PV, f"musicsplit_gpu_memory_used_bytes{sel(*PREDICTOR)}", "max"),
                       by(PV, f"musicsplit_gpu_memory_total_bytes{sel(*PREDICTOR)}", "max")), LEGEND)],
              "percentunit", min_val=0, max_val=1),
        graph("Model load time", "How long the last model load took per version.",
              [Q(by(PV, f"musicsplit_model_load_seconds{sel(*PREDICTOR)}", "max"), LEGEND)], "s"),
        graph("Model load failures", "Model loads that failed (per hour): bad weights, checksum, version mismatch.",
              [Q(f"3600 * {sum_rate('musicsplit_model_load_failures_total', 'model', NAMESPACE, MODEL)}",
                 "{{model}}")], "short"),
    )
    return b.build()
