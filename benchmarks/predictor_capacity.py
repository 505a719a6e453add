"""Throughput vs concurrency for one predictor replica, perf_analyzer style, and its knee.

    python benchmarks/predictor_capacity.py [--model dsp-baseline|gpu-standin] [--seconds 10]
        [--concurrency 1,2,3,4,6,8] [--inflight 1,2] [--window 8] [--rtf 0.1]

For each MUSICSPLIT_MAX_INFLIGHT setting one predictor is started (its queue
sized so nothing is refused: this measures queueing, not admission), then
for each concurrency C, C clients loop on the same v2 request the gateway
sends for a chunk (binary FP32 in, FP32 stems out). As Triton's
perf_analyzer does, a concurrency is measured in windows (--window seconds)
after a warm-up window, until three consecutive windows agree within 10 %
(at most 6), and reports: throughput (requests and audio seconds per
second), client latency p50/p95/p99, and each request's time split into
compute (the server's own `compute_seconds`: the model call) and the rest
(queue, decode, quality checks, encode, transfer). The knee is the lowest
concurrency within 5 % of the best throughput: more concurrency beyond it
only adds queueing latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from musicsplit.golden import golden_set  # noqa: E402
from musicsplit.localstack import start_predictor  # noqa: E402
from musicsplit.loadtest.stack import cpu_seconds  # noqa: E402
from musicsplit.v2client import AsyncV2Client, V2Error  # noqa: E402
from gpu_standin import start_standin  # noqa: E402

STABLE = 0.10  # three windows within +-10 % of their mean (perf_analyzer's default)
MAX_WINDOWS = 6


@dataclass
class Done:
    end: float
    latency: float
    compute: float


@dataclass
class Level:
    concurrency: int
    throughput: float  # requests per second
    latencies: list[float]
    computes: list[float]
    stable: bool
    refused: int
    server_cpu: float  # predictor CPU seconds per request

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


async def measure(url: str, model: str, samples: np.ndarray, concurrency: int, window: float, pid: int) -> Level:
    done: list[Done] = []
    refused = 0
    stop = asyncio.Event()

    async def worker(client: AsyncV2Client):
        nonlocal refused
        while not stop.is_set():
            start = time.perf_counter()
            try:
                sep = await client.separate(model, samples, 44100)
            except V2Error as exc:
                if exc.status != 429:
                    raise
                refused += 1
                await asyncio.sleep(exc.retry_after or 1.0)
                continue
            now = time.perf_counter()
            done.append(Done(now, now - start, float(sep.parameters.get("compute_seconds") or 0.0)))

    async with AsyncV2Client(url, timeout=600) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        await asyncio.sleep(window)  # warm-up window: queues fill to their steady depth
        rates: list[float] = []
        bounds: list[tuple[float, float]] = []
        cpu_start = cpu_seconds(pid) or 0.0
        while len(rates) < MAX_WINDOWS:
            begin = time.perf_counter()
            await asyncio.sleep(window)
            end = time.perf_counter()
            rates.append(sum(begin <= d.end < end for d in done) / (end - begin))
            bounds.append((begin, end))
            last = rates[-3:]
            if len(last) == 3 and max(abs(r - statistics.mean(last)) for r in last) <= STABLE * statistics.mean(last):
                break
        cpu_used = (cpu_seconds(pid) or 0.0) - cpu_start
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    begin, end = bounds[-3][0] if len(bounds) >= 3 else bounds[0][0], bounds[-1][1]
    inside = [d for d in done if begin <= d.end < end]
    stable = len(rates) >= 3 and max(abs(r - statistics.mean(rates[-3:])) for r in rates[-3:]) <= \
        STABLE * statistics.mean(rates[-3:])
    counted = sum(bounds[0][0] <= d.end < end for d in done)
    return Level(concurrency, len(inside) / (end - begin), [d.latency for d in inside], [d.compute for d in inside],
                 stable, refused, cpu_used / max(counted, 1))


def start(model: str, inflight: int, queue: int, rtf: float, work: Path):
    if model == "gpu-standin":
        return start_standin(rtf, work, max_inflight=inflight, max_queue=queue), "standin"
    env = {"MUSICSPLIT_MAX_INFLIGHT": str(inflight), "MUSICSPLIT_MAX_QUEUE": str(queue)}
    return start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=work, threads=None, env=env), \
        "dsp-baseline"


def sweep(args, inflight: int, levels: list[int], samples: np.ndarray, work: Path) -> None:
    """One replica at MAX_INFLIGHT=inflight through every concurrency level; prints its table."""
    proc, name = start(args.model, inflight, max(levels), args.rtf, work)
    try:
        results = []
        for c in levels:
            level = asyncio.run(measure(proc.url, name, samples, c, args.window, proc.proc.pid))
            results.append(level)
            print(f"  inflight {inflight} concurrency {c}: {level.throughput:.2f} req/s"
                  f"{'' if level.stable else ' (unstable)'}", flush=True)
    finally:
        proc.stop()
    best = max(r.throughput for r in results)
    knee = next(r for r in results if r.throughput >= 0.95 * best)
    print(f"\nMAX_INFLIGHT={inflight}: knee at concurrency {knee.concurrency} "
          f"({knee.throughput:.2f} req/s = {knee.throughput * args.seconds:.1f} audio s/s, p99 {knee.p(99):.2f} s)")
    print("| concurrency | req/s | audio s/s | p50 s | p95 s | p99 s | compute s | queue + rest s "
          "| server CPU s/req | stable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        compute = statistics.mean(r.computes)
        rest = statistics.mean(r.latencies) - compute
        print(f"| {r.concurrency}{' (knee)' if r is knee else ''} | {r.throughput:.2f} | "
              f"{r.throughput * args.seconds:.1f} | {r.p(50):.2f} | {r.p(95):.2f} | {r.p(99):.2f} | "
              f"{compute:.2f} | {rest:.2f} | {r.server_cpu:.2f} | {'yes' if r.stable else 'no'} |")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["dsp-baseline", "gpu-standin"], default="dsp-baseline")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per request")
    parser.add_argument("--concurrency", default="1,2,3,4,6,8")
    parser.add_argument("--inflight", default="1,2", help="MUSICSPLIT_MAX_INFLIGHT values, one replica each")
    parser.add_argument("--window", type=float, default=8.0, help="measurement window, seconds")
    parser.add_argument("--rtf", type=float, default=0.1, help="gpu-standin: seconds per audio second")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    samples = golden_set(n=1, seconds=args.seconds, seed=17)[0].mixture
    work = Path(tempfile.mkdtemp(prefix="musicsplit-capacity-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{args.model}, {args.seconds:g} s stereo per request, windows of {args.window:g} s", flush=True)
    try:
        for inflight in (int(x) for x in args.inflight.split(",")):
            sweep(args, inflight, levels, samples, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
