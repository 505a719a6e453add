"""The DSP baseline: speed and golden-set SDR, next to the trivial "mixture / 4" answer.

    python benchmarks/dsp_baseline.py [--seconds 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.evaluate import evaluate_separator  # noqa: E402
from musicsplit.golden import STEMS  # noqa: E402
from musicsplit.predictor.baseline import DSPBaseline  # noqa: E402


class QuarterMix:
    """Every stem is a quarter of the mixture: the floor below the floor."""

    sources, samplerate, audio_channels = list(STEMS), 44100, 2

    def separate(self, samples, **_):
        return np.stack([samples / 4.0] * len(self.sources)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    baseline = DSPBaseline()
    clip = np.random.default_rng(0).standard_normal((2, int(args.seconds * 44100))).astype(np.float32) * 0.1
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        baseline.separate(clip)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"DSP baseline, {args.seconds:.0f} s stereo: median {seconds:.2f} s "
          f"(real-time factor {seconds / args.seconds:.3f}) over {args.repeats}")
    for name, sep in (("dsp-baseline", baseline), ("mixture / 4", QuarterMix())):
        report = evaluate_separator(sep)
        stems = "  ".join(f"{k} {v:5.2f}" for k, v in report.per_stem.items())
        print(f"golden SDR dB  {name:<13} {stems}  mean {report.mean_sdr:5.2f}")


if __name__ == "__main__":
    main()
