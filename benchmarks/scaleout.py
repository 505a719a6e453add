"""Scale-out: one long track through the gateway's chunked jobs on 1, 2 and 4 predictor replicas.

    python benchmarks/scaleout.py [--seconds 240] [--replicas 1,2,4] [--repeats 3]
                                  [--chunk-seconds 32,30] [--rtf 0.1] [--skip-baseline]

Two kinds of replica, each measured on its own set of processes:
  gpu-standin   benchmarks/gpu_standin.py: the real predictor server whose model
                waits `--rtf` s per audio second without using the CPU, as a GPU
                would; what scales is the platform (chunking, routing, admission)
  dsp-baseline  the real weight-free DSP separator, CPU-bound: on this machine's
                2 cores it cannot scale past 2x, measured as it is
For each replica count N a gateway routes the model to the first N replicas
(chunk concurrency = max(N, 4)); each repeat uploads a fresh copy of the track
(no cache hit) and times upload -> succeeded, and the part until the 202
(upload and its checks, before any chunk). Counts are interleaved within a
repeat so background load hits them alike. Prints, per N (medians): job
seconds, speed-up over N=1 and efficiency = speed-up / N, the speed-up of the
chunk phase alone, the bound chunking sets, chunks / ceil(chunks / N)
(replicas idle while the last wave runs), and the CPU seconds the gateway and
the predictors spent on the job (on 2 shared cores that CPU, not the
replicas, is what runs out).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from musicsplit.gateway.jobs.chunking import plan_chunks  # noqa: E402
from musicsplit.golden import golden_set  # noqa: E402
from musicsplit.localstack import start_gateway, start_predictor  # noqa: E402
from musicsplit.loadtest.stack import cpu_seconds  # noqa: E402
from gpu_standin import start_standin  # noqa: E402

RATE = 44100
OVERLAP_S = 2.0  # the gateway's default chunk overlap


def run_job(url: str, data: bytes) -> tuple[float, float]:
    """(seconds from upload to succeeded, of which the upload and its checks until the 202).
    The job is followed over its progress WebSocket: polling would add gateway CPU of its own."""
    with httpx.Client(base_url=url, timeout=900) as client:
        start = time.perf_counter()
        r = client.post("/v1/separations", files={"file": ("long.wav", data, "audio/wav")})
        r.raise_for_status()
        accepted = time.perf_counter() - start
        doc = r.json()
        with connect(url.replace("http", "ws", 1) + doc["progress_url"], open_timeout=30) as ws:
            for raw in ws:
                doc = {**doc, **json.loads(raw)}
                if doc["status"] in ("succeeded", "failed", "cancelled"):
                    break
        elapsed = time.perf_counter() - start
    if doc["status"] != "succeeded":
        raise RuntimeError(f"job {doc['id']} {doc['status']}: {doc.get('error')}")
    return elapsed, accepted


def unique(data: bytes, n: int) -> bytes:
    """The same track, its last frame changed: a different upload (no cache hit, no deduplication)."""
    return data[:-4] + n.to_bytes(4, "little")


def measure(kind: str, replicas: list, model: str, counts: list[int], chunk_s: float, data: bytes,
            repeats: int, work: Path) -> dict[int, list[tuple[float, float, float, float]]]:
    """Per replica count, each repeat's (job s, upload + checks s, gateway CPU s, predictors CPU s)."""
    gateways = {}
    try:
        for n in counts:
            env = {"MUSICSPLIT_GATEWAY_CHUNK_SECONDS": str(chunk_s),
                   "MUSICSPLIT_GATEWAY_CHUNK_CONCURRENCY": str(max(n, 4)),
                   "MUSICSPLIT_GATEWAY_CACHE_BACKEND": "none"}
            gateways[n] = start_gateway([(model, p.url) for p in replicas[:n]], data_dir=work / f"gw-{kind}-{n}",
                                        log_dir=work, default_model=model, env=env)
        out: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in counts}
        run_job(gateways[counts[0]].url, unique(data, 0))  # warm-up: connections, first-request costs
        for r in range(repeats):
            for n in counts:
                procs = [gateways[n], *replicas[:n]]
                before = [cpu_seconds(p.proc.pid) or 0.0 for p in procs]
                total, accepted = run_job(gateways[n].url, unique(data, 1 + r * 10 + n))
                used = [(cpu_seconds(p.proc.pid) or 0.0) - b for p, b in zip(procs, before)]
                out[n].append((total, accepted, used[0], sum(used[1:])))
                print(f"  {kind} N={n} repeat {r + 1}: {total:.2f} s ({accepted:.2f} s to the 202); CPU s: "
                      f"gateway {used[0]:.1f}, predictors {sum(used[1:]):.1f}", flush=True)
        return out
    finally:
        for g in gateways.values():
            g.stop()


def report(kind: str, results: dict[int, list[tuple[float, float, float, float]]], chunks: int,
           audio_s: float) -> None:
    med = {n: [statistics.median(r[i] for r in runs) for i in range(4)] for n, runs in results.items()}
    base = med.get(1)
    print(f"\n{kind}: {audio_s:.0f} s track in {chunks} chunks")
    print("| replicas | job s | upload + checks s | chunks s | speed-up | efficiency | chunks speed-up "
          "| chunking bound | CPU s gateway | CPU s predictors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, (total, accepted, gw_cpu, pred_cpu) in med.items():
        speed = base[0] / total if base else float("nan")
        chunk_speed = (base[0] - base[1]) / (total - accepted) if base else float("nan")
        bound = chunks / math.ceil(chunks / n)
        print(f"| {n} | {total:.2f} | {accepted:.2f} | {total - accepted:.2f} | {speed:.2f}x | {speed / n:.2f} | "
              f"{chunk_speed:.2f}x | {bound:.2f}x | {gw_cpu:.1f} | {pred_cpu:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="track length (4+ minutes)")
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-seconds", default="32,30",
                        help="gateway chunk lengths to compare (32 s: 240 s in 8 chunks; 30 s: the default, 9)")
    parser.add_argument("--rtf", type=float, default=0.1, help="gpu-standin seconds per audio second")
    parser.add_argument("--skip-baseline", action="store_true", help="only the gpu-standin replicas")
    args = parser.parse_args()
    counts = [int(x) for x in args.replicas.split(",")]
    chunk_lengths = [float(x) for x in args.chunk_seconds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="musicsplit-scaleout-"))
    item = golden_set(n=1, seconds=args.seconds, seed=31)[0]
    buf = io.BytesIO()  # 16-bit PCM, as a user's wav; its data chunk is last, so `unique` edits audio
    sf.write(buf, np.clip(item.mixture.T, -1, 1), RATE, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    total = item.mixture.shape[-1]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; track {args.seconds:.0f} s ({len(data) / 2**20:.0f} MiB)", flush=True)
    kinds = [("gpu-standin", lambda: start_standin(args.rtf, work, max_queue=8), "standin")]
    if not args.skip_baseline:
        kinds.append(("dsp-baseline", lambda: start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=work,
                                                              threads=None, args=["--max_queue", "8"]),
                      "dsp-baseline"))
    results = []
    try:
        for kind, start, model in kinds:
            replicas = [start() for _ in range(max(counts))]
            try:
                for chunk_s in chunk_lengths:
                    chunks = len(plan_chunks(total, int(chunk_s * RATE), int(OVERLAP_S * RATE)))
                    print(f"{kind}, chunks of {chunk_s:g} s ({chunks} chunks):", flush=True)
                    times = measure(kind, replicas, model, counts, chunk_s, data, args.repeats, work)
                    results.append((f"{kind}, {chunk_s:g} s chunks", times, chunks))
            finally:
                for p in replicas:
                    p.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for kind, times, chunks in results:
        report(kind, times, chunks, args.seconds)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
