"""What the built-in golden set costs one probe (the canary's, and each
continuous verification of the serving version), with and without its real
CC0 excerpts (spec.analysis.goldenSet.realMusic), side by side: tracks,
seconds of audio, the probe's wall time against a real predictor on
127.0.0.1, and the SDR per item and per stem it reports.

    python benchmarks/golden_probe_cost.py [--model builtin://dsp-baseline]

The predictor runs on this machine's CPU; the figures are for the model given
(the weight-free DSP baseline by default, which costs little: a real model's
probe is dominated by its own inference time, about proportional to the audio).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from musicsplit.localstack import start_predictor
from musicsplit.operator import goldenset
from musicsplit.operator.probe import golden_report
from musicsplit.operator.spec import GoldenSetSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin://dsp-baseline")
    args = ap.parse_args()
    name = "bench"
    p = start_predictor(args.model, name, log_dir=Path(tempfile.mkdtemp()), env={"MUSICSPLIT_EXPECTED_VERSION": "1"})
    try:
        golden_report(p.url, name, "1", golden=goldenset.load(GoldenSetSpec(real_music=False), ""))  # warm up
        for real in (False, True):
            g = goldenset.load(GoldenSetSpec(real_music=real), "")
            t = time.perf_counter()
            r = golden_report(p.url, name, "1", golden=g)
            dt = time.perf_counter() - t
            print(f"realMusic={str(real).lower():5}  {len(g.tracks)} tracks  {sum(t.seconds for t in g.tracks):4.0f} s "
                  f"audio  probe {dt:5.1f} s  mean SDR {r.mean_sdr:5.2f} dB")
            for i in r.items:
                print(f"    {i.name:20} " + "  ".join(f"{k} {v:6.2f}" for k, v in i.sdr.items()))
    finally:
        p.stop()


if __name__ == "__main__":
    main()
