"""Compute per audio second of each servable model, fp32 vs bf16, on this machine's CPU.

    python benchmarks/model_speed.py [--seconds 10] [--repeats 1] [--threads 1]
                                     [--models htdemucs,...] [--out benchmarks/results/cpu-models.json]

Each architecture is rebuilt at its released size with random weights
(benchmarks/architectures.py) and run through the predictor's own
separator (musicsplit.predictor.loading.DemucsSeparator) with the served
defaults (shifts=1, overlap 0.25), fp32 and bf16 alternating, the same
random shift for both. A few seconds of audio are enough for seconds per
audio second: each model's cost is linear in the track past one segment.

The figure costs are computed from is core-seconds per audio second: the
CPU time of a one-thread process (`--threads 1`), which is what one
dedicated core takes, and which other processes on a shared machine barely
move (they take turns on the cores; CPU time counts only this process'
turns). Wall time is recorded too. Writes JSON (the model cards and
docs/cost.md read it) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from architectures import NAMES, build, parameters  # noqa: E402
from precision import load_average, machine  # noqa: E402

from musicsplit.predictor.loading import DemucsSeparator  # noqa: E402
from musicsplit.quality import sdr  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu-models.json"


def measure(name: str, seconds: float, repeats: int) -> dict:
    model = build(name)
    separators = {p: DemucsSeparator(model, "cpu", p) for p in ("fp32", "bf16")}
    rng = np.random.default_rng(0)
    clip = (rng.standard_normal((2, int(seconds * 44100))) * 0.1).astype(np.float32)
    for sep in separators.values():  # first call pays allocator and oneDNN warm-up
        sep.separate(clip[:, :44100], shifts=0)
    wall = {p: [] for p in separators}
    cpu = {p: [] for p in separators}
    outputs = {}
    for repeat in range(repeats):
        order = list(separators) if repeat % 2 == 0 else list(separators)[::-1]
        for precision in order:
            random.seed(repeat)  # the same shift offset at both precisions
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs[precision] = separators[precision].separate(clip, shifts=1)
            wall[precision].append(time.perf_counter() - start)
            cpu[precision].append(time.process_time() - cpu_start)
        print(f"{name} repeat {repeat + 1}/{repeats}: "
              + ", ".join(f"{p} {wall[p][-1]:.1f} s" for p in separators), file=sys.stderr, flush=True)
    agreement = [sdr(a, b) for a, b in zip(outputs["fp32"], outputs["bf16"])]
    result = {
        "parameters_m": round(parameters(model) / 1e6, 1),
        "models_in_bag": len(getattr(model, "models", [model])),
        "sources": list(model.sources),
        "agreement_db": round(float(np.mean(agreement)), 1),
    }
    for precision in separators:
        result[precision] = {
            "core_seconds_per_audio_second": round(statistics.median(cpu[precision]) / seconds, 4),
            "wall_seconds_per_audio_second": round(statistics.median(wall[precision]) / seconds, 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = one core's work)")
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    load_before = load_average()
    doc = {
        "command": "python benchmarks/model_speed.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "load_average": f"{load_before} at the start",
        "audio_seconds": args.seconds,
        "threads": args.threads,
        "shifts": 1,
        "models": {},
    }
    for name in args.models.split(","):
        doc["models"][name] = measure(name, args.seconds, args.repeats)
    doc["load_average"] += f", {load_average()} at the end"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"`{doc['command']}` ({doc['date']}; {doc['machine']}; load average {doc['load_average']})")
    print()
    print("| model | parameters | fp32 core-s per audio s | bf16 core-s per audio s | bf16 speed-up (CPU time) "
          "| wall s per audio s fp32 / bf16 | bf16 vs fp32 agreement |")
    print("|---|---|---|---|---|---|---|")
    key = "core_seconds_per_audio_second"
    for name, m in doc["models"].items():
        print(f"| {name} | {m['parameters_m']} M ({m['models_in_bag']} model(s)) | {m['fp32'][key]:.3f} | "
              f"{m['bf16'][key]:.3f} | {m['fp32'][key] / m['bf16'][key]:.2f}x | "
              f"{m['fp32']['wall_seconds_per_audio_second']:.2f} / {m['bf16']['wall_seconds_per_audio_second']:.2f} | "
              f"{m['agreement_db']:.1f} dB |")
    print(f"\nwritten to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
