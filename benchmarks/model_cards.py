"""docs/model-cards/*.md from the per-model facts and the measured figures.

    python benchmarks/model_cards.py            # rewrite the cards
    python benchmarks/model_cards.py --check    # exit 1 if a card is not what this writes

Facts (what a model separates, published SDR and its source, intended use,
limitations) come from docs/model-cards/models.yaml; speed, cost and
precision behaviour from benchmarks/results/ (model_speed.py, gpu.py) priced
with predictor/prices.yaml through the predictor's cost formula
(benchmarks/cost_report.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cost_report  # noqa: E402

CARDS = HERE.parent / "docs" / "model-cards"


def _speed(name: str, measured: dict, gpu_rows: list) -> list[str]:
    m = measured["models"].get(name)
    if m is None:
        return ["Not measured yet: `python benchmarks/model_speed.py` measures it."]
    rows = [r for r in cost_report.cpu_rows(measured) if r.model == name]
    lines = [
        f"Measured with random weights at the release's size as benchmarks/architectures.py rebuilds it "
        f"({m['parameters_m']} M parameters: inferred from demucs' files and training grids, not read from "
        "the released checkpoint, which this machine cannot download; that file gives the evidence; "
        f"{m['models_in_bag']} model{'s' if m['models_in_bag'] > 1 else ''} per track): "
        f"`{measured['command']}` ({measured['date']}; {measured['machine']}; load average "
        f"{measured['load_average']}). {measured['audio_seconds']:g} s clips, the served defaults (shifts=1). "
        "Compute is core-seconds (CPU time of a one-thread process: what one dedicated core takes, "
        "which other work on the shared machine barely moves); a four-minute track is priced with "
        "predictor/prices.yaml as in docs/cost.md.",
        "",
        "| device | precision | compute s per audio s | compute s per 4-min track | cost per track | per 1,000 tracks |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| CPU, 1 core | {r.precision} | {r.rtf:.3f} | {r.compute_seconds_per_track:.0f} | "
                     f"{cost_report.money(r.cost_per_track)} | {cost_report.money(r.cost_per_track * 1000)} |")
    gpus = [r for r in gpu_rows if r.model == name]
    for r in gpus:
        lines.append(f"| {r.device} | {r.precision} | {r.rtf:.4f} | {r.compute_seconds_per_track:.1f} | "
                     f"{cost_report.money(r.cost_per_track)} | {cost_report.money(r.cost_per_track * 1000)} |")
    if not gpus:
        lines += ["", "No GPU figures: no GPU was available to measure on (`benchmarks/gpu.py --model "
                      f"{name}` writes them on a GPU node; docs/cost.md has the break-even real-time factors)."]
    return lines


def _precision(name: str, measured: dict) -> list[str]:
    m = measured["models"].get(name)
    lines = ["`MUSICSPLIT_PRECISION=auto` serves bf16 on CPUs with AVX512-BF16 or AMX, bf16 on GPUs of "
             "compute capability 8.0+, fp16 on 7.x, fp32 elsewhere (docs/adr/0003-predictor-precision.md); "
             "the response's `precision` parameter and `musicsplit_model_info` say which."]
    if m:
        key = "core_seconds_per_audio_second"
        speedup = m["fp32"][key] / m["bf16"][key]
        lines.append(f"Measured here: bf16 takes {speedup:.2f}x less CPU time than fp32 on this CPU (in process, "
                     "one thread, per audio second at shifts=1) and its stems agree with "
                     f"fp32's at {m['agreement_db']:.1f} dB SDR (random weights; docs/benchmarks.md has the "
                     "served comparison with golden-set SDR at both precisions, where htdemucs measured "
                     "1.82-1.99x, and says what each figure measures).")
    return lines


def _owner(name: str, facts: dict) -> str:
    """Who the runbooks escalate this model to; every card names one, or says it has none."""
    owner = str(facts.get("owner") or "").strip()
    if not owner:
        raise SystemExit(f"docs/model-cards/models.yaml: {name} has no `owner` (the team the runbooks "
                         "escalate its quality to, or `unassigned: ...` saying who covers it)")
    return owner


def _estimate(name: str) -> list[str]:
    """The reference-free estimate's calibration (musicsplit/quality/calibration.json)."""
    from musicsplit.quality import shipped_calibration

    cal = shipped_calibration()
    held = cal.fit.get("heldout", {})
    lines = ["### Quality estimate on every request (no ground truth)",
             f"Every response carries `quality_score` (0..1) and its components (docs/quality.md), from "
             f"calibration `{cal.version}`: fitted on {cal.fit.get('observations')} separations of graded damage "
             f"(synthetic golden items and real music), it ranks held-out separations like their true SDR with "
             f"Spearman {held.get('spearman')} and tells healthy (every stem >= 6 dB) from broken (a stem "
             f"<= 0 dB) with AUC {held.get('auc')}; on the held-out real-music excerpt alone "
             f"{held.get('real_spearman')} and {held.get('real_auc')}. A score of 0.73 is an estimated 6 dB "
             "of SDR, 0.5 is 3 dB. It is calibrated across separators, not for this model: treat a version's own "
             "first-day distribution as its baseline (alert MusicsplitQualityDrop)."]
    base = held.get("by_damage", {}).get("dsp baseline")
    if name == "dsp-baseline" and base:
        lines.append(f"On the held-out tracks this baseline's true SDR averaged {base['true_sdr_db']:.1f} dB "
                     f"and its estimate {base['estimated_sdr_db']:.1f} dB (score {base['score']:.2f}): the "
                     "estimate over-rates it, because its errors (centre-panned instruments in vocals, vocals "
                     "left in other) look like plausible stems to a reference-free measure.")
    return lines + [""]


def render(name: str, facts: dict, measured: dict, gpu_rows: list) -> str:
    sdr = facts["published_sdr"]
    lines = [
        f"# Model card: {name}",
        "",
        "Generated by `python benchmarks/model_cards.py` from docs/model-cards/models.yaml and "
        "benchmarks/results/; edit those, not this file.",
        "",
        "| | |",
        "|---|---|",
        f"| model | {facts['title']} |",
        f"| served as | {facts['served_as']} |",
        f"| separates | {facts['separates']} |",
        f"| stems | {', '.join(facts['stems'])} |",
        f"| sample rate | {facts['sample_rate'] / 1000:g} kHz stereo (other rates are resampled in and out) |",
        f"| architecture | {facts['architecture']} |",
        f"| weights | {facts['weights']} |",
        f"| owner | {_owner(name, facts)} |",
        "",
        "## Intended use",
        *[f"- {item}" for item in facts["intended_use"]],
        "",
        "## Quality",
        f"{sdr.get('label', 'Published SDR')}: **{sdr['value']}** ({sdr['measured_on']}). Source: {sdr['source']}.",
        "",
    ]
    if name != "dsp-baseline":
        lines += ["Golden-set SDR (the canary gate's measure) needs the real weights: "
                  f"`musicsplit eval --url URL --model {name}` against a predictor serving them. This "
                  "machine cannot download them, so no golden-set figure is given here.", ""]
    lines += ["Per deployed version, the operator keeps the golden-set SDR it measured (the built-in set and/or "
              "the owner's reference tracks, `spec.analysis.goldenSet`): in the SeparationModel's "
              "`status.history` (`goldenSdr`: mean, per stem, which set), as the metric "
              "`musicsplit_golden_sdr_db{model_version,stem,role}` (docs/metrics.md) and, for releases named "
              "through MLflow, as tags on the model version (`musicsplit.golden_sdr_db.mean`, "
              "`musicsplit.golden_sdr_db.STEM`; operator/README.md).", ""]
    lines += _estimate(name)
    lines += ["## Speed and cost"]
    if "speed" in facts:
        lines.append(facts["speed"] + "; priced per core-second as in docs/cost.md.")
    else:
        lines += _speed(name, measured, gpu_rows)
    lines += ["", "## Precision"]
    if name == "dsp-baseline":
        lines.append("Ignores `MUSICSPLIT_PRECISION`: signal processing in float32, reported as `fp32`.")
    else:
        lines += _precision(name, measured)
    lines += ["", "## Limitations", *[f"- {item}" for item in facts["limitations"]], ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a card differs from what this writes")
    args = parser.parse_args()
    facts = yaml.safe_load((CARDS / "models.yaml").read_text())
    measured = cost_report.cpu_measurements()
    gpu_rows = cost_report.gpu_rows()
    stale = []
    for name, model in facts.items():
        path = CARDS / f"{name}.md"
        text = render(name, model, measured, gpu_rows)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale model cards: {', '.join(stale)}; run python benchmarks/model_cards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
