"""Served fp32 vs reduced precision: speed, agreement and golden-set SDR, side by side in one run.

    python benchmarks/precision.py [--seconds 30] [--repeats 5] [--reduced bf16] [--golden 4] [--threads N]

Two predictor processes serve the same HTDemucs at the released size
(benchmarks/architectures.py; random weights: compute is what is measured), one at MUSICSPLIT_PRECISION=fp32, one at the
reduced precision; requests alternate between them (the order flips every
repeat) so background load hits both alike. Figures:
  speed       end-to-end HTTP latency, the server's own compute_seconds, and
              the server process' CPU-seconds per request (least moved by
              other processes on a shared machine); medians and minimums
  agreement   SDR of the reduced-precision stems against the fp32 stems of
              the same request, per stem (how far reduced precision moves
              the output)
  golden SDR  per-stem SDR against the golden set's true stems
              (musicsplit.golden), at both precisions, shifts=0 so nothing
              random differs between them
The output is markdown, ready to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from architectures import FOUR, HTDEMUCS  # noqa: E402

from musicsplit.evaluate import EvalReport, ItemResult  # noqa: E402
from musicsplit.golden import golden_set  # noqa: E402
from musicsplit.localstack import start_predictor  # noqa: E402
from musicsplit.predictor.precision import cpu_flags  # noqa: E402
from musicsplit.quality import sdr, sdr_per_stem  # noqa: E402
from musicsplit.v2client import V2Client  # noqa: E402
from tests.fixtures.checkpoints import save_checkpoint  # noqa: E402


def model_dir(directory: Path) -> Path:
    """A model dir in Demucs' format holding one released-size HTDemucs (random weights)."""
    import torch
    import yaml
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    kwargs = dict(sources=FOUR, **HTDEMUCS)
    save_checkpoint((HTDemucs(**kwargs), HTDemucs, kwargs), directory, "bench0000")
    (directory / "bench.yaml").write_text(yaml.safe_dump({"models": ["bench0000"]}))
    return directory


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = sorted(cpu_flags() & {"avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
    import torch

    return f"{name}, {os.cpu_count()} cores ({', '.join(flags) or 'no AVX512'}), torch {torch.__version__}"


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length for the speed figures")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reduced", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--golden", type=int, default=4, help="golden items (6 s each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per server (default: torch's, all cores); 1 keeps CPU-seconds "
                             "honest on a machine other work is loading")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="musicsplit-precision-"))
    directory = model_dir(work / "model")
    clip = (np.random.default_rng(0).standard_normal((2, int(args.seconds * 44100))) * 0.1).astype(np.float32)
    names = ("fp32", args.reduced)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    servers = {}
    try:
        for name in names:
            servers[name] = start_predictor(directory, "bench", log_dir=work, threads=args.threads, timeout=600,
                                            env={"MUSICSPLIT_PRECISION": name})
        clients = {name: V2Client(proc.url, timeout=1800) for name, proc in servers.items()}
        latency = {n: [] for n in names}
        compute = {n: [] for n in names}
        cpu = {n: [] for n in names}
        outputs = {}

        def request(name):
            pid = servers[name].proc.pid
            cpu_start, start = cpu_seconds(pid), time.perf_counter()
            result = clients[name].separate("bench", clip, 44100, shifts=0)
            latency[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds(pid) - cpu_start)
            compute[name].append(float(result.parameters["compute_seconds"]))
            assert result.parameters["precision"] == name, result.parameters["precision"]
            outputs[name] = result.stems

        for name in names:  # each server's first request pays allocator warm-up
            clients[name].separate("bench", clip[:, :44100 * 8], 44100, shifts=0)
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                request(name)
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{n} {latency[n][-1]:.2f} s" for n in names), file=sys.stderr, flush=True)
        agreement = {stem: sdr(outputs["fp32"][stem], outputs[args.reduced][stem]) for stem in outputs["fp32"]}

        reports = {n: EvalReport(f"bench@{n}") for n in names}
        golden_agreement = []
        for item in golden_set(n=args.golden):
            stems = {}
            for name in names:
                result = clients[name].separate("bench", item.mixture, item.sample_rate, shifts=0)
                stems[name] = result.stems
                reports[name].items.append(ItemResult(item.name, sdr_per_stem(item.stems, result.stems),
                                                      result.model_version, result.quality_score))
            golden_agreement.append({s: sdr(stems["fp32"][s], stems[args.reduced][s]) for s in item.stems})
    finally:
        for proc in servers.values():
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    r = args.reduced
    threads = f" --threads {args.threads}" if args.threads else ""
    print(f"`python benchmarks/precision.py --seconds {args.seconds:g} --repeats {args.repeats} "
          f"--reduced {r} --golden {args.golden}{threads}`  ")
    print(f"{started}; {machine()}; load average {load_before} at the start, {load_average()} at the end")
    print()
    print(f"HTDemucs at the released size (41.5 M parameters, random weights), {args.seconds:g} s stereo "
          "44.1 kHz, shifts=0, "
          f"{args.repeats} requests per precision, interleaved:")
    print()
    print("| served at | latency median s | latency min s | compute median s | server CPU-s median | RTF |")
    print("|---|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | {med(latency[n]):.2f} | {min(latency[n]):.2f} | {med(compute[n]):.2f} | "
              f"{med(cpu[n]):.1f} | {med(compute[n]) / args.seconds:.3f} |")
    print()
    print(f"| {r} speed-up over fp32 | value |")
    print("|---|---|")
    print(f"| latency, medians | **{med(latency['fp32']) / med(latency[r]):.2f}x** |")
    print(f"| latency, minimums | {min(latency['fp32']) / min(latency[r]):.2f}x |")
    print(f"| server compute, medians | {med(compute['fp32']) / med(compute[r]):.2f}x |")
    print(f"| server CPU-seconds, medians | {med(cpu['fp32']) / med(cpu[r]):.2f}x |")
    print()
    stems = list(agreement)
    print(f"| SDR (dB) | {' | '.join(stems)} | mean |")
    print("|---|" + "---|" * (len(stems) + 1))
    print(f"| agreement {r} vs fp32, the {args.seconds:g} s clip | "
          + " | ".join(f"{agreement[s]:.1f}" for s in stems) + f" | **{np.mean(list(agreement.values())):.1f}** |")
    mean_golden_agreement = {s: float(np.mean([g[s] for g in golden_agreement])) for s in stems}
    print(f"| agreement {r} vs fp32, golden items | "
          + " | ".join(f"{mean_golden_agreement[s]:.1f}" for s in stems)
          + f" | **{np.mean(list(mean_golden_agreement.values())):.1f}** |")
    for n in names:
        per = reports[n].per_stem
        print(f"| golden SDR at {n} ({args.golden} x 6 s) | " + " | ".join(f"{per[s]:.3f}" for s in stems)
              + f" | **{reports[n].mean_sdr:.3f}** |")
    delta = reports[r].mean_sdr - reports["fp32"].mean_sdr
    print()
    print(f"golden SDR {r} - fp32: {delta:+.3f} dB (goal: within 0.1 dB); "
          f"agreement goal: >= 40 dB; speed goal: >= 1.5x")


if __name__ == "__main__":
    main()
