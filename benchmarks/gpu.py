"""Speed, memory and precision of a model on a GPU (or any device), written as JSON.

    python benchmarks/gpu.py [--model htdemucs] [--seconds 180] [--repeats 3]
                             [--precisions fp32,fp16,bf16] [--batches 1,4,8] [--device cuda]
                             [--out benchmarks/results/gpu-<gpu>.json]

Run it on a GPU node with torch (CUDA build), demucs and this repository
installed (`pip install -e .`): nothing from the tests is needed. For every
precision the device supports and every segment batch, it separates one
track through the predictor's own separator (DemucsSeparator: autocast,
batched segments) and records the real-time factor (compute seconds per
audio second), GPU-seconds per track, peak GPU memory, and the agreement
(SDR) of each reduced precision's stems with fp32's. Random weights at the
release's real size (benchmarks/architectures.py): compute is what is
measured. docs/cost.md reads the JSON (benchmarks/cost_report.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from architectures import build, parameters  # noqa: E402

from musicsplit.predictor.loading import DemucsSeparator  # noqa: E402
from musicsplit.predictor.precision import PrecisionError, capability_of, resolve  # noqa: E402
from musicsplit.quality import sdr  # noqa: E402


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run(args) -> dict:
    import torch

    device = args.device
    cap = capability_of(device)
    model = build(args.model)
    clip = (np.random.default_rng(0).standard_normal((2, int(args.seconds * model.samplerate))) * 0.1
            ).astype(np.float32)
    doc = {
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "gpu": cap.name if device.startswith("cuda") else f"cpu ({cap.name})",
        "device": device,
        "torch": torch.__version__,
        "model": args.model,
        "parameters_m": round(parameters(model) / 1e6, 1),
        "audio_seconds": args.seconds,
        "shifts": 0,
        "refused": {},
        "runs": [],
        "precisions": {},
    }
    reference = None
    for precision in args.precisions.split(","):
        try:
            resolve(precision, cap)
        except PrecisionError as exc:
            doc["refused"][precision] = str(exc)
            print(f"{precision}: refused: {exc}", file=sys.stderr)
            continue
        for batch in (int(b) for b in args.batches.split(",")):
            separator = DemucsSeparator(model, device, precision, batch)
            separator.separate(clip[:, :model.samplerate * 2], shifts=0)  # warm-up: kernels, allocator
            reset_peak(device)
            times = []
            for _ in range(args.repeats):
                synchronize(device)
                start = time.perf_counter()
                stems = separator.separate(clip, shifts=0)
                synchronize(device)
                times.append(time.perf_counter() - start)
            if reference is None:
                reference = stems  # the first run: fp32, one segment per pass
            rtf = statistics.median(times) / args.seconds
            entry = {
                "precision": precision,
                "segment_batch": batch,
                "rtf_median": round(rtf, 5),
                "rtf_min": round(min(times) / args.seconds, 5),
                "gpu_seconds_per_track": round(statistics.median(times), 3),
                "peak_memory_bytes": peak_memory(device),
                "agreement_db": round(float(np.mean([sdr(r, s) for r, s in zip(reference, stems)])), 1),
            }
            doc["runs"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            best = doc["precisions"].get(precision)
            if best is None or rtf < best["rtf"]:
                doc["precisions"][precision] = {"rtf": round(rtf, 5), "segment_batch": batch,
                                                "agreement_db": entry["agreement_db"]}
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--seconds", type=float, default=180.0, help="track length (a 3-minute song)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="fp32 first: the agreement reference")
    parser.add_argument("--batches", default="1,4,8", help="segments per forward pass to try")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.precisions.startswith("fp32"):
        parser.error("--precisions must start with fp32 (the reference for agreement)")
    doc = run(args)
    slug = re.sub(r"[^a-z0-9]+", "-", doc["gpu"].lower()).strip("-")
    out = args.out or HERE / "results" / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{doc['gpu']}, {doc['model']} ({doc['parameters_m']} M), {args.seconds:g} s track, shifts=0")
    print("| precision | segments per pass | real-time factor | GPU-s per track | peak memory | agreement |")
    print("|---|---|---|---|---|---|")
    for r in doc["runs"]:
        memory = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] is not None else "n/a"
        print(f"| {r['precision']} | {r['segment_batch']} | {r['rtf_median']:.4f} | {r['gpu_seconds_per_track']:.2f} | "
              f"{memory} | {r['agreement_db']:.1f} dB |")
    for precision, reason in doc["refused"].items():
        print(f"{precision}: not run ({reason})")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
