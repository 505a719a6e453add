"""The reference-free quality estimate: how it ranks against true SDR, and what it costs.

    python benchmarks/quality_estimate.py [--write-calibration] [--plot docs/quality/scatter.png]
        [--cost-seconds 30] [--no-cost] [--cache /tmp/quality-corpus.pkl]

Calibration corpus: the golden set's synthetic items and the real CC0 excerpts
(musicsplit/golden_audio), each turned into separations of graded damage
(musicsplit/quality/damage.py) plus the real outputs of the weight-free DSP
baseline and of a small HTDemucs with random weights.
Split by source track: the calibration is fitted on the synthetic items of
seed 0 and the real excerpt lithium-112s, and measured on held-out tracks:
the synthetic items of seed 1 and the real excerpt lithium-196s (the same
song: held out by excerpt, not by song). The damage families are the same
in both parts. `--write-calibration` writes the fitted file the package
ships (musicsplit/quality/calibration.json).
Cost: the estimate on a separation of a `--cost-seconds` track next to a
full-size HTDemucs (random weights, the released architecture) on the same
track, on this CPU.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicsplit.golden import STEMS, golden_set, real_item  # noqa: E402
from musicsplit.quality import assess, consistency_score  # noqa: E402
from musicsplit.quality.calibration import (  # noqa: E402
    Observation, auc, components, fit, observe, ranking, scores, template_samples,
)
from musicsplit.quality.estimate import combine  # noqa: E402
from musicsplit.quality.damage import damaged, separated  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

VERSION = "2026-12-07.1"
TRAIN = {"synthetic_seed": 0, "real": "lithium-112s"}
TEST = {"synthetic_seed": 1, "real": "lithium-196s"}


def separators():
    import torch
    from demucs.htdemucs import HTDemucs

    from musicsplit.predictor.baseline import DSPBaseline
    from musicsplit.predictor.loading import DemucsSeparator

    torch.manual_seed(0)
    small = HTDemucs(sources=list(STEMS), channels=16, depth=4, t_layers=1, t_heads=2, segment=4)
    ht = DemucsSeparator(small, "cpu")
    ht.name = "htdemucs (random weights)"
    return [(DSPBaseline(), "dsp baseline"), (ht, "random htdemucs")]


def tracks(part: dict, synthetic: int):
    return golden_set(synthetic, seed=part["synthetic_seed"]) + [real_item(part["real"])]


def corpus(items, seps) -> list[Observation]:
    out = []
    for item in items:
        start = time.perf_counter()
        for s in damaged(item):
            out.append(observe(item, s.stems, s.damage, s.variant))
        for sep, family in seps:
            s = separated(item, sep, family)
            out.append(observe(item, s.stems, s.damage, s.variant))
        print(f"  {item.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def templates(items) -> dict[str, list]:
    merged: dict[str, list] = {k: [] for k in STEMS}
    for item in items:
        for k, v in template_samples(item).items():
            merged[k] += v
    return merged


def consistency_only(observations: list[Observation]) -> tuple[float, float]:
    s = np.array([consistency_score(o.snr_db) * (1 - o.silent_share) for o in observations])
    y = np.array([o.mean_sdr for o in observations])
    h, b = np.array([o.healthy for o in observations]), np.array([o.broken for o in observations])
    return float(spearmanr(s, y).statistic), auc(s[h | b], h[h | b])


def per_damage(observations, cal) -> list[str]:
    s = scores(observations, cal)
    families = list(dict.fromkeys(o.damage for o in observations))
    lines = [f"{'damage':<22}{'n':>3}{'true SDR dB':>13}{'score':>8}{'score range':>15}"]
    for fam in families:
        idx = [i for i, o in enumerate(observations) if o.damage == fam]
        y = np.mean([observations[i].mean_sdr for i in idx])
        lines.append(f"{fam:<22}{len(idx):>3}{y:>13.1f}{np.mean(s[idx]):>8.2f}"
                     f"{f'{np.min(s[idx]):.2f}..{np.max(s[idx]):.2f}':>15}")
    return lines


def plot(observations, cal, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = scores(observations, cal)
    y = np.array([o.mean_sdr for o in observations])
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    families = list(dict.fromkeys(o.damage for o in observations))
    cmap = plt.get_cmap("tab20")
    for i, fam in enumerate(families):
        idx = [j for j, o in enumerate(observations) if o.damage == fam]
        real = [j for j in idx if observations[j].track.startswith("real-")]
        synth = [j for j in idx if j not in real]
        ax.scatter(y[synth], s[synth], color=cmap(i), marker="o", s=22, label=fam)
        ax.scatter(y[real], s[real], color=cmap(i), marker="*", s=90, edgecolors="black", linewidths=0.4)
    ax.axvline(6, color="grey", lw=0.6, ls="--")
    ax.axvline(0, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("true SDR, mean over stems (each clipped to -10..25 dB)")
    ax.set_ylabel("quality score (reference-free estimate)")
    ax.set_title("Held-out separations (circles synthetic, stars real music)")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def cost(seconds: float) -> None:
    import torch

    from benchmarks.architectures import build
    from musicsplit.predictor.loading import DemucsSeparator

    torch.set_num_threads(torch.get_num_threads())
    mix = (np.random.default_rng(0).standard_normal((2, int(seconds * 44100))) * 0.1).astype(np.float32)
    model = DemucsSeparator(build("htdemucs"), "cpu")
    start = time.perf_counter()
    stems = model.separate(mix, shifts=1)
    demucs_s = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        assess(mix, stems, model.sources)
        times.append(time.perf_counter() - start)
    est_s = float(np.median(times))
    print(f"\ncost on a {seconds:.0f} s stereo track, this CPU ({torch.get_num_threads()} threads):")
    print(f"  full-size HTDemucs (random weights, released architecture): {demucs_s:8.2f} s")
    print(f"  quality estimate (median of 3):                             {est_s:8.3f} s"
          f"  = {100 * est_s / demucs_s:.2f} % of HTDemucs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=4, help="synthetic golden items per part")
    parser.add_argument("--write-calibration", action="store_true",
                        help="write the fitted calibration to musicsplit/quality/calibration.json")
    parser.add_argument("--plot", type=Path, help="scatter plot of the held-out part (PNG)")
    parser.add_argument("--cost-seconds", type=float, default=30.0)
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--cache", type=Path, help="keep the corpus' observations here between runs")
    args = parser.parse_args()

    train_items, test_items = tracks(TRAIN, args.synthetic), tracks(TEST, args.synthetic)
    if args.cache and args.cache.exists():
        train, test, tpl = pickle.loads(args.cache.read_bytes())
    else:
        seps = separators()
        print("building the corpus ...", file=sys.stderr)
        train, test = corpus(train_items, seps), corpus(test_items, seps)
        tpl = templates(train_items)
        if args.cache:
            args.cache.write_bytes(pickle.dumps((train, test, tpl)))

    cal = fit(train, tpl, VERSION)
    held = ranking(test, cal)
    real = ranking([o for o in test if o.track.startswith("real-")], cal)
    synth = ranking([o for o in test if not o.track.startswith("real-")], cal)
    fitted = ranking(train, cal)
    old = consistency_only(test)
    print(f"calibration {VERSION}: fitted on {len(train)} separations of {len(train_items)} tracks "
          f"(synthetic seed {TRAIN['synthetic_seed']}, real {TRAIN['real']})")
    print("weights (dB of estimated SDR per unit of component): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cal.weights.items())
          + f", intercept {cal.intercept:.2f}; identity temperature {cal.temperature:g}")
    print(f"\n{'part':<44}{'n':>5}{'healthy':>9}{'broken':>8}{'Spearman':>10}{'AUC':>7}")
    for name, r in ((f"held out: all ({len(test_items)} tracks)", held),
                    (f"held out: real music ({TEST['real']})", real),
                    (f"held out: synthetic (seed {TEST['synthetic_seed']})", synth),
                    ("fitted part (not a test)", fitted)):
        print(f"{name:<44}{r.separations:>5}{r.healthy:>9}{r.broken:>8}{r.spearman:>10.3f}{r.auc:>7.3f}")
    print(f"{'held out, mixture consistency alone (before)':<44}{len(test):>5}{'':>17}{old[0]:>10.3f}{old[1]:>7.3f}")

    # The other way round: fit on the other real excerpt, test on this one.
    swapped = fit(test, templates(test_items), VERSION)
    back = ranking(train, swapped)
    back_real = ranking([o for o in train if o.track.startswith("real-")], swapped)
    print(f"{'reverse split: all / real (' + TRAIN['real'] + ')':<44}{back.separations:>5}{'':>17}"
          f"{back.spearman:>10.3f}{back.auc:>7.3f}   real: {back_real.spearman:.3f} / {back_real.auc:.3f}")
    print("\nheld-out part by damage:")
    print("\n".join(per_damage(test, cal)))
    if args.plot:
        plot(test, cal, args.plot)
        print(f"\nscatter plot: {args.plot}")
    if args.write_calibration:
        sc = scores(test, cal)
        by_damage = {}
        for fam in dict.fromkeys(o.damage for o in test):
            idx = [i for i, o in enumerate(test) if o.damage == fam]
            est = [combine(components(test[i], cal), cal)[0] for i in idx]
            by_damage[fam] = {"true_sdr_db": round(float(np.mean([test[i].mean_sdr for i in idx])), 2),
                              "estimated_sdr_db": round(float(np.mean(est)), 2),
                              "score": round(float(np.mean(sc[idx])), 3)}
        cal.fit.update({"heldout": {"tracks": [i.name for i in test_items], "separations": held.separations,
                                    "by_damage": by_damage,
                                    "spearman": round(held.spearman, 3), "auc": round(held.auc, 3),
                                    "real_spearman": round(real.spearman, 3), "real_auc": round(real.auc, 3)},
                        "command": "python benchmarks/quality_estimate.py --write-calibration"})
        path = ROOT / "musicsplit" / "quality" / "calibration.json"
        path.write_text(json.dumps(cal.to_json(), indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    if not args.no_cost:
        cost(args.cost_seconds)


if __name__ == "__main__":
    main()
